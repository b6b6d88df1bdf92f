"""``pmrun``'s entry point, and its quick path for jobs on this machine alone.

Most of pmrun's own start-up is importing asyncio, the agent and the PMI
server.  A job that runs on this machine only (no hosts, no Slurm allocation,
one program, and only options the table of :mod:`pm.options` marks ``quick``:
``-n``, the ``-genv*``/``-env*`` family with Open MPI's ``-x`` and ``--mca``, ``-l``,
``-wdir``, ``--timeout``, ``--output``/``--error``, ``--kvs`` and, meaning nothing on one
node, ``-ppn``/``--fanout`` and mpirun's ``--oversubscribe``/``--allow-run-as-root``;
see :func:`pm.options.quick_ok`) is therefore started *before* any of that is
imported, by this module, which imports C modules and a few small modules of
pmrun only.  The command line is checked by the same parser either way.
A poll loop then writes the ranks' output and watches them.

The same loop serves the ranks' PMI-1 and PMI-2 requests with the agent's own
sans-IO engine (:mod:`pm.agent.pmi_quick`): an MPI job on one node is wired up,
runs and ends here, without asyncio or the agent ever being imported.  So do
the jobs it spawns (:mod:`pm.agent.quick_spawns`: their ranks start here, and
their PMI is served by the same loop).  The first thing that needs more hands
the running job to the full path: a request the quick phase does not serve (a
``pm.client`` rank unless ``--kvs socket``, an allgather, a spawn naming hosts,
the name service, an abort, a broken stream), a rank that fails, stdin data for
rank 0, a signal pmrun must forward, or the timeout.  The ranks' pids, PMI
sockets (with their engines, the KVS and what is left to do), pipes and partial
output lines go to the in-process agent of :mod:`pm.head`
(:meth:`pm.agent.node.JobAgent.adopt_ranks`), which serves them from there as
if it had started them; the spawned jobs go along
(:meth:`pm.spawned_jobs.HeadSpawns.adopt`).  A job whose programs never speak
PMI (``true``, a shell script) costs little more than the interpreter's start.

A job that needs PMIx (:mod:`pm.agent.pmix_detect`) is registered with the
PMIx server here (:func:`pm.agent.pmix_register.start_one_node`); the library
completes a one-node job's fences itself, and an upcall that needs the agent
(abort, publish, spawn) hands the job over like a PMI byte.

Ranks started here get exactly the environment and descriptors the full
path gives (:func:`pm.agent.spawn.rank_env`, the same guardian, the same
per-job topology XML).  ``PM_QUICK=0`` in pmrun's environment turns the
quick path off.
"""

from __future__ import annotations

import _signal
import _socket
import gc
import os
import select
import sys
import time

from pm.agent import topo_share
from pm.agent.pmix_detect import wants_pmix
from pm.agent.shm_reaper import ShmReaper
from pm.agent.spawn import (
    EXIT_NOT_STARTED,
    NOT_STARTED,
    SpawnError,
    fd_shortage,
    raise_fd_limit,
    rank_env,
    resolve,
)
from pm.agent.started import RankStart, StartedRank, StartedRanks, start_local
from pm.common.output import (
    EXIT_OUTPUT_FAILED,
    STDERR,
    STDOUT,
    Writer,
    ensure_std_fds,
    loss_line,
    loss_status,
    rank_ranges,
    read_pipe,
    stdin_for_job,
    write_out,
)
from pm.jobenv import kvsname_of, new_job_id, passed_env, ranks_env, slurm_het_group0
from pm.options import internal_error, prepend_of, prepend_prefix, quick_ok, refuse
from pm.options import parse as parse_options
from pm.proto.errors import UsageError, rank_at

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from pm.agent.pmi_actions import Spawn
    from pm.agent.pmi_quick import QuickPmi
    from pm.agent.quick_spawns import QuickSpawns
    from pm.agent.spawn import Guardian

#: Signals pmrun handles (pm.cli_run installs the same on the event loop).
SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
           _signal.SIGUSR2, _signal.SIGTSTP, _signal.SIGCONT)

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


