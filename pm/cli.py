"""``pmrun``'s command line as the full path runs it: Hydra-style options parsed
(:mod:`pm.options`) into a JobSpec and the launcher's options (:class:`CliOptions`).

Which nodes the job runs on is :mod:`pm.cli_nodes`'s; :mod:`pm.cli_run` runs the job
through :class:`pm.head.JobRun` (the same path as ``pm.run``)."""

from __future__ import annotations

import os
import sys

from pm.jobspec import AppSpec, JobSpec
from pm.options import Parsed, Section, prepend_of
from pm.options import parse as parse_options
from pm.proto.errors import UsageError
from pm.proto.plan import STDIN_ALL


class CliOptions:
    """The command line as the full path runs it: the job, the nodes, the launcher's options."""

    __slots__ = ("app_nodes", "bind_given", "deal", "distribution_given", "extra", "fanout",
                 "fanout_given", "host_entries", "hostfile", "hosts", "local_nodes",
                 "map_by_given", "n_given", "spec", "verbose")

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.hosts: str | None = None
        self.hostfile: str | None = None
        self.local_nodes: int | None = None
        self.fanout = 32
        self.verbose = 0
        #: The other options' values as text (launcher, memory, ensemble, simulation, ...).
        self.extra: dict[str, str] = {}
        #: False when no -n was given: the hosts' slots decide (pm.cli_nodes), as in Hydra/srun.
        self.n_given = True
        #: False when no --fanout was given: the launcher's measured default applies.
        self.fanout_given = True
        #: False when no --bind-to was given: inside Slurm, its cpus per task decide.
        self.bind_given = True
        #: False when no -m/--distribution was given: inside Slurm, SLURM_DISTRIBUTION.
        self.distribution_given = True
        #: Whether --map-by was given (it places the ranks, not Hydra's dealing).
        self.map_by_given = False
        #: The entries of -hosts' or -f's list as given (host, count or None), a host
        #: named again an entry again (pm.cli_nodes._where); None: no such list.
        self.host_entries: list[tuple[str, int | None]] | None = None
        #: Hydra's dealing of the ranks to those entries (pm.common.nodes.Nodes.deal).
        self.deal: list[tuple[int, int]] | None = None
        #: Programs with hosts of their own: each one's nodes and slots
        #: (pm.cli_nodes._program_hosts).
        self.app_nodes: list[tuple[list[int], list[int | None]]] | None = None


#: srun's --profile values (acct_gather_profile's): Slurm's, not a file for pmrun's trace.
SLURM_PROFILES = frozenset({"all", "none", "energy", "task", "lustre", "network"})

#: Options whose values the job spec or CliOptions hold; the others go to ``extra``.
_SPEC_KEYS = frozenset({"ppn", "wdir", "hosts", "hostfile", "local_nodes", "fanout", "timeout",
                        "wait_after_first", "quit_on_interrupt", "no_kill", "bcast",
                        "send_libs", "pty", "umask", "pmi_port",
                        "kvs", "genv", "env_mode", "bind_to", "bind_spelled", "map_by",
                        "profile", "output",
                        "error", "prepend", "report_bindings", "universe_size", "mpi",
                        "merge_stderr", "timestamp_output", "distribution", "unbuffered",
                        "rank_by", "kill_on_bad_exit", "report_state", "stack_traces",
                        "signal_before_end", "open_mode", "task_prolog",
                        "task_epilog", "propagate", "gpus_per_task", "output_from",
                        "mem_bind", "memory_alloc_kinds"})


def parse(argv: list[str]) -> CliOptions:
    """argv (without the program name) -> options.  Raises UsageError (see pm.options)."""
    parsed = parse_options(argv, os.environ)
    if parsed.action == "help":
        from pm.options.help import usage

        raise SystemExit(_print(usage(), 0))
    if parsed.action == "version":
        from pm import __version__

        raise SystemExit(_print(f"pmrun {__version__}\n", 0))
    if parsed.action == "info":
        raise SystemExit(_print(build_info(), 0))
    if parsed.action == "mpi_list":
        raise SystemExit(_print(mpi_list(), 0))
    return cli_options(parsed)


def mpi_list() -> str:
    """What ``pmrun --mpi=list`` prints (srun's list of MPI plugin types): each --mpi
    value and what it serves, PMIx with the library this machine has, or why not."""
    from pm.agent import pmix_lib

    try:
        ffi, lib = pmix_lib.load()
        version = ffi.string(lib.PMIx_Get_version()).decode(errors="replace")
        pmix = f"PMIx besides PMI-1/PMI-2 ({version.split(' (')[0]}, {pmix_lib.loaded_name})"
    except pmix_lib.PmixError as exc:
        pmix = f"not here: {exc}"
    rows = (("auto", "the default: PMIx too when a program needs it (Open MPI, libpmix)"),
            ("pmi", "PMI-1 and PMI-2 over PMI_FD, pmrun's own protocol, the KVS in shared "
                    "memory (srun's pmi2)"),
            ("pmix", pmix + " (srun's pmix, pmix_vN)"),
            ("none", "as pmi: pmrun's ranks always have PMI-1 and PMI-2"))
    return "MPI types pmrun serves (--mpi TYPE):\n" + "".join(
        f"\t{k:<6}{v}\n" for k, v in rows)

