"""A node's ranks as processes: started (or adopted), their exits, the kill.

:class:`LocalRanks` holds what a rank is to the operating system: its pid and
exit watch, its PMI socket's session task, its output pipes and line buffers,
the stdin pipes of the ranks that read pmrun's, and the guardian whose process
group they all join (:mod:`pm.agent.spawn`).  It knows nothing of the tree,
the KVS or collectives: what it learns goes to its
:class:`~pm.agent.node.JobAgent` — complete output lines
(:meth:`JobAgent.rank_output`), a rank that ended and whose pipes are drained
(:meth:`JobAgent.rank_ended`), how much of pmrun's stdin every reader took
(:meth:`JobAgent.stdin_taken`) — and each rank's PMI session is served with
the agent as its host.

Each rank's record is a :class:`~pm.agent.rank_proc.RankProc`.  Two parts of
:class:`LocalRanks` are classes of their own modules, which it inherits: what each
rank is started with (:class:`~pm.agent.rank_starts.RankStarts`) and the ranks'
output and stdin (:class:`~pm.agent.rank_io.RankIO`); this module spawns them,
serves them, reports their ends (srun's ``--task-epilog`` first) and kills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pm.agent.owned import Owned
from pm.agent.pmi_shell import PmiSession
from pm.agent.rank_io import RankIO
from pm.agent.rank_proc import PmiPhase, RankLife, RankProc
from pm.agent.rank_starts import RankStarts
from pm.agent.spawn import NOT_STARTED, Guardian, fd_shortage, not_started_status
from pm.agent.started import StartedRank, StartedRanks, start_local
from pm.agent.watch import ChildWatch, ExitStatus
from pm.common.output import STDERR, STDOUT, output_window

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.pmi_port import PmiPort
    from pm.agent.pmi_quick import QuickPmi

log = logging.getLogger("pm.agent")

#: How long a rank's pipes may stay open after it exited before its exit is reported anyway.
DRAIN_AFTER_EXIT = 1.0
#: How long srun's --task-epilog may run for one rank before it is killed.
EPILOG_TIMEOUT = 10.0


class LocalRanks(RankStarts, RankIO):
    """The ranks ``agent`` runs on its node (``local``, in rank order)."""

    def __init__(self, agent: JobAgent, local: Sequence[int]) -> None:
        self.agent = agent
        self.loop = agent.loop
        self.ranks: dict[int, RankProc] = {r: RankProc(r, i) for i, r in enumerate(local)}
        self.guardian: Guardian | None = None
        #: The guardian is another job's (the launched job's, on this node): its process
        #: group holds our ranks too, so they are signalled one by one, never as a group,
        #: and the guardian is not ours to let go.
        self.shared = False
        self.watch: ChildWatch | None = None
        #: The PMI sessions' tasks and the drain and kill timers.
        self.owned = Owned(self.loop)
        #: Hydra's -pmi-port: the port our ranks connect to, and the ranks that did.
        self._port: PmiPort | None = None
        self._by_port: set[int] = set()
        #: pmrun's stdin: bytes that came (from the first), how many of them every reader
        #: took and was said to have taken (StdinAck), and whether the end came.
        self._stdin_in = 0
        self._stdin_acked = 0
        self._stdin_eof = False
        #: srun's --pty: the rank on a pseudo-terminal, in a session of its own (out of
        #: the guardian's group: signalled by its pid as well).
        self.pty: RankProc | None = None
        #: Bytes of output this node may still send up (pm.common.output.output_window); without
        #: credit the pipes are not read, so the ranks wait for the head's reader.
        self._credit = output_window(len(agent.plan.hosts))
        self._paused = False
        #: Streams the head has no reader for (t.OutputGone): their pipes are closed here.
        self.gone: set[int] = set()
        #: srun's --task-epilog: each rank's environment until its epilog runs, and the
        #: ranks whose epilog runs now (their end is reported after it).
        self._epilog_env: dict[int, dict[str, str]] = {}
        self._in_epilog: set[int] = set()
        #: Whether this node said what --gpus-per-task could not do here.
        self._gpu_said = False

    # ------------------------------------------------------------------ start
    def start(self, base_env: dict[str, str], cpusets: list[frozenset[int]] | None,
              guardian: Guardian | None = None, shared: bool = False) -> None:
        """Spawn every rank (synchronously: posix_spawn is fast) with the job's environment,
        as pmrun's quick path does (:func:`pm.agent.started.start_local`), and serve them.
        ``guardian``: one started beforehand (a spawned job's), else a new one; ``shared``:
        it is another job's, whose group our ranks join (see :attr:`shared`)."""
        agent, plan = self.agent, self.agent.plan
        agent.mark("spawn start", ranks=len(self.ranks))
        short = fd_shortage(len(self.ranks))
        if short is not None:
            self.watch = ChildWatch()
            for proc in self.ranks.values():  # the head names the first: no log per rank
                self._spawn_failed(proc, short, quiet=True)
            return
        todo = self._rank_starts(base_env, cpusets)
        # Stdin goes to one rank of the launched job (a spawned job's read /dev/null).
        stdin_rank = None if plan.spawned or plan.stdin_file else plan.stdin_rank
        stdin_file = None if plan.spawned else plan.stdin_file or None
        started = StartedRanks()
        started.guardian, started.shared = guardian, shared
        with contextlib.ExitStack() as around:
            if agent.pmix is not None:
                from pm.agent.pmix_register import RankTimerSlack

                around.enter_context(RankTimerSlack(len(todo)))
            if plan.rlimits:  # srun's --propagate
                from pm.agent.rlimits import RankLimits

                around.enter_context(RankLimits(plan.rlimits, self._limit_warning))
            start_local(todo, stdin_rank=stdin_rank, guardian=guardian,
                        merge=plan.merge_stderr, into=started, stdin_file=stdin_file,
                        raw=plan.unbuffered, pmi=not plan.pmi_port)
        on_pty = next((s.rank for s in todo if s.pty), None)
        self.adopt(started, mark=False)
        self.pty = self.ranks.get(on_pty) if on_pty is not None else None

    def never_started(self) -> None:
        """The job ended before our ranks were started: none will be, and none has an exit
        to report (each counts as reported)."""
        for proc in self.ranks.values():
            proc.life = RankLife.REPORTED

    def _pmi_port(self) -> PmiPort:
        """Hydra's -pmi-port: the port our ranks connect to (listening from now on)."""
        if self._port is None:
            from pm.agent.pmi_port import PmiPort

            self._port = PmiPort(self.loop, self._port_waits, self._port_connected)
        return self._port

    def _port_waits(self, rank: int) -> bool:
        proc = self.ranks.get(rank)
        return proc is not None and proc.session is not None and rank not in self._by_port

    def _port_connected(self, rank: int, sock: socket.socket) -> None:
        """Rank ``rank`` connected to our PMI port: served as if it had inherited ``sock``."""
        session = self.ranks[rank].session
        assert session is not None
        self._by_port.add(rank)
        session.engine.by_port = True
        self.owned.spawn(self._serve(session, sock))

    def adopt(self, started: StartedRanks, mark: bool = True) -> None:
        """Serve the ranks ``started`` holds (:func:`~pm.agent.started.start_local`, here or
        in ``pmrun``'s quick path, :mod:`pm.quick`): they are ours from now on.

        What they printed has been passed on, except partial lines, which come
        with the pipes.  A rank that has exited is still a zombie: its watch
        reports it at once.
        """
        if mark:
            self.agent.mark("spawn start", ranks=len(self.ranks))
        self.watch = ChildWatch()
        ranks, started.ranks = started.ranks, []
        self.guardian, started.guardian = started.guardian, None
        self.shared, started.shared = started.shared and self.guardian is not None, False
        quick, started.pmi = started.pmi, None
        for r in ranks:
            proc = self.ranks[r.rank]
            if r.pid == 0:
                self._spawn_failed(proc, r.failure, quiet=r.skipped)
                continue
            proc.pid = r.pid
            self.agent.rank_started(r.rank, r.pid)
            if self.agent.timeline is not None:
                self.agent.timeline.append([r.started_at, self.agent.vertex, r.rank,
                                            "rank spawned", {"pid": r.pid}])
            self._attach(proc, r, quick)
        self.agent.mark("ranks spawned")

    def _attach(self, proc: RankProc, r: StartedRank, quick: QuickPmi | None = None) -> None:
        """Serve a started rank: its PMI socket, output pipes, stdin pipe and exit; with
        ``quick``, its PMI engine as the quick phase leaves it, and what is left to do."""
        assert self.watch is not None
        proc.stdin_fd, r.stdin_fd = r.stdin_fd, -1
        if proc.stdin_fd >= 0:
            os.set_blocking(proc.stdin_fd, False)
        engine = quick.engines.get(proc.rank) if quick is not None else None
        if engine is not None:
            assert quick is not None
            if engine.finalized:
                proc.pmi = PmiPhase.FINALIZED
            elif engine.initialized:
                proc.pmi = PmiPhase.INITIALIZED
            session = PmiSession(self.agent, proc.rank, engine, quick.todo(proc.rank))
        else:
            session = PmiSession(self.agent, proc.rank)
        proc.session = session
        if r.pmi is not None:
            self.owned.spawn(self._serve(session, socket.socket(fileno=r.take_pmi_fd())))
        else:  # closed after finalize while the quick phase served it: at its end
            proc.pmi_eof = True
        for stream, fd, buf in ((STDOUT, r.out_fd, r.out), (STDERR, r.err_fd, r.err)):
            if fd < 0:
                continue  # already at EOF
            if stream in self.gone:
                os.close(fd)  # nobody reads it: the rank's writes fail
                continue
            proc.streams[stream] = buf
            proc.fds[stream] = fd
            os.set_blocking(fd, False)
            if not self._paused:
                self.loop.add_reader(fd, self._read_output, proc, stream)
        r.out_fd = r.err_fd = -1
        pidfd, r.pidfd = r.pidfd, -1
        proc.ended = self.watch.watch(proc.pid, pidfd)
        proc.ended.add_done_callback(functools.partial(self._on_exit, proc))

    async def _serve(self, session: PmiSession, sock: socket.socket) -> None:
        await self.loop.connect_accepted_socket(lambda: session, sock)

    def _spawn_failed(self, proc: RankProc, why: str, quiet: bool = False) -> None:
        """Rank ``proc`` could not start: the head names the job's first such rank in one
        line (each is logged only under ``-v``: 64 ranks of a missing program are one line)."""
        if not quiet:
            log.info("rank %d could not start: %s", proc.rank, why)
        proc.status = ExitStatus(not_started_status(why), 0)
        proc.life = RankLife.EXITED
        proc.reason = f"{NOT_STARTED}: {why}"
        self.report(proc)

    # ------------------------------------------------------------------ exits
    def _on_exit(self, proc: RankProc, fut: asyncio.Future[ExitStatus]) -> None:
        if not fut.cancelled():
            self._exited(proc, fut.result())

    def _exited(self, proc: RankProc, status: ExitStatus) -> None:
        proc.status = status
        proc.ended_at = proc.ended_at or time.time()  # (perhaps seen already: killed)
        proc.life = RankLife.EXITED
        if self.agent.timeline is not None:
            self.agent.mark("rank exit", proc.rank, code=status.code, signal=status.signal)
        if proc.stdin_fd >= 0:
            self.loop.remove_writer(proc.stdin_fd)
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1
            proc.stdin_buf = b""  # what it did not read: taken (the others may want more)
            self._stdin_took()
        if status.ok and proc.pmi is PmiPhase.INITIALIZED and not self.agent.killing:
            proc.reason = "exited without calling PMI finalize"
            proc.status = ExitStatus(1, 0)
        if not proc.fds:
            self.report(proc)
        else:
            # Let the pipes drain (a rank's last lines come before its exit report).
            self.owned.call_later(DRAIN_AFTER_EXIT, self._drained, proc)

    def _drained(self, proc: RankProc) -> None:
        """A rank's pipes stayed open after its exit: report it, unless they only wait
        for output credit (its lines are not lost to a slow reader then)."""
        if self._paused and proc.fds and not self.agent.killing:
            self.owned.call_later(DRAIN_AFTER_EXIT, self._drained, proc)
        else:
            self.report(proc)

    def report(self, proc: RankProc) -> None:
        """Once per rank, when it ended: pass on what is left in its pipes, then the end."""
        if proc.life is RankLife.REPORTED or proc.status is None or proc.rank in self._in_epilog:
            return
        env = self._epilog_env.pop(proc.rank, None)
        if env is not None and proc.pid:  # srun's --task-epilog, before the end is reported
            self._in_epilog.add(proc.rank)
            self.owned.spawn(self._epilog(proc, env))
            return
        proc.life = RankLife.REPORTED
        for stream in list(proc.fds):
            self._read_output(proc, stream)  # whatever is left
        self.agent.rank_ended(proc)

    async def _epilog(self, proc: RankProc, env: dict[str, str]) -> None:
        """Run srun's --task-epilog for ``proc`` (output discarded, as slurmstepd's), then
        report its end; one at most EPILOG_TIMEOUT seconds (killed with its children)."""
        prog = self.agent.plan.task_epilog
        why = ""
        try:
            ep = await asyncio.create_subprocess_exec(
                prog, env=env, cwd=self.agent.launch_dir, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            why = f"cannot run ({exc.strerror or exc})"
        else:
            try:
                code = await asyncio.wait_for(ep.wait(), EPILOG_TIMEOUT)
            except TimeoutError:
                why = f"did not end within {EPILOG_TIMEOUT:g} s (killed)"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(ep.pid, signal.SIGKILL)
                await ep.wait()
            except asyncio.CancelledError:  # (the agent closes: the epilog goes too)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(ep.pid, signal.SIGKILL)
                raise
            else:
                why = f"failed with status {128 - code if code < 0 else code}" if code else ""
        if why:
            log.warning("rank %d (node %d, %s): --task-epilog %s %s", proc.rank,
                        self.agent.vertex, self.agent.host, prog, why)
        self._in_epilog.discard(proc.rank)
        self.report(proc)

    # ------------------------------------------------------------------ signals, ending
    def pidfd(self, rank: int) -> int:
        """A pidfd of local ``rank`` the caller owns, -1 if it was reaped (or never ran)."""
        proc = self.ranks.get(rank)
        if proc is None or self.watch is None or proc.status is not None:
            return -1
        return self.watch.dup_pidfd(proc.pid)

    def killed(self, but: int) -> set[int]:
        """Local ranks but ``but`` that a signal ended and that are not reported yet, even
        those whose end the loop has not got to yet (they are reaped now)."""
        found = set()
        for proc in self.ranks.values():
            if proc.rank == but or proc.life is RankLife.REPORTED:
                continue
            st, ended = proc.status, proc.ended
            if st is None and ended is not None:
                if not ended.done() and self.watch is not None:
                    self.watch.poll(proc.pid)
                if ended.done() and not ended.cancelled():
                    st = ended.result()  # (its callback, _on_exit, comes soon)
                    proc.ended_at = proc.ended_at or time.time()
            if st is not None and st.signal:
                found.add(proc.rank)
        return found

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every rank (their guardian ignores it).  Ranks in a shared
        group get it from the group's own job (:meth:`JobAgent.from_parent` signals every
        job of the node), not once more from here."""
        if self.guardian is not None and not self.shared:
            self.guardian.signal(signum)
        self._signal_pty(signum)

    def winsize(self, rows: int, cols: int) -> None:
        """srun's --pty: the rank's terminal is now ``rows`` x ``cols`` (the kernel tells its
        foreground processes: SIGWINCH)."""
        fd = self.pty.fds.get(STDOUT, -1) if self.pty is not None else -1
        if fd < 0 or rows <= 0 or cols <= 0:
            return
        import fcntl
        import struct
        import termios

        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _signal_pty(self, signum: int) -> None:
        pty = self.pty
        if pty is not None and pty.pid and pty.status is None and self.watch is not None:
            self.watch.kill(pty.pid, signum)

    def _signal_each(self, signum: int) -> None:
        """``signum`` to each of our ranks still running, through its pidfd."""
        if self.watch is not None:
            for proc in self.ranks.values():
                if proc.pid and proc.status is None:
                    self.watch.kill(proc.pid, signum)

    def kill(self, grace: float, first: bool) -> None:
        """SIGTERM every rank, SIGKILL after ``grace`` seconds (at once if ``grace`` <= 0)."""
        if self.guardian is None:
            return
        if grace <= 0:
            self._kill_all()
            return
        if self.shared:
            self._signal_each(signal.SIGTERM)
        else:
            self.guardian.signal(signal.SIGTERM)
            self._signal_pty(signal.SIGTERM)
        if first:
            self.owned.call_later(grace, self._kill_hard)

    def _kill_all(self) -> None:
        if self.shared:
            self._signal_each(signal.SIGKILL)
        elif self.guardian is not None:
            self._signal_pty(signal.SIGKILL)
            self.guardian.kill_all()

    def _kill_hard(self) -> None:
        if self.guardian is not None and any(p.status is None for p in self.ranks.values()
                                             if p.pid):
            self._kill_all()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the PMI sessions' tasks to end."""
        self.close()
        await self.owned.aclose()

    def close(self, keep_guardian: bool = False) -> Guardian | None:
        """Release everything; ranks still alive are killed. Idempotent.  ``keep_guardian``:
        our guardian is not let go but returned, for the caller to release once it knows
        whether the ranks left any MPI segment (:meth:`Guardian.release`'s ``clean``)."""
        self.owned.cancel()  # the owner (JobAgent.aclose) awaits the sessions' tasks
        if self._port is not None:
            self._port.close()
        for proc in self.ranks.values():
            for fd in proc.fds.values():
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
            proc.fds.clear()
            if proc.stdin_fd >= 0:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_writer(proc.stdin_fd)
                os.close(proc.stdin_fd)
                proc.stdin_fd = -1
            if proc.session is not None and proc.session.transport is not None:
                proc.session.transport.abort()
        kept = None
        if self.guardian is not None:
            if any(p.status is None and p.pid for p in self.ranks.values()):
                self._kill_all()
            if keep_guardian and not self.shared:
                kept = self.guardian
            elif not self.shared:
                self.guardian.release()
            self.guardian = None
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        return kept