class QuickOptions:
    """The part of a command line the quick path runs (one program, on this machine)."""

    __slots__ = ("app_env", "argv", "bind_spelled", "bind_to", "env_mode", "error", "genv",
                 "genvlist", "host", "kvs", "label", "map_by", "merge", "n", "only", "output",
                 "pmix", "prepend", "rank_map",
                 "report", "stdin_file", "stdin_rank", "timeout", "timestamp", "unbuffered",
                 "usize", "wdir")

    def __init__(self) -> None:
        self.n = 1
        self.argv: list[str] = []
        self.genv: dict[str, str] = {}
        self.env_mode = "all"
        self.genvlist: list[str] = []
        self.app_env: dict[str, str] = {}
        self.wdir: str | None = None
        self.label = False
        #: -prepend-pattern (None: ``[rank] `` when labelling).
        self.prepend: str | None = None
        self.timeout: float | None = None
        self.output: str | None = None
        self.error: str | None = None
        #: -output-from: only these ranks' output is written (None: every rank's).
        self.only: str | None = None
        #: Serve PMIx too (pm.agent.pmix_detect): the ranks get the server's variables.
        self.pmix = False
        #: --kvs: with "socket", pm.client ranks are served here too (pm.agent.pmi_quick).
        self.kvs = "shm"
        #: --merge-stderr-to-stdout.
        self.merge = False
        self.unbuffered = False
        #: --bind-to (and -c, --cpu-bind, --map-by's :PE=), --map-by, --report-bindings.
        self.bind_to = "none"
        self.bind_spelled = ""
        self.map_by = "core"
        self.report = False
        #: The host as -hosts or -f named this machine ("": its name).
        self.host = ""
        #: --timestamp-output; -print-rank-map.
        self.timestamp = self.rank_map = False
        #: The rank that reads pmrun's stdin (None: none does, --stdin none or a file; -1:
        #: every rank, --stdin all); the file every rank reads instead (-i FILE).
        self.stdin_rank: int | None = 0
        self.stdin_file: str | None = None
        #: The universe size the ranks are told (0: the job's size; -1: no limit).
        self.usize = 0


def parse(argv: list[str], environ: Mapping[str, str]) -> QuickOptions | None:
    """The options if the quick path runs this command line (:func:`pm.options.quick_ok`),
    else None.  Raises :class:`pm.proto.errors.UsageError` for a command line pmrun refuses."""
    parsed = parse_options(argv, environ)
    if not quick_ok(parsed, environ):
        return None
    v = parsed.values
    (section,) = parsed.sections
    s = section.values
    opts = QuickOptions()
    opts.argv = section.argv
    opts.n = int(s.get("n", 1))  # type: ignore[call-overload]
    if "n" not in s and "ppn" in v:
        # -ppn P without -n: P ranks on each node, this one alone here (Hydra's -ppn,
        # Open MPI's --npernode, srun's --ntasks-per-node, Flux's --tasks-per-node).
        opts.n = int(v["ppn"])  # type: ignore[call-overload]
    opts.genv = dict(v.get("genv", {}))  # type: ignore[call-overload]
    opts.app_env = dict(s.get("env", {}))  # type: ignore[call-overload]
    # One program: its own -env* mode is the job's.
    opts.env_mode, opts.genvlist = s.get("env_mode") or v.get("env_mode") or ("all", [])  # type: ignore[misc]
    opts.wdir = s.get("wdir")  # type: ignore[assignment]
    opts.label = "prepend" in v
    opts.prepend = prepend_of(v)
    opts.timeout = v.get("timeout")  # type: ignore[assignment]
    opts.output = v.get("output")  # type: ignore[assignment]
    opts.error = v.get("error")  # type: ignore[assignment]
    opts.only = v.get("output_from")  # type: ignore[assignment]
    opts.kvs = v.get("kvs") or "shm"  # type: ignore[assignment]
    opts.merge = "merge_stderr" in v
    opts.unbuffered = "unbuffered" in v
    slots = None
    if parsed.here is not None:  # -hosts or -f: this machine alone (quick_ok)
        opts.host, slots = parsed.here
        if slots is not None and "n" not in s:
            opts.n = slots  # a rank per slot, as the full path gives
    # The universe size, as the full path tells it (pm.head): -usize (SYSTEM: the slots
    # given, else this machine's cpus; INFINITE: -1), else the slots given, at least n.
    usize = v.get("universe_size")
    if usize == "SYSTEM":
        opts.usize = slots if slots is not None else len(os.sched_getaffinity(0))
    elif usize == "INFINITE":
        opts.usize = -1
    elif usize is not None:
        opts.usize = int(usize)  # type: ignore[call-overload]
    elif slots is not None:
        opts.usize = max(opts.n, slots)
    stdin = str(v.get("stdin", "0"))
    if stdin.isdecimal():
        opts.stdin_rank = int(stdin)
        if opts.stdin_rank >= opts.n:
            return None  # the full path refuses it, in its words
    elif stdin == "all":  # a pipe for every rank; what comes, the agent writes (-1: STDIN_ALL)
        opts.stdin_rank = -1
    else:  # none, or file:PATH
        opts.stdin_rank = None
        opts.stdin_file = stdin[len("file:"):] if stdin.startswith("file:") else None
    opts.timestamp = "timestamp_output" in v
    opts.rank_map = "print_rank_map" in v
    opts.bind_to = str(v.get("bind_to") or "none")
    opts.bind_spelled = str(v.get("bind_spelled") or "")
    opts.map_by = str(v.get("map_by") or "core")
    opts.report = bool(v.get("report_bindings"))
    opts.pmix = wants_pmix(str(v.get("mpi") or "auto"), [opts.argv], environ.get("PATH"))
    return opts


