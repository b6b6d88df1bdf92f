"""Starting a node's ranks without an event loop, and what is handed over with them.

:func:`start_local` is the one way ranks (and an ensemble's tasks) start on a
node: ``pmrun``'s quick phase (:mod:`pm.quick`), the agent
(:mod:`pm.agent.ranks`) and the ensemble runner (:mod:`pm.ensemble.local`) all
call it.  It returns :class:`StartedRanks`: per rank its pid and pidfd, our
ends of its PMI socket and pipes, its partial output lines and when it
started; and for the job its guardian, the output writer with the files it
opened, the topology file, the /dev/shm baseline and the signals pmrun got and
has not acted on.  It has one owner at a time: :meth:`StartedRanks.take` moves
everything into a new object (the quick phase gives it to the agent whole)
and leaves the old one empty.

Like :mod:`pm.agent.spawn`, it imports no asyncio: the quick phase runs it
before anything heavy is loaded.
"""

from __future__ import annotations

import _socket
import os
import time

from pm.agent.spawn import Guardian, SpawnError, spawn_rank
from pm.common.output import LineBuffer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pm.agent.membind import Policy
    from pm.agent.pmi_quick import QuickPmi
    from pm.agent.quick_spawns import QuickJob
    from pm.agent.shm_reaper import ShmReaper
    from pm.agent.topology import Topology
    from pm.common.output_writer import Writer


class RankStart:
    """What to start for one rank: ``path`` (resolved) runs ``argv`` with ``env``, or
    ``failure`` says why it cannot be started."""

    __slots__ = ("argv", "cpus", "env", "failure", "local_rank", "mem", "path", "pty", "rank",
                 "wdir")

    def __init__(self, rank: int, local_rank: int, path: str, argv: Sequence[str],
                 env: Mapping[str, str], wdir: str | None = None,
                 cpus: frozenset[int] | None = None, failure: str = "",
                 mem: Policy | None = None, pty: tuple[int, int] | None = None) -> None:
        self.rank = rank
        self.local_rank = local_rank
        self.path = path
        self.argv = argv
        self.env = env
        self.wdir = wdir
        self.cpus = cpus
        self.failure = failure
        #: A NUMA memory policy (:mod:`pm.agent.membind`), None: the agent's own.
        self.mem = mem
        #: srun's --pty: it runs on a pseudo-terminal of this size (rows, columns; 0: the
        #: terminal's default), its stdin, stdout and stderr (:class:`pm.agent.spawn.RankFds`).
        self.pty = pty


