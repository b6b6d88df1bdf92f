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
A poll loop then writes the ranks' output and watches them (:mod:`pm.quick_serve`).

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
import gc
import os
import sys

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
from pm.agent.started import RankStart, StartedRanks, start_local
from pm.common.output import STDERR, STDOUT, rank_ranges, stdin_for_job
from pm.common.output_writer import Writer, ensure_std_fds
from pm.jobenv import kvsname_of, new_job_id, passed_env, ranks_env, slurm_het_group0
from pm.options import internal_error, prepend_of, prepend_prefix, quick_ok, refuse
from pm.options import parse as parse_options
from pm.proto.errors import UsageError, rank_at
from pm.quick_serve import QuickServe, note, noted

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import select
    from collections.abc import Callable, Mapping
    from typing import Any

    from pm.agent.pmi_quick import QuickPmi
    from pm.agent.quick_spawns import QuickSpawns
    from pm.agent.started import StartedRank

#: Signals pmrun handles (pm.cli_run installs the same on the event loop).
SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
           _signal.SIGUSR2, _signal.SIGALRM, _signal.SIGTSTP, _signal.SIGCONT)


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


class QuickStart(QuickServe):
    """A job the quick path started; :meth:`watch` runs it, or says it needs the full path
    (the part that serves the ranks: :class:`~pm.quick_serve.QuickServe`).

    What it started is :attr:`started` (:class:`~pm.agent.started.StartedRanks`),
    handed whole to the full path by :meth:`handover`.
    """

    def __init__(self, opts: QuickOptions, argv: list[str]) -> None:
        self.opts = opts
        self.argv = argv
        self.host = opts.host or os.uname().nodename
        started = self.started = StartedRanks(new_job_id())
        started.signals = noted  # what note appends to
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
        #: The CPUs pmrun may run on (see :func:`pm.quick_serve.spins`), once the loop runs.
        self._cpus = 0
        #: Whether the ranks' fds are in :attr:`_poll` (not while :meth:`_ended_early` looks).
        self._registered = False
        #: Why the job cannot start at all (then :meth:`start` returned False).
        self.refusal: str | None = None

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
        from pm.agent.pmix_register import add_fork_env, start_one_node
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
            add_fork_env(env, more)
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
            _signal.signal(sig, note)

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

    def _remove_xml(self) -> None:
        if self.started.xml_path:
            topo_share.remove_job_xml(self.started.xml_path)
            self.started.xml_path = None


def noted_signals() -> list[int]:
    """The signals noted and not acted on yet, oldest first (now the caller's)."""
    got = noted[:]
    del noted[:len(got)]
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
            _signal.signal(sig, note)
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