def build_info() -> str:
    """What ``pmrun -info`` prints (Hydra's build details): the version, what pmrun serves
    and which of its optional libraries this machine has."""
    from pm import __version__
    from pm.agent import pmix_lib
    from pm.agent.topology import hwloc_status

    try:
        ffi, lib = pmix_lib.load()
        pmix = (f"{pmix_lib.loaded_name}: "
                f"{ffi.string(lib.PMIx_Get_version()).decode(errors='replace')}")
    except pmix_lib.PmixError as exc:
        pmix = str(exc)
    rows = (("Version", f"pmrun {__version__}, Python {sys.version.split()[0]} "
                        f"({sys.executable})"),
            ("PMI served", "PMI-1, PMI-2 (PMI_FD), pmrun's native protocol, "
                           "the node's KVS in shared memory"),
            ("PMIx server", pmix),
            ("Topology", hwloc_status()),
            ("Launchers", "fork (this machine), ssh, rsh, slurm (srun), persist "
                          "(pm-agent serve), a command template"),
            ("Allocations read", "Slurm, PBS/Torque (PBS_NODEFILE), LSF "
                                 "(LSB_DJOB_HOSTFILE), HYDRA_HOST_FILE"))
    return "".join(f"{k + ':':<18}{v}\n" for k, v in rows)


def _app(section: Section) -> AppSpec:
    v = section.values
    app = AppSpec(section.argv, n=int(v.get("n", 1)),  # type: ignore[call-overload]
                  env=dict(v.get("env", {})),  # type: ignore[call-overload]
                  wdir=v.get("wdir"), hosts=v.get("hosts"))  # type: ignore[arg-type]
    if "env_mode" in v:
        app.env_mode, app.envlist = v["env_mode"]  # type: ignore[misc]
    return app