class QuickStart:
    """A job the quick path started; :meth:`watch` runs it, or says it needs the full path.

    What it started is :attr:`started` (:class:`~pm.agent.started.StartedRanks`),
    handed whole to the full path by :meth:`handover`.
    """

    def __init__(self, opts: QuickOptions, argv: list[str]) -> None:
        self.opts = opts
        self.argv = argv
        self.host = opts.host or os.uname().nodename
        started = self.started = StartedRanks(new_job_id())
        started.signals = _signals  # what _note appends to
        writer = started.writer = Writer(opts.label, files={STDOUT: opts.output or "",
                                                            STDERR: opts.error or ""},
                                         job_id=started.job_id)
        writer.on_broken = self._reader_gone
        writer.timestamp = opts.timestamp
        writer.raw = opts.unbuffered
        if opts.only is not None:
            writer.only = rank_ranges(opts.only)
        here = (self.host, 0)
        writer.where = lambda job, rank: here  # one node, whatever the job
        if opts.prepend is not None:
            pattern, host = opts.prepend, self.host
            writer.prefix = lambda rank: prepend_prefix(pattern, rank, host=host, node=0)
        self._sig_r = self._sig_w = -1
        self._wake_r = self._wake_w = -1  # PMIx upcalls that need the full path
        self._pmix: Any = None  # pm.agent.pmix_server.PmixServer
        self._stdin = stdin_for_job() if opts.stdin_rank is not None else None
        #: The loop's fds, registered once (epoll: its cost is what is ready, not what is
        #: watched, which with 32 ranks is 130 fds).
        self._poll: select.epoll | None = None
        #: The ranks' PMI, from the first byte one of them sends.
        self.pmi: QuickPmi | None = None
        #: A rank ended before PMI init: the first init hands the job over (_init_waits).
        self._uninit_exit = False
        #: The jobs the ranks spawned (pm.agent.quick_spawns), from the first spawn.
        self.spawns: QuickSpawns | None = None
        #: The job's environment (a spawned job's too).
        self._base: dict[str, str] = {}
        #: Registers started ranks with the running loop (watch's).
        self._watch_more: Callable[[list[StartedRank]], None] | None = None
        #: The CPUs pmrun may run on (see :func:`spins`), once the loop runs.
        self._cpus = 0
        #: Whether the ranks' fds are in :attr:`_poll` (not while :meth:`_ended_early` looks).
        self._registered = False
        #: Why the job cannot start at all (then :meth:`start` returned False).
        self.refusal: str | None = None

    @property
    def ranks(self) -> list[StartedRank]:
        return self.started.ranks

    # ------------------------------------------------------------------ start
    def start(self) -> bool:
        """Start the ranks; False (nothing started) when the full path must run the job.
        :class:`UsageError` (nothing made) for a binding naming cpus this machine lacks."""
        opts, started = self.opts, self.started
        raise_fd_limit()
        short = fd_shortage(opts.n)
        if short is not None:  # named as the full path names it, without its start-up
            self.refusal = f"{rank_at(0, 0, self.host)} {NOT_STARTED}: {short}"
            return False
        # (pmrun is this node's agent: its own environment is the one the ranks start from.)
        base = ranks_env(passed_env(opts.env_mode, opts.genvlist, opts.genv, os.environ),
                         opts.env_mode != "only")
        cpusets: list[frozenset[int]] | None = None
        xml = None
        if opts.bind_to not in ("", "none"):
            bound = self._bind()
            if bound is None:
                return False  # the full path says why it does not bind
            xml, cpusets = bound
        if topo_share.sharing_enabled(base):
            xml = xml or topo_share.cached_xml()
            if xml is None:
                return False  # the full path discovers the topology (and caches it)
            started.xml_path = topo_share.write_job_xml(xml, started.job_id, sweep=False)
            base.update(HWLOC_XMLFILE=started.xml_path, HWLOC_THISSYSTEM="1")
        self._base = base
        envs = [rank_env(base, opts.app_env, r, opts.n, self.host, r, opts.n)
                for r in range(opts.n)]
        if opts.pmix and not self._start_pmix(envs):
            self._remove_xml()
            return False  # the full path serves PMIx or says why it cannot
        try:
            path = resolve(opts.argv[0], envs[0], opts.wdir)
        except SpawnError:
            self._remove_xml()
            return False  # the full path reports it
        self._catch_signals()
        if opts.rank_map:  # (said here once: a job handed over later does not say it again)
            from pm.common.output import rank_map

            os.write(2, rank_map([0] * opts.n, [self.host]).encode())
        started.shm_reaper = ShmReaper()
        # After a rank that cannot start, the full path reports it; the rest do not start.
        todo = [RankStart(r, r, path, opts.argv, env, opts.wdir,
                          cpus=cpusets[r] if cpusets else None) for r, env in enumerate(envs)]
        if opts.report:
            from pm.agent.binding import report_line

            assert started.writer is not None
            for i in range(opts.n):
                line = report_line(i, self.host, cpusets[i] if cpusets else None) + "\n"
                started.writer.write(i, STDERR, line.encode())
        stdin_rank = opts.stdin_rank if self._stdin is not None else None
        if self._pmix is not None:
            from pm.agent.pmix_register import RankTimerSlack

            with RankTimerSlack(opts.n):
                start_local(todo, stdin_rank=stdin_rank, stop_at_failure=True, into=started,
                            merge=opts.merge, stdin_file=opts.stdin_file,
                            raw=opts.unbuffered)
        else:
            start_local(todo, stdin_rank=stdin_rank, stop_at_failure=True, into=started,
                        merge=opts.merge, stdin_file=opts.stdin_file, raw=opts.unbuffered)
        if self._pmix is not None:
            for r in started.ranks:
                if r.pid:
                    self._pmix.pids[started.pmix, r.rank] = r.pid
            self._pmix.sweep()  # its files go with pmrun, however it ends (off the ranks' path)
        if started.xml_path:
            if started.guardian is not None:
                started.guardian.note([started.xml_path])  # gone with pmrun, even by SIGKILL
            topo_share.cleanup_stale()  # copies of dead agents, swept off the ranks' path too
        return True

    def _bind(self) -> tuple[bytes, list[frozenset[int]] | None] | None:
        """The node's topology (XML) and each rank's cpus, as the agent binds them
        (:meth:`pm.agent.node.JobAgent.prepare`); None where the agent would say something
        (no topology, a binding it gives up): the full path does.  A binding that names
        cpus this machine lacks is the command line's fault, known before anything
        started: :class:`UsageError` (the job's one node is this machine)."""
        from pm.agent.binding import BindingError, as_spelled, compute_bindings
        from pm.proto.errors import PMError

        try:
            topo = topo_share.node_topology()
        except PMError:
            return None
        try:
            b = compute_bindings(topo, self.opts.n, self.opts.bind_to, self.opts.map_by)
        except BindingError as exc:
            raise UsageError(as_spelled(str(exc), self.opts.bind_to, self.opts.bind_spelled)
                             ) from None
        if b.notice or topo.xml is None:
            return None
        self.started.topology = topo
        self.started.cpusets = list(b.cpusets) if b.cpusets is not None else None
        return topo.xml, self.started.cpusets

    def _start_pmix(self, envs: list[dict[str, str]]) -> bool:
        """Register the job with the PMIx server (started now, in C) and give each rank
        its variables.  Until the full path attaches its loop, upcalls wait; those that
        cannot (abort, publish, spawn...) wake :meth:`watch`, which hands the job over.
        A one-node job's fences never reach pmrun (the library completes them)."""
        from pm.agent.pmix_detect import libpmix_for
        from pm.agent.pmix_register import start_one_node
        from pm.proto.errors import PMError

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        nspace = kvsname_of(self.started.job_id)  # the full path's kvsname (pm.head)
        try:
            self._pmix, extra = start_one_node(
                nspace, self.opts.n, self.host, self.started.xml_path, self._wake_w,
                libpmix_for([self.opts.argv], envs[0].get("PATH"),
                            envs[0].get("LD_LIBRARY_PATH")),
                cpusets=self.started.cpusets, topo=self.started.topology,
                universe=self.opts.usize)
        except PMError:
            self._close_wake()
            return False
        for env, more in zip(envs, extra, strict=True):
            env.update(more)
        self.started.pmix = nspace
        return True

    def _close_wake(self) -> None:
        if self._wake_r < 0:
            return
        from pm.agent.pmix_server import current

        srv = current()
        if srv is not None and srv.wake_fd == self._wake_w:
            srv.wake_fd = -1
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    def _catch_signals(self) -> None:
        # The handler notes the signal; the wake-up pipe ends the poll.
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            _signal.signal(sig, _note)

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
        while _signals and _signals[0] in (_signal.SIGTSTP, _signal.SIGCONT):
            signum = _signals.pop(0)
            guardian.signal(signum)
            if signum == _signal.SIGTSTP:
                os.kill(os.getpid(), _signal.SIGSTOP)  # until SIGCONT (noted, handled next)
        return not _signals

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
                _writing.append(guardian)
            try:
                writer.write(r.rank, stream, lines, -1, r.job)
            finally:
                _writing.clear()
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

    # ------------------------------------------------------------------ end
    def finish(self) -> None:
        """Every rank ended well: reap them, let the guardian go, remove the job's files."""
        started = self.started
        for r in self._all_ranks():
            os.waitpid(r.pid, 0)
            r.close()
        self._remove_xml()
        clean = False
        if self.pmi is None and self._pmix is None:
            # No rank spoke PMI, so no MPI library started in the job and none of the MPI
            # segments that appeared meanwhile are its own: they are other jobs' on this
            # node, not to be looked for in every process's maps (tens of ms of CPU, here
            # and in the guardian).
            clean = True
        elif started.shm_reaper is not None:
            # The /dev/shm files MPI ranks left, as the agent removes them.
            try:
                started.shm_reaper.reap()
                clean = not started.shm_reaper.candidates()
            except OSError:
                pass
        if started.guardian is not None:
            # clean: no segment is left for the guardian to look for in its group's maps.
            started.guardian.release(clean=clean)

    def handover(self) -> StartedRanks:
        """Stop watching: what was started goes, whole, to the full path (pm.cli_run.take_over)."""
        # Signals are still noted (until the event loop installs its handlers); the event
        # loop brings its own wake-up fd.
        _signal.set_wakeup_fd(-1)
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        for fd in (self._sig_r, self._sig_w):
            if fd >= 0:
                os.close(fd)
        self._sig_r = self._sig_w = -1
        self._close_wake()
        self.started.pmi = self.pmi
        if self.spawns is not None:
            self.spawns.answer_all()
            self.started.spawned = self.spawns.jobs
        return self.started.take()

    def _all_ranks(self) -> list[StartedRank]:
        """The launched job's ranks, and those of the jobs they spawned."""
        return self.ranks if self.spawns is None else [*self.ranks, *self.spawns.ranks()]

    def _remove_xml(self) -> None:
        if self.started.xml_path:
            topo_share.remove_job_xml(self.started.xml_path)
            self.started.xml_path = None


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
_signals: list[int] = []


