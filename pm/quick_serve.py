"""The quick phase's poll loop: it serves the ranks of a job pmrun started on this machine.

:class:`QuickServe` is the part of :class:`pm.quick.QuickStart` that watches the job
once its ranks run (:meth:`QuickServe.watch`): it writes their output, serves their PMI-1
and PMI-2 requests (with the agent's own engine, :mod:`pm.agent.pmi_quick`, imported at
the first request or once the ranks leave the loop idle a moment), runs the jobs they
spawn (:mod:`pm.agent.quick_spawns`) and sees the ranks' ends, until every rank ended
well or something needs the full path (a request the quick phase does not serve, a
failure, a signal, stdin data, the timeout): :meth:`pm.quick.QuickStart.handover` hands
the job over then.  The job's state is QuickStart's, declared here for the type checker.

The signals pmrun gets meanwhile are noted (:func:`note`, also while the full path
imports): the loop stops and continues the ranks at Ctrl-Z and ``fg``; the full path acts
on the others (:func:`pm.quick.noted_signals`).  Like :mod:`pm.quick`, this module
imports nothing heavy.
"""

from __future__ import annotations

import _signal
import _socket
import os
import select
import time

from pm.common.output import STDERR, STDOUT, read_pipe
from pm.common.output_writer import EXIT_OUTPUT_FAILED, loss_line, loss_status, write_out
from pm.jobenv import kvsname_of

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pm.agent.pmi_actions import Spawn
    from pm.agent.pmi_quick import QuickPmi
    from pm.agent.quick_spawns import QuickSpawns
    from pm.agent.spawn import Guardian
    from pm.agent.started import StartedRank, StartedRanks
    from pm.quick import QuickOptions

#: What a watched fd is, besides STDOUT and STDERR.
_PMI, _EXIT = 3, 4

#: Milliseconds without an event after which the quick phase imports the PMI engine
#: before a rank asks for it (a program such as ``true`` has ended by then).
IDLE_MS = 4
#: Nanoseconds the loop keeps polling, without sleeping, after it served a PMI request,
#: when the node has more CPUs than ranks: the rank's next request (a get after a get,
#: the run of requests of MPI_Init) then finds pmrun awake.  Asleep, pmrun's CPU goes
#: idle, and each request wakes it again, which a virtual machine does slowly (a 1-rank
#: get round trip on a 2-CPU VM: 70 us, 24 us polling).  Each empty poll yields the CPU
#: to whatever else is runnable on it; with as many ranks as CPUs, pmrun does not poll
#: (no CPU is idle: it would only take time from the ranks).
SPIN_NS = 50_000