def cli_options(parsed: Parsed) -> CliOptions:
    """The checked command line (pm.options) as a JobSpec and the launcher's options."""
    v = parsed.values
    spec = JobSpec(apps=[_app(s) for s in parsed.sections])
    opts = CliOptions(spec)
    opts.verbose = parsed.verbose
    spec.genv = dict(v.get("genv", {}))  # type: ignore[call-overload]
    if "env_mode" in v:
        spec.env_mode, spec.genvlist = v["env_mode"]  # type: ignore[misc]
    spec.ppn = v.get("ppn")  # type: ignore[assignment]
    spec.distribution = str(v.get("distribution", spec.distribution))
    if spec.distribution == "arbitrary":  # (srun's: each rank's host from SLURM_HOSTFILE)
        opts.extra["arbitrary"] = "-m"
        spec.distribution = "block"
    spec.rank_by = str(v.get("rank_by", ""))
    spec.kill_on_bad_exit = v.get("kill_on_bad_exit", "1") == "1"
    opts.distribution_given = "distribution" in v
    opts.map_by_given = "map_by" in v
    spec.wdir = v.get("wdir")  # type: ignore[assignment]  # (--tasks FILE's; else per program)
    timeout = v.get("timeout")
    if isinstance(timeout, str):  # (GNU parallel's percentage: an ensemble's, pm.options)
        opts.extra["timeout_pct"] = timeout
        timeout = None
    spec.timeout = timeout  # type: ignore[assignment]
    spec.output_append = v.get("open_mode") == "append"
    spec.task_prolog = str(v.get("task_prolog", ""))
    spec.task_epilog = str(v.get("task_epilog", ""))
    spec.gpus_per_task = int(v.get("gpus_per_task", 0))  # type: ignore[call-overload]
    spec.output_from = str(v.get("output_from", ""))
    spec.mem_bind = str(v.get("mem_bind", ""))
    spec.memory_alloc_kinds = str(v.get("memory_alloc_kinds", ""))
    spec.propagate = [n for n in str(v.get("propagate", "")).split(",") if n]
    spec.timeout_report = 2 if v.get("stack_traces") else 1 if v.get("report_state") else 0
    before = v.get("signal_before_end")
    if before is not None:
        if spec.timeout is None:
            spec.slurm_end = _slurm_end()
        num, _, secs = str(before).partition("@")
        spec.signal_before_end = (int(num), float(secs))
    if spec.timeout_report and spec.timeout is None:
        which = "--get-stack-traces" if v.get("stack_traces") else "--report-state-on-timeout"
        raise UsageError(f"{which} acts at the job's timeout: give --timeout SECONDS (or "
                         "MPIEXEC_TIMEOUT)")
    spec.wait_after_first = v.get("wait_after_first") or None  # type: ignore[assignment]
    spec.quit_on_interrupt = bool(v.get("quit_on_interrupt"))
    spec.no_kill = bool(v.get("no_kill"))
    if "bcast" in v:
        spec.bcast = str(v["bcast"])
    spec.send_libs = bool(v.get("send_libs"))
    spec.pty = bool(v.get("pty"))
    spec.umask = v.get("umask")  # type: ignore[assignment]
    spec.pmi_port = bool(v.get("pmi_port"))
    if spec.send_libs and spec.bcast is None:
        raise UsageError("--send-libs sends the libraries of the programs --bcast copies: "
                         "give --bcast too")
    if spec.no_kill:
        opts.extra["no_kill"] = "1"  # (inside Slurm, the agents' step too)
    if str(v.get("stdin", "none")).isdecimal():
        spec.stdin_rank = int(v["stdin"])  # type: ignore[call-overload]
    elif v.get("stdin") == "all":
        spec.stdin_rank = STDIN_ALL
    elif str(v.get("stdin", "")).startswith("file:"):
        spec.stdin_file = str(v["stdin"])[len("file:"):]
    spec.kvs = str(v.get("kvs", spec.kvs))
    spec.bind_to = str(v.get("bind_to", spec.bind_to))
    opts.bind_given = "bind_to" in v
    spec.bind_spelled = str(v.get("bind_spelled", ""))
    spec.map_by = str(v.get("map_by", spec.map_by))
    spec.mpi = str(v.get("mpi", spec.mpi))
    profile = v.get("profile")
    if isinstance(profile, str) and set(profile.lower().split(",")) <= SLURM_PROFILES:
        # srun's --profile=task (Slurm's profiling of the step), not a file of pmrun's.
        opts.extra["slurm_profile"], profile = profile, None
    spec.profile = profile  # type: ignore[assignment]
    spec.output = v.get("output")  # type: ignore[assignment]
    spec.error = v.get("error")  # type: ignore[assignment]
    spec.report_bindings = bool(v.get("report_bindings"))
    spec.merge_stderr = bool(v.get("merge_stderr"))
    spec.unbuffered = bool(v.get("unbuffered"))
    spec.timestamp = bool(v.get("timestamp_output"))
    spec.label = "prepend" in v
    spec.prepend = prepend_of(v)
    usize = v.get("universe_size")
    if usize == "SYSTEM":
        opts.extra["usize_system"] = "1"  # the slots of the nodes: known with the nodes
    elif usize is not None:
        spec.universe_size = -1 if usize == "INFINITE" else int(usize)  # type: ignore[call-overload]
    opts.hosts = v.get("hosts")  # type: ignore[assignment]
    opts.hostfile = v.get("hostfile")  # type: ignore[assignment]
    opts.local_nodes = v.get("local_nodes")  # type: ignore[assignment]
    opts.fanout = int(v.get("fanout", 32))  # type: ignore[call-overload]
    opts.fanout_given = "fanout" in v
    for key, value in v.items():
        if key not in _SPEC_KEYS:
            opts.extra[key] = ("1" if value is True else "\0".join(value)
                               if isinstance(value, list) else str(value))
    _launcher(opts.extra)
    opts.n_given = len(parsed.sections) != 1 or "n" in parsed.sections[0].values
    if "sim_ranks" in opts.extra:
        from pm.agent.sim import sim_settings

        if spec.apps:
            raise UsageError("--sim-ranks-per-node emulates the ranks: give no program")
        try:
            sim_settings(opts.extra)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    # Memory watermarks also govern the ranks' reserve blocks: they travel in the plan.
    spec.mem_high = opts.extra.get("mem_high")
    spec.mem_low = opts.extra.get("mem_low")
    spec.mem_overrun = opts.extra.get("mem_overrun", "warn")
    return opts


def _slurm_end() -> tuple[float, float]:
    """srun's --signal without --timeout: inside a Slurm job, its end (seconds left, and
    when they were asked), from slurmctld: what srun's --signal is before; UsageError when
    there is no such end."""
    from pm.bootstrap.slurm_job import job_end

    end = job_end("--timeout SECONDS, -t MINUTES")
    if isinstance(end, str):
        raise UsageError(f"--signal: a signal before the time limit needs a time limit{end}")
    return end


def _launcher(extra: dict[str, str]) -> None:
    """Hydra's launcher names as pmrun's (``persist``: the persistent agents; ``rsh``: ssh
    run as rsh), and a ``-launcher-exec`` that contradicts the launcher refused.  Whether
    its value is a template or the ssh program is :func:`pm.bootstrap.is_template`'s."""
    from pm.bootstrap import is_template

    name = extra.get("launcher")
    if name == "persist":
        extra["launcher"] = name = "persistent"
    elif name == "rsh":
        extra["launcher"] = name = "ssh"
        extra.setdefault("ssh", "rsh")
    command = extra.get("launcher_exec")
    if command is None or name is None:
        return
    if is_template(command) and name != "exec":
        raise UsageError(f"--launcher-exec {command!r} is a template (it holds {{host}} or "
                         f"{{command}}): it goes with --launcher exec, not {name}")
    if not is_template(command) and name != "ssh":
        raise UsageError(f"--launcher-exec {command} names the ssh program: it goes with "
                         f"--launcher ssh (a template for --launcher exec holds {{host}} and "
                         "{command})")


def _print(text: str, code: int) -> int:
    sys.stdout.write(text)
    return code