#: The guardian of the ranks while the quick loop writes their output (its write may wait
#: on a reader that stalls: ``pmrun ... | less``), else None.
_writing: list[Guardian] = []
#: The signals that end a job (a second one kills it at once).
_ENDING = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)


def _note(signum: int, frame: object) -> None:
    _signals.append(signum)
    if _writing and signum in _ENDING and sum(s in _ENDING for s in _signals) > 1:
        # The loop cannot act while pmrun's own stdout does not take what the ranks wrote:
        # a second Ctrl-C (or SIGTERM) kills the job at once all the same.
        _writing[0].kill_all()
        os.write(2, b"pmrun: interrupted twice: killing the job\n")
        os._exit(128 + signum)


def noted_signals() -> list[int]:
    """The signals noted and not acted on yet, oldest first (now the caller's)."""
    got = _signals[:]
    del _signals[:len(got)]
    return got


def main() -> int:
    """``pmrun``: the quick path when it applies (see the module docstring), else ``pm.cli_run``."""
    ensure_std_fds()
    argv = sys.argv[1:]
    try:
        os._exit(_main(argv))
    except Exception as exc:  # a defect of pmrun's: one line (the ranks end with pmrun)
        os._exit(internal_error(exc, traceback=_verbose(argv)))


def _verbose(argv: list[str]) -> bool:
    """Whether the command line asked for -v (the traceback of a defect goes with it)."""
    try:
        from pm.options import parse as parse_all

        return parse_all(argv, os.environ).verbose > 0
    except Exception:
        return False