class QuickServe:
    """The ranks of a :class:`pm.quick.QuickStart` served (see the module docstring)."""

    # The job's state (pm.quick.QuickStart.__init__ sets and describes it).
    opts: QuickOptions
    host: str
    started: StartedRanks
    pmi: QuickPmi | None
    spawns: QuickSpawns | None
    _sig_r: int
    _wake_r: int
    _pmix: Any
    _stdin: int | None
    _poll: select.epoll | None
    _uninit_exit: bool
    _base: dict[str, str]
    _watch_more: Callable[[list[StartedRank]], None] | None
    _cpus: int
    _registered: bool

    @property
    def ranks(self) -> list[StartedRank]:
        return self.started.ranks

    # ------------------------------------------------------------------ watch
    def watch(self) -> int | None:
        """Serve the ranks until they all ended well (0, or what their output lost gives:
        :meth:`_ended_well`), or the full path must go on (None)."""
        if self.started.failed:
            return None
        try:
            poll = self._poll = select.epoll()
        except OSError:
            return None  # out of descriptors: the full path says so
        opts_n = self.opts.n
        running = len(self.ranks)  # (the launched job's; QuickSpawns counts the others)
        exited: set[StartedRank] = set()
        # Ranks that ended while the others started (a short program such as ``true``)
        # are seen to the end here, without the loop registering and removing their fds.
        early = self._pmix is None  # (a PMIx client's end is judged by the loop)
        for r in self.ranks:
            if early and self._ended_early(r):
                exited.add(r)
                running -= 1
                self._uninit_exit = True  # (without a word of PMI: _init_waits)
        self._registered = True
        # fd -> (what, rank): STDOUT, STDERR, _PMI or _EXIT (the pidfd).
        table: dict[int, tuple[int, StartedRank]] = {}

        def watch_more(ranks: list[StartedRank]) -> None:
            for r in ranks:
                if r in exited or not r.pid:
                    continue
                assert r.pmi is not None
                for what, fd in ((STDOUT, r.out_fd), (STDERR, r.err_fd), (_PMI, r.pmi.fileno()),
                                 (_EXIT, r.pidfd)):
                    if fd >= 0:  # (a pipe the pass above found at its end is closed)
                        table[fd] = (what, r)
                        poll.register(fd, select.EPOLLIN)

        def unwatch(fd: int) -> None:
            # A rank's PMI socket about to be closed leaves the set first: epoll drops a
            # closed fd only once no process holds its file, and a rank being spawned
            # holds ours until its exec closes them (after posix_spawn has returned).
            poll.unregister(fd)  # (its table entry stays: the loop may still look it up)

        watch_more(self.ranks)
        self._watch_more = watch_more  # (a spawn's ranks)
        poll.register(self._sig_r, select.EPOLLIN)
        if self._wake_r >= 0:
            poll.register(self._wake_r, select.EPOLLIN)
        if self._stdin is not None:
            try:
                poll.register(self._stdin, select.EPOLLIN)
            except PermissionError:
                return None  # a regular file: data for rank 0 at once
        deadline = None if self.opts.timeout is None else self.started.t0 + self.opts.timeout
        # The PMI engine is imported at a rank's first request, or before it, once the
        # ranks leave us idle a moment (an MPI program's libraries load meanwhile): then
        # MPI_Init does not wait for the import, nor a first spawn for its own (~1 ms).
        # Not for ranks served PMIx (Open MPI speaks no PMI-1 or PMI-2): the import's CPU
        # would only slow their start.
        idle = self.pmi is None and self._pmix is None
        # The hot path: a ready rank's fd -> the replies its requests may have (QuickPmi.hot,
        # once the first rank spoke; see pm.agent.pmi_quick).
        hot: dict[int, dict[bytes, bytes]] = {}
        hot_get = hot.get
        read, write, nread = os.read, os.write, 0
        pmi = self.pmi
        # Polling after a request (SPIN_NS): until spin_until (monotonic ns), 0 when not.
        self._cpus = len(os.sched_getaffinity(0))
        spin_ns = SPIN_NS if spins(opts_n, self._cpus) else 0
        spin_until, asked = 0, False
        now_ns, yield_cpu = time.monotonic_ns, os.sched_yield
        orphans_at = None  # when a spawned job that outlives its parent is handed over
        while running or self._more_to_watch():
            wait = -1.0
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return None  # --timeout: the full path ends the job and says so
            if orphans_at is not None:
                left = orphans_at - time.monotonic()
                if left <= 0:
                    return None  # the full path ends the orphans (and says so)
                wait = left if wait < 0 else min(wait, left)
            spawns = self.spawns
            if spawns is not None and spawns.unanswered and (due := spawns.answer_deadline()):
                left = due - time.monotonic()  # (a spawner waiting for its children)
                if left <= 0:
                    if not spawns.expire():
                        return None
                    continue
                wait = left if wait < 0 else min(wait, left)
            if idle:
                wait = IDLE_MS / 1000 if wait < 0 else min(wait, IDLE_MS / 1000)  # (epoll: s)
            if asked:  # the last events had a PMI request
                asked = False
                if spin_ns:
                    spin_until = now_ns() + spin_ns
            # (epoll's buffer for the events, allocated at every call: as large as needed)
            events = poll.poll(0, len(table) + 3) if spin_until else None
            if not events:
                if spin_until > now_ns():
                    yield_cpu()
                    continue
                spin_until = 0
                events = poll.poll(wait, len(table) + 3)
                if idle and not events:
                    idle = False
                    import pm.agent.pmi_quick
                    import pm.agent.quick_spawns  # noqa: F401
                    continue
            for fd, _mask in events:
                replies = hot_get(fd)
                if replies is not None:  # a ready rank's request: most likely a get again
                    asked = True
                    rest = None
                    try:
                        data = read(fd, nread)  # (readable: this does not wait)
                        reply = replies.get(data)
                        if reply is not None:
                            try:
                                n = write(fd, reply)
                            except BlockingIOError:  # (a rank that reads no reply: its
                                n = 0  # socket never waits, the agent writes the rest)
                            if n == len(reply):
                                continue
                            rest = reply[n:]
                    except OSError:
                        return None  # a broken stream, or the rank went away: the agent
                    assert pmi is not None
                    served = pmi.missed(fd, data, rest)
                    if served:
                        if self.spawns is not None:  # (the request may have spawned)
                            spin_ns = self._spin(running)
                            if spin_ns < 0:
                                return None
                        continue
                    r = table[fd][1]
                else:
                    entry = table.get(fd)
                    if entry is None:  # not a rank's: the signal pipe, stdin or PMIx wake-up
                        if fd == self._sig_r:
                            os.read(fd, 512)
                            if not self._job_control():
                                return None  # a signal the full path forwards
                            continue
                        # Data for rank 0, or a PMIx request the agent serves (abort...).
                        return None
                    what, r = entry
                    if what in (STDOUT, STDERR):
                        self._read(r, what)
                        continue
                    if what == _EXIT:
                        if r in exited:
                            continue
                        ended = self._ended(r)
                        if ended is None:
                            continue
                        if not ended:
                            return None  # the full path names the failure and ends the job
                        if self._pmix is not None and self._pmix.clients.get(
                                (self.started.pmix, r.rank)) == "init":
                            return None  # a PMIx client that did not finalize: a failure
                        if not r.job and self._init_waits(r):
                            return None  # the agent names it: MPI_Init waits in vain
                        exited.add(r)
                        if r.job:
                            assert self.spawns is not None
                            if not self.spawns.ended(r):
                                return None
                        else:
                            running -= 1
                            if self.pmi is not None and not self.pmi.ended(r.rank):
                                return None  # the others wait in vain: the agent names it
                        if r.out_fd >= 0 or r.err_fd >= 0:
                            return None  # something it started holds its output open
                        if (orphans_at is None and self.spawns is not None
                                and self.spawns.orphaned(exited.__contains__)):
                            from pm.proto.spawn import ORPHAN_GRACE

                            orphans_at = time.monotonic() + ORPHAN_GRACE
                        continue
                    # A request, not ready for the hot path.
                    if r.job:  # a spawned job's rank
                        assert self.spawns is not None
                        owner = self.spawns.pmi_of(r.job)
                    elif (pmi := self.pmi) is not None:
                        owner = pmi
                    else:
                        if not _speaks(r):
                            poll.unregister(fd)  # closed without a word: not an MPI program
                            continue
                        from pm.agent.pmi_quick import READ as nread
                        from pm.agent.pmi_quick import QuickPmi

                        pmi = self.pmi = QuickPmi(self.started,
                                                  kvsname_of(self.started.job_id), opts_n,
                                                  native=self.opts.kvs == "socket",
                                                  host=self.host, universe=self.opts.usize)
                        pmi.hand_over_on_init = self._uninit_exit
                        pmi.on_spawn, pmi.on_close = self._first_spawn, unwatch
                        hot_get = pmi.hot.get
                        owner = pmi
                    asked = True
                    served = owner.serve(r)
                    if served:
                        if self.spawns is not None:  # (the request may have spawned)
                            spin_ns = self._spin(running)
                            if spin_ns < 0:
                                return None
                        continue
                if served is None:  # its end: finalized, or never spoke
                    if r.pmi is not None:
                        poll.unregister(fd)  # (a closed one went with unwatch)
                else:
                    return None  # the agent takes it from there
        return self._ended_well()

    def _init_waits(self, r: StartedRank) -> bool:
        """Rank ``r`` ended well, perhaps before PMI init: whether another rank initialized
        (an MPI library's PMI-1, PMI-2 or PMIx), whose ``MPI_Init`` would wait for it for
        ever -- the full path names that.  If none has yet, the first that does hands the
        job over (:attr:`QuickPmi.hand_over_on_init`, the PMIx server's ``wake_on_init``)."""
        pmi, srv, nspace = self.pmi, self._pmix, self.started.pmix
        engines = pmi.engines if pmi is not None else {}
        mine = engines.get(r.rank)
        if (mine is not None and mine.initialized) or (
                srv is not None and srv.clients.get((nspace, r.rank))):
            return False  # it took part
        if any(e.initialized and e.protocol != "native" for e in engines.values()) or (
                srv is not None and "init" in (v for (ns, _), v in srv.clients.items()
                                               if ns == nspace)):
            return True
        self._uninit_exit = True
        if pmi is not None:
            pmi.hand_over_on_init = True
        if srv is not None:
            srv.wake_on_init = True
        return False

    def _more_to_watch(self) -> bool:
        """Whether, the launched job's ranks having ended, something is left to watch: a
        spawned job's ranks, or output pipes still open."""
        if self.spawns is not None and self.spawns.running:
            return True
        return any(r.out_fd >= 0 or r.err_fd >= 0 for r in self._all_ranks())

    def _spin(self, running: int) -> int:
        """After a request, once the ranks have spawned: -1 if the job must be handed over
        (a spawned rank could not start), else how long the loop polls after a request
        (:data:`SPIN_NS`, counting the spawned jobs' ranks too: see :func:`spins`)."""
        assert self.spawns is not None
        if self.spawns.failed:
            return -1
        return SPIN_NS if spins(running + self.spawns.running, self._cpus) else 0

    def _first_spawn(self, parent: QuickPmi, rank: int, call: Spawn) -> bool:
        """A rank's first spawn: from now on the quick phase runs spawned jobs too
        (:mod:`pm.agent.quick_spawns`)."""
        from pm.agent.quick_spawns import QuickSpawns

        if self.started.cpusets is not None:
            return False  # bound ranks: the full runtime binds the children after them
        assert self.pmi is not None and self._watch_more is not None
        spawns = self.spawns = QuickSpawns(self.pmi, self._base, self.opts.wdir,
                                           self._watch_more, self.opts.merge,
                                           self.opts.unbuffered)
        return spawns.spawn(parent, rank, call)

    def _reader_gone(self, stream: int) -> None:
        """Our stdout or stderr has no reader: the ranks get SIGPIPE (their failure, if they
        die of it, goes to the full path); :meth:`_read` closes that stream's pipes."""
        writer = self.started.writer
        assert writer is not None
        if len(writer.broken) == 1 and self.started.guardian is not None:
            self.started.guardian.signal(_signal.SIGPIPE)

    def _job_control(self) -> bool:
        """Ctrl-Z and fg/bg: stop every rank, then pmrun; SIGCONT continues them.  False if
        another signal came (it stays noted for the full path)."""
        guardian = self.started.guardian
        assert guardian is not None
        while noted and noted[0] in (_signal.SIGTSTP, _signal.SIGCONT):
            signum = noted.pop(0)
            guardian.signal(signum)
            if signum == _signal.SIGTSTP:
                os.kill(os.getpid(), _signal.SIGSTOP)  # until SIGCONT (noted, handled next)
        return not noted

    def _read(self, r: StartedRank, stream: int) -> int:
        """Pass on what the rank wrote: how many bytes were read (0 at EOF: the pipe is
        closed then; -1 if there are none yet)."""
        fd = r.out_fd if stream == STDOUT else r.err_fd
        if fd < 0:
            return 0
        buf = r.out if stream == STDOUT else r.err
        lines, got = read_pipe(fd, buf)
        writer = self.started.writer
        assert writer is not None
        if lines:
            guardian = self.started.guardian
            if guardian is not None:
                writing.append(guardian)
            try:
                writer.write(r.rank, stream, lines, -1, r.job)
            finally:
                writing.clear()
        if not got and buf.open:
            writer.write(r.rank, stream, b"", -1, r.job)  # (its last line goes on no more)
        if stream in writer.broken:
            # Nobody reads it: the ranks' writes to it fail from now on (EPIPE), rather
            # than go on for nothing (ranks that ignore SIGPIPE, such as Python's).
            for other in self._all_ranks():
                self._close(other, stream)
            return 0
        if got:
            return got
        self._close(r, stream)
        return 0

    def _close(self, r: StartedRank, stream: int) -> None:
        fd = r.out_fd if stream == STDOUT else r.err_fd
        if fd < 0:
            return
        if self._registered:
            assert self._poll is not None
            self._poll.unregister(fd)
        os.close(fd)
        if stream == STDOUT:
            r.out_fd = -1
        else:
            r.err_fd = -1

    def _ended_well(self) -> int:
        """Every rank ended well: 0, unless their output could not all be written: then
        that loss's status, and its line where it was not said as it happened."""
        writer = self.started.writer
        assert writer is not None
        writer.end_lines()  # (nothing waits once every pipe is at its end)
        loss = writer.loss()
        if loss is None:  # (a rank's own file that failed was named then)
            return 0 if writer.file_loss is None else EXIT_OUTPUT_FAILED
        line = loss_line(*loss)
        if line:
            write_out(2, f"pmrun: {line}\n".encode())
        return loss_status(loss[1])

    def _ended_early(self, r: StartedRank) -> bool:
        """Whether rank ``r`` has already exited with status 0 without a word of PMI and
        its output pipes are at their end: then what it wrote is passed on and its pipes
        closed, as the loop would (before the loop watches any fd)."""
        info = os.waitid(os.P_PID, r.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_code != os.CLD_EXITED or info.si_status != 0:
            return False
        assert r.pmi is not None
        try:
            if r.pmi.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT):
                return False  # a request: the loop serves it
        except OSError:
            return False  # not at its end (something it started holds it), or broken
        # Its ends of the pipes closed before it became a zombie: what is left is there,
        # unless something it started holds them (then the loop hands the job over).
        for stream in (STDOUT, STDERR):
            while (got := self._read(r, stream)) > 0:
                pass
            if got < 0:
                return False
        return True

    def _ended(self, r: StartedRank) -> bool | None:
        """A rank's exit, noted without reaping it (the agent may still need to see it):
        None if it still runs, False if it failed."""
        info = os.waitid(os.P_PID, r.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        if info.si_code != os.CLD_EXITED or info.si_status != 0:
            return False
        pmi = self.pmi if not r.job or self.spawns is None else self.spawns.pmi_of(r.job)
        engine = pmi.engines.get(r.rank) if pmi is not None else None
        if engine is not None and engine.initialized and not engine.finalized:
            return False  # exited without PMI finalize: the agent names it
        assert self._poll is not None
        self._poll.unregister(r.pidfd)  # its pidfd stays open: the agent may watch it
        # Its ends of the pipes closed before it became a zombie: what is left is there.
        for stream in (STDOUT, STDERR):
            while self._read(r, stream) > 0:
                pass
        return True

    def _all_ranks(self) -> list[StartedRank]:
        """The launched job's ranks, and those of the jobs they spawned."""
        return self.ranks if self.spawns is None else [*self.ranks, *self.spawns.ranks()]


def spins(ranks: int, cpus: int = 0) -> bool:
    """Whether the loop polls a while after a PMI request (:data:`SPIN_NS`): with fewer
    ranks than the CPUs pmrun may run on (``cpus``, else asked), one of those is idle
    anyway."""
    return ranks < (cpus or len(os.sched_getaffinity(0)))


def _speaks(r: StartedRank) -> bool:
    """Whether rank ``r``'s readable PMI socket holds a request rather than its end (a
    program that never speaks PMI costs no import of the PMI engine)."""
    assert r.pmi is not None
    try:
        return bool(r.pmi.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True  # nothing after all: QuickPmi.serve says so
    except OSError:
        return True  # a broken stream: QuickPmi.serve hands it over


#: Signals pmrun got and has not acted on yet (StartedRanks.signals, for the full path).
noted: list[int] = []


#: The guardian of the ranks while the quick loop writes their output (its write may wait
#: on a reader that stalls: ``pmrun ... | less``), else None.
writing: list[Guardian] = []
#: The signals that end a job (a second one kills it at once).
_ENDING = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)


def note(signum: int, frame: object) -> None:
    noted.append(signum)
    if writing and signum in _ENDING and sum(s in _ENDING for s in noted) > 1:
        # The loop cannot act while pmrun's own stdout does not take what the ranks wrote:
        # a second Ctrl-C (or SIGTERM) kills the job at once all the same.
        writing[0].kill_all()
        os.write(2, b"pmrun: interrupted twice: killing the job\n")
        os._exit(128 + signum)