class StartedRank:
    """A rank :func:`start_local` started (``pid`` 0: it did not start, ``failure`` says
    why; ``skipped`` if only because an earlier rank failed)."""

    __slots__ = ("err", "err_fd", "failure", "job", "local_rank", "out", "out_fd", "pid",
                 "pidfd", "pmi", "rank", "skipped", "started_at", "stdin_fd")

    def __init__(self, rank: int, local_rank: int, job: int = 0, raw: bool = False) -> None:
        self.rank = rank
        self.local_rank = local_rank
        #: Its job: 0 the launched job, J the J-th job spawned (pm.agent.quick_spawns).
        self.job = job
        self.pid = 0
        self.pidfd = -1
        self.failure = ""
        self.skipped = False
        #: Our end of its PMI socket (None for a task without PMI, or once taken).
        self.pmi: _socket.socket | None = None
        self.out_fd = self.err_fd = self.stdin_fd = -1
        #: Partial lines of its stdout and stderr (read, not yet passed on; ``raw``: none).
        self.out = LineBuffer(raw=raw)
        self.err = LineBuffer(raw=raw)
        #: Wall clock of its start (for --profile).
        self.started_at = 0.0

    def take_pmi_fd(self) -> int:
        """Our end of the rank's PMI socket, detached (ours no more)."""
        assert self.pmi is not None
        fd, self.pmi = self.pmi.detach(), None
        return fd

    def close(self) -> None:
        """Close every descriptor of ours (idempotent); the process is not touched."""
        if self.pmi is not None:
            self.pmi.close()
            self.pmi = None
        for name in ("pidfd", "out_fd", "err_fd", "stdin_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class StartedRanks:
    """A node's started ranks and what goes with them (see the module docstring)."""

    __slots__ = ("cpusets", "guardian", "job_id", "pmi", "pmix", "ranks", "shared", "shm_reaper",
                 "signals", "spawned", "t0", "topology", "writer", "xml_path")

    def __init__(self, job_id: str = "", t0: float | None = None) -> None:
        self.job_id = job_id
        #: When the job started (monotonic): --timeout counts from here.
        self.t0 = time.monotonic() if t0 is None else t0
        self.ranks: list[StartedRank] = []
        #: The process group's guardian, when these ranks own it (or, ``shared``, the
        #: launched job's, whose group a spawned job's ranks join).
        self.guardian: Guardian | None = None
        self.shared = False
        #: Writes the ranks' output (pmrun's quick phase), with the files it opened.
        self.writer: Writer | None = None
        #: The job's topology XML (removed when the job ends).
        self.xml_path: str | None = None
        #: /dev/shm as the ranks found it (pm.agent.shm_reaper).
        self.shm_reaper: ShmReaper | None = None
        #: Signals pmrun got and has not acted on (appended to by a signal handler).
        self.signals: list[int] = []
        #: The PMIx namespace registered for these ranks (pm.agent.pmix_register).
        self.pmix: str | None = None
        #: The PMI the quick phase served the ranks (engines, KVS, what is left to do).
        self.pmi: QuickPmi | None = None
        #: The jobs the quick phase spawned, in order (pm.agent.quick_spawns.QuickJob).
        self.spawned: list[QuickJob] = []
        #: The node's topology and the ranks' cpus when they are bound (by local rank).
        self.topology: Topology | None = None
        self.cpusets: list[frozenset[int]] | None = None

    def take(self) -> StartedRanks:
        """Everything, in a new object: the new owner's.  This one is left empty."""
        new = StartedRanks(self.job_id, self.t0)
        for name in ("ranks", "guardian", "shared", "writer", "xml_path", "shm_reaper",
                     "signals", "pmix", "pmi", "spawned", "topology", "cpusets"):
            setattr(new, name, getattr(self, name))
        self.ranks, self.signals, self.spawned, self.shared = [], [], [], False
        self.guardian = self.writer = self.xml_path = self.shm_reaper = self.pmix = None
        self.pmi = self.topology = self.cpusets = None
        return new

    def pending_signals(self) -> list[int]:
        """The signals noted since the last call, oldest first."""
        got = self.signals[:]
        del self.signals[:len(got)]
        return got

    @property
    def failed(self) -> bool:
        return any(r.failure for r in self.ranks)


def start_local(todo: Sequence[RankStart], *, stdin_rank: int | None = 0, pmi: bool = True,
                guardian: Guardian | None = None, stop_at_failure: bool = False,
                into: StartedRanks | None = None, job: int = 0, merge: bool = False,
                stdin_file: str | None = None, raw: bool = False) -> StartedRanks:
    """Start ``todo`` in one process group (posix_spawn: no Python runs in the children).

    Each gets a PMI socket (``pmi``), stdout and stderr pipes, and stdin: a
    pipe for rank ``stdin_rank`` (for every rank with -1, ``pm.proto.plan.STDIN_ALL``:
    not imported, the quick path stays light), /dev/null for the others.  Without
    ``guardian``, a new one leads the group and the result owns it.  A rank
    that cannot start gets its ``failure``; with ``stop_at_failure`` the
    ranks after it are not started (``skipped``).  ``into`` receives the
    ranks (else a new :class:`StartedRanks`); ``job``: theirs (:attr:`StartedRank.job`).
    ``merge``: each rank's stderr is its stdout pipe (no stderr pipe).  ``stdin_file``:
    every rank reads this file instead (each its own open of it, from its start).
    ``raw``: their output is passed on as it comes, partial lines too (srun's ``-u``).
    """
    started = into if into is not None else StartedRanks()
    if guardian is None:
        guardian = started.guardian = Guardian()
    stop = ""
    # One /dev/null is every rank's stdin but the one that reads ours (not one open each).
    try:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        devnull = -1  # RankFds opens one per rank, and says why if it cannot
    try:
        for spec in todo:
            r = StartedRank(spec.rank, spec.local_rank, job, raw)
            started.ranks.append(r)
            if stop:
                r.failure, r.skipped = stop, True
                continue
            piped = stdin_rank is not None and stdin_rank in (spec.rank, -1)
            r.failure = spec.failure or _spawn(r, spec, piped, pmi, guardian.pgid, devnull,
                                               merge, stdin_file)
            if r.failure and stop_at_failure:
                stop = f"not started: rank {spec.rank} could not start"
    finally:
        if devnull >= 0:
            os.close(devnull)
    return started


def _spawn(r: StartedRank, spec: RankStart, stdin_pipe: bool, pmi: bool, pgid: int,
           devnull: int, merge: bool = False, stdin_file: str | None = None) -> str:
    """Start one rank into ``r``: '' or why it could not start."""
    try:
        r.pid, fds = spawn_rank(spec.path, spec.argv, spec.env, stdin_pipe=stdin_pipe,
                                cwd=spec.wdir, pgid=pgid, cpus=spec.cpus, pmi=pmi,
                                devnull=devnull, merge=merge, stdin_file=stdin_file,
                                mem=spec.mem, pty=spec.pty)
    except SpawnError as exc:
        return str(exc)
    r.started_at = time.time()
    r.pmi, r.out_fd, r.err_fd, r.stdin_fd = fds.pmi, fds.out, fds.err, fds.stdin
    r.pidfd = os.pidfd_open(r.pid)  # our child (a zombie at worst) until we wait for it
    return ""