def _main(argv: list[str]) -> int:
    slurm_het_group0(os.environ)  # (a heterogeneous allocation: its first part, as srun's)
    try:
        opts = parse(argv, os.environ)
    except UsageError as exc:
        return refuse(exc)
    job = None
    if opts is not None:
        gc.disable()  # start-up allocates nothing worth collecting
        job = QuickStart(opts, argv)
        try:
            began = job.start()
        except UsageError as exc:  # (said before anything of the job's is made)
            return refuse(exc)
        if not began:
            if job.refusal is not None:
                os.write(2, f"pmrun: {job.refusal}\n".encode(errors="replace"))
                return EXIT_NOT_STARTED
            job = None
    if job is None:
        # Ctrl-C while the full path imports is noted, not a KeyboardInterrupt's traceback
        # (SIGTERM, SIGHUP: not an end without a word): the full path acts on it once its
        # loop has the signals (pm.cli_run, pm.ensemble.cli: noted_signals).
        for sig in SIGNALS[:4]:
            _signal.signal(sig, _note)
        if os.environ.get("SLURM_JOB_ID"):
            from pm.bootstrap.early import step_now
            from pm.options import parse as parse_all

            # The agents' Slurm step starts before the full path's imports.
            try:
                step_now(parse_all(argv, os.environ), os.environ)
            except Exception:  # the full path names what is wrong
                pass
        from pm.cli_run import main as full

        return full()
    code = job.watch()
    if code is None:
        started = job.handover()
        from pm.cli_run import take_over

        return take_over(argv, started)
    job.finish()
    return code
