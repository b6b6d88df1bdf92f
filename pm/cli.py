"""``pmrun``: the command line.  Parses Hydra-style options into a JobSpec and
runs it through :class:`pm.head.JobRun` (the same path as ``pm.run``)."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from pm.jobspec import AppSpec, JobSpec
from pm.options import (
    Parsed,
    Section,
    internal_error,
    log_level,
    prepend_of,
    refuse,
    slurm_distribution,
)
from pm.options import parse as parse_options
from pm.proto.errors import UsageError
from pm.proto.plan import STDIN_ALL

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from pm.agent.started import StartedRanks
    from pm.common.nodes import Nodes
    from pm.common.rankfile import RankLine
    from pm.head import RankResult

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
        #: False when no -n was given: the hosts' slots decide (nodes_of), as in Hydra/srun.
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
        #: named again an entry again (_where); None: no such list.
        self.host_entries: list[tuple[str, int | None]] | None = None
        #: Hydra's dealing of the ranks to those entries (pm.common.nodes.Nodes.deal).
        self.deal: list[tuple[int, int]] | None = None
        #: Programs with hosts of their own: each one's nodes and slots (_program_hosts).
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


def oversubscribed(size: int, nodes: Nodes) -> str | None:
    """Why ``size`` ranks are more than the slots of ``nodes`` (None: they are not, or a
    host's slots are not known): Open MPI's --nooversubscribe."""
    from pm.bootstrap.base import LOCAL_NAMES

    local = nodes.bootstrap.get("name") in LOCAL_NAMES
    slots = [s if s is not None else len(os.sched_getaffinity(0)) if local else None
             for s in nodes.slots]
    if None in slots:
        return None
    total = sum(s for s in slots if s is not None)
    if size <= total:
        return None
    return (f"{size} ranks but {total} slot{'s' if total != 1 else ''} ("
            + ", ".join(f"{host}: {s}" for host, s in zip(nodes.hosts, slots, strict=True))
            + ")")


def report_pid(where: str) -> None:
    """Open MPI's ``--report-pid``: pmrun's process id on stdout (``-``), stderr (``+``), or
    in a file."""
    line = f"{os.getpid()}\n"
    if where in ("-", "+"):
        stream = sys.stdout if where == "-" else sys.stderr
        stream.write(line)
        stream.flush()
        return
    try:
        with open(where, "w") as f:
            f.write(line)
    except OSError as exc:
        sys.stderr.write(f"pmrun: --report-pid {where}: {exc.strerror}\n")


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
    from pm.bootstrap.slurm_job import job_id, job_info_now

    need = "--signal: a signal before the time limit needs a time limit"
    give = "--timeout SECONDS, -t MINUTES"
    job = job_id()
    if job is None:
        raise UsageError(f"{need} ({give})")
    asked = time.monotonic()
    info = job_info_now(job)
    if info is None:
        raise UsageError(f"{need}: slurmctld did not tell Slurm job {job}'s ({give})")
    left = info.time_left
    if left is None:
        raise UsageError(f"{need}: Slurm job {job} has none (its TimeLimit is UNLIMITED; "
                         f"{give})")
    return float(left), asked


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


def nodes_of(opts: CliOptions) -> object:
    from pm.common.nodes import Nodes

    where = hosts_of(opts)
    if where is None:
        boot = bootstrap_options_of(opts)
        nodes = Nodes.local(opts.local_nodes or 1, opts.fanout)
        nodes.bootstrap.update(boot)
        return nodes
    hosts, slots, boot = where
    return Nodes(hosts, slots, opts.fanout, boot, app_nodes=opts.app_nodes, deal=opts.deal)


def bootstrap_options_of(opts: CliOptions) -> dict[str, object]:
    from pm.bootstrap import bootstrap_options

    try:
        return bootstrap_options(opts.extra)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def hosts_of(opts: CliOptions) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """The job's hosts, their slots and the bootstrap options; None for this machine alone.
    Light (no asyncio, no agent code): it also runs before the heavy imports, to start the
    first agents early (:func:`pm.bootstrap.early.prestart`)."""
    # (The job's hosts from the file, given none: not the allocation's own -m arbitrary.)
    given = None if opts.extra.get("arbitrary") == "SLURM_DISTRIBUTION" else \
        _given_placement(opts)
    if given is not None and not (opts.hosts or opts.hostfile or opts.local_nodes):
        opts.hosts = _rankfile_hosts(given[1])
    where = _first_nodes(opts, _order_nodes(opts, _skip_launch_node(opts, _where(opts))))
    if any(app.hosts for app in opts.spec.apps):
        where = _program_hosts(opts, where)
    if where is not None and not opts.fanout_given and where[2].get("name") == "ssh":
        from pm.bootstrap.ssh import DEFAULT_FANOUT

        opts.fanout = DEFAULT_FANOUT
    if where is not None and not opts.bind_given and where[2].get("name") == "slurm":
        opts.spec.bind_to = slurm_binding(os.environ) or opts.spec.bind_to
    if where is not None and not opts.distribution_given and where[2].get("name") == "slurm":
        opts.spec.distribution = slurm_distribution(os.environ)
        if opts.spec.distribution == "arbitrary":
            opts.extra["arbitrary"] = "SLURM_DISTRIBUTION"
            opts.spec.distribution = "block"
    given = _given_placement(opts)
    if given is not None:
        where = _rankfile(opts, where, *given)
    where = _dealt(opts, where)
    if not opts.n_given and opts.spec.ppn and len(opts.spec.apps) == 1:
        # -ppn P without -n: P ranks on each node, whatever its slots (Hydra's -ppn, Open
        # MPI's --npernode, srun's --ntasks-per-node, Flux's --tasks-per-node).
        nodes = len(where[0]) if where is not None else opts.local_nodes or 1
        opts.spec.apps[0].n = nodes * opts.spec.ppn
        opts.n_given = True
    if where is not None and not opts.n_given and opts.spec.apps and (
            opts.host_entries is not None or all(s is not None for s in where[1])):
        # No -n: one rank per slot the allocation or host list gives, a host of -hosts'
        # or -f's without a count one (Hydra, srun).
        opts.spec.apps[0].n = sum(1 if s is None else s for s in where[1])
    if where is None or where[2].get("name") != "slurm":  # srun's step options
        for key, what in (("exact", "--exact gives a job CPUs of its own within a Slurm "
                                    "allocation"),
                          ("cpu_freq", "--cpu-freq is set by Slurm for the CPUs of a job "
                                       "step"),
                          ("slurm_profile", f"--profile={opts.extra.get('slurm_profile')} is "
                                            "what Slurm's profiling samples of a job step "
                                            "(pmrun's own: --profile FILE, a path such as "
                                            f"./{opts.extra.get('slurm_profile')})"),
                          ("acctg_freq", "--acctg-freq is how often Slurm's accounting "
                                         "samples a job step"),
                          ("slurmd_debug", "--slurmd-debug is the log level of a Slurm "
                                           "job step's slurmstepd")):
            if key in opts.extra and opts.extra[key].lower() != "none":
                raise UsageError(f"{what}: this job's ranks are not started through Slurm")
    if where is not None and where[2].get("name") == "persistent":
        services = where[2].get("services")
        assert isinstance(services, dict)
        unknown = [h for h in dict.fromkeys(where[0]) if h not in services]
        if unknown:
            raise UsageError(f"{', '.join(unknown)}: not in the agents file "
                             f"{opts.extra.get('agents')} (a job runs on its services' hosts: "
                             f"{', '.join(services)})")
        from pm.agent.service import KeyFileError, read_keypair

        try:  # (our key pair is the user's file: named now, before any service is asked)
            read_keypair(str(where[2].get("client_key")))
        except KeyFileError as exc:
            raise UsageError(f"--agents {opts.extra.get('agents')}: client-key: {exc}"
                             ) from None
    return where


@functools.cache
def _rankfile_lines(path: str) -> list[RankLine]:
    """The rankfile's ranks, read once (the job's hosts are found twice: before the heavy
    imports, to start the first agents early, and for the plan)."""
    from pm.common.rankfile import RankfileError, parse
    from pm.options import file_text

    try:
        return parse(file_text(path), f"rankfile {path}")
    except RankfileError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"rankfile {path} cannot be read ({exc})") from None


@functools.cache
def _hostfile_lines(path: str) -> list[RankLine]:
    """srun's ``-m arbitrary``: ``SLURM_HOSTFILE``'s hosts, a rank each, rank 0 first (a
    line a host, or a host list such as ``node[1-2]``; ``#`` comments), read once."""
    from pm.common.hostlist import HostlistError, expand
    from pm.common.rankfile import RankLine
    from pm.options import file_text

    lines: list[RankLine] = []
    try:
        for number, raw in enumerate(file_text(path).splitlines(), 1):
            try:
                hosts = expand(raw.split("#", 1)[0])
            except HostlistError as exc:
                raise UsageError(f"-m arbitrary: SLURM_HOSTFILE {path} line {number}: "
                                 f"{exc}") from None
            lines += [RankLine(h, None, "") for h in hosts]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"-m arbitrary: SLURM_HOSTFILE {path} cannot be read ({exc})"
                         ) from None
    if not lines:
        raise UsageError(f"-m arbitrary: SLURM_HOSTFILE {path} names no host")
    return lines


def _rankmap_lines(opts: CliOptions) -> list[RankLine]:
    """Hydra's ``-rankmap``: each rank's node by its place in the job's nodes; with -n past
    the list's end, the list again from its first node 0 (Hydra's)."""
    from pm.common.rankfile import RankLine, parse_rankmap

    ids, again = parse_rankmap(opts.extra["rankmap"])
    if opts.n_given and again is not None:
        while len(ids) < opts.spec.size:
            ids += ids[again:]
    return [RankLine("", node, "") for node in ids]


def _given_placement(opts: CliOptions) -> tuple[str, list[RankLine]] | None:
    """Each rank's host as a file gives it: Open MPI's rankfile, or srun's ``-m arbitrary``
    and its ``SLURM_HOSTFILE`` (a host a rank); what names it in a refusal, and its ranks."""
    given = [n for n, on in (("--rankfile", "rankfile" in opts.extra),
                             ("-rankmap", "rankmap" in opts.extra),
                             ("-m arbitrary", "arbitrary" in opts.extra)) if on]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]} both place every rank: give one")
    if "rankfile" in opts.extra:
        path = opts.extra["rankfile"]
        return f"--rankfile {path}", _rankfile_lines(path)
    if "rankmap" in opts.extra:
        return f"-rankmap {opts.extra['rankmap']}", _rankmap_lines(opts)
    if not given:
        return None
    path = os.environ.get("SLURM_HOSTFILE", "")
    if not path:
        raise UsageError("-m arbitrary places the ranks on SLURM_HOSTFILE's hosts, a rank a "
                         "line: SLURM_HOSTFILE is not set")
    return f"-m arbitrary (SLURM_HOSTFILE {path})", _hostfile_lines(path)


def _rankfile_hosts(lines: list[RankLine]) -> str | None:
    """The hosts of a rankfile that names them all (no ``+nK``), as a -hosts list, when one
    is another machine: the job's hosts, given none (else this machine, or the
    allocation's)."""
    from pm.common.hostlist import is_this_machine

    named = list(dict.fromkeys(ln.host for ln in lines))
    if any(ln.relative is not None for ln in lines) or all(map(is_this_machine, named)):
        return None
    return ",".join(named)


def _rankfile(opts: CliOptions,
              where: tuple[list[str], list[int | None], dict[str, object]] | None,
              source: str, lines: list[RankLine]
              ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Each rank's node as a file or a list gives it (:func:`_given_placement`: Open MPI's
    rankfile, Hydra's -rankmap, srun's -m arbitrary; ``source`` names it in a refusal):
    ``spec.placement``, indices into the job's hosts, and the cores of a rankfile's
    ``slot=`` (``spec.rank_slots``).  A host named ``+nK`` is the K-th host given (or local node);
    other names are hosts given, or, given none, the job's hosts in the order the file
    first names them.  Without -n the job has as many ranks as the file."""
    from pm.common.hostlist import is_this_machine

    spec = opts.spec
    for given, what in ((spec.ppn is not None, "-ppn"), (spec.rank_by, "--rank-by"),
                        (any(a.hosts for a in spec.apps), "a program's own -host"),
                        (opts.bind_given and any(ln.slot for ln in lines), "--bind-to")):
        if given:
            raise UsageError(f"{source} places every rank: {what} disagrees")
    if not opts.n_given and len(spec.apps) == 1:
        spec.apps[0].n = len(lines)
        opts.n_given = True
    if spec.size > len(lines):
        raise UsageError(f"{source} places {len(lines)} ranks: the job has {spec.size}")
    lines = lines[:spec.size]
    # (This machine's nodes, given no hosts: named by their place alone.)
    hosts = where[0] if where is not None else [f"+n{k}" for k in range(opts.local_nodes or 1)]
    index: dict[str, int] = {}
    for i, host in enumerate(hosts):
        index.setdefault(host, i)
    # (This machine by another of its names: the host given that is it.)
    here = 0 if where is None and len(hosts) == 1 else next(
        (i for i, host in enumerate(hosts) if is_this_machine(host)), None)
    placement: list[int] = []
    for rank, line in enumerate(lines):
        if line.relative is not None:
            node = line.relative
            if node >= len(hosts):
                named = f"node {node}" if source.startswith("-rankmap") else f"+n{node}"
                raise UsageError(f"{source}: rank {rank} is on {named}, the job has "
                                 f"{len(hosts)} host{'s' * (len(hosts) > 1)}")
        elif line.host in index:
            node = index[line.host]
        elif here is not None and is_this_machine(line.host):
            node = here
        else:
            raise UsageError(f"{source}: rank {rank} is on {line.host}, not one of "
                             f"the job's hosts ({', '.join(hosts[:4])}"
                             f"{', ...' if len(hosts) > 4 else ''})")
        placement.append(node)
    spec.placement = placement
    spec.rank_slots = [ln.slot for ln in lines] if any(ln.slot for ln in lines) else []
    return where


def _program_hosts(opts: CliOptions,
                   where: tuple[list[str], list[int | None], dict[str, object]] | None
                   ) -> tuple[list[str], list[int | None], dict[str, object]]:
    """Programs with hosts of their own (``-host`` after the first program, Open MPI's
    ``--host`` of an app context): the job's nodes are every program's hosts, in the order
    they first come (a program without its own has the job's: -hosts before the first
    program, the allocation's, or this machine); each program's ranks go to its own
    (``opts.app_nodes``): in blocks by their slots, a host without a count an even share
    (Open MPI's); those of a program without its own dealt to the job's -hosts list as
    Hydra deals them (:func:`_dealt`).  A host's slots are what the programs give it,
    together."""
    from pm.bootstrap import bootstrap_options
    from pm.common.hostlist import HostlistError, parse_hosts_option

    if "nodes" in opts.extra or opts.local_nodes:
        raise UsageError("a program's own -host and -N or --local-nodes do not go together")
    default: list[tuple[str, int | None]] = (
        list(zip(where[0], where[1], strict=True)) if where is not None
        else [(socket.gethostname(), None)])
    # (A program without hosts of its own: the job's -hosts list, dealt as the job's.)
    default_dealt: list[tuple[str, int | None]] = (
        [*_hydra_entries(opts, where[0])] if where is not None and _deals(opts)
        else default)
    hosts: list[str] = []
    slots: list[int | None] = []
    opts.app_nodes = []
    for app in opts.spec.apps:
        try:
            entries = ([(e.host, e.slots) for e in parse_hosts_option(app.hosts)]
                       if app.hosts else default)
        except HostlistError as exc:
            raise UsageError(f"-host {app.hosts}: {exc}") from None
        for host, count in entries:
            if host in hosts:
                i = hosts.index(host)
                have = slots[i]
                slots[i] = None if have is None or count is None else have + count
            else:
                hosts.append(host)
                slots.append(count)
        dealt = entries if app.hosts else default_dealt
        mine: tuple[list[int], list[int | None]] = (
            [hosts.index(host) for host, _ in dealt], [count for _, count in dealt])
        opts.app_nodes.append(mine)
    if where is not None and set(hosts) <= set(where[0]):
        return hosts, slots, where[2]  # (the allocation's, or -hosts' own launcher)
    try:
        return hosts, slots, bootstrap_options(opts.extra, hosts)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def _first_nodes(opts: CliOptions,
                 where: tuple[list[str], list[int | None], dict[str, object]] | None
                 ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """``--relative R``: the hosts from the R-th on (srun's); ``-N K`` (``--nodes``): the
    first K of the hosts (srun's and Flux's meaning), ``-n``
    ranks spread over them in blocks as srun lays out a step (:func:`step_counts`: 7 ranks
    on 3 equal nodes are 3, 2 and 2; 4 on nodes of 4 and 1 slots are 3 and 1); with
    ``-ppn P`` and no ``-n``, P on each (:func:`hosts_of` counts them, as without -N).
    Fewer hosts, or fewer ranks than K, is refused: a node without ranks is not what -N
    asks for."""
    if "relative" in opts.extra:  # srun's --relative N: the nodes from the N-th on
        r = int(opts.extra["relative"])
        if where is None:
            raise UsageError(f"--relative {r}: this machine is the only host (give -hosts "
                             "or -f, or run inside an allocation)")
        if r >= len(where[0]):
            raise UsageError(f"--relative {r}: there are {len(where[0])} hosts, counted from "
                             "0")
        where = where[0][r:], where[1][r:], where[2]
    if "nodes" not in opts.extra:
        return where
    k = int(opts.extra["nodes"])
    if where is None:
        have = opts.local_nodes or 1
        if k > have:
            raise UsageError(f"-N {k}: {have} local nodes (--local-nodes)" if opts.local_nodes
                             else f"-N {k}: this machine is the only host (give -hosts or -f, "
                             "or run inside an allocation)")
        if opts.local_nodes:
            opts.local_nodes = k
    else:
        hosts, slots, boot = where
        if k > len(hosts):
            raise UsageError(f"-N {k}: there are {len(hosts)} hosts ({', '.join(hosts[:4])}"
                             f"{', ...' if len(hosts) > 4 else ''})")
        where = hosts[:k], slots[:k], boot
    apps = opts.spec.apps
    if where is not None and not opts.n_given and not opts.spec.ppn:
        # A rank per slot (hosts_of), a host without a count one (srun -N K: K tasks).
        where = where[0], [1 if s is None else s for s in where[1]], where[2]
    per_node = bool(opts.spec.ppn) and not opts.n_given and len(apps) == 1
    if not per_node and (where is None or opts.n_given) and apps:  # (per_node: hosts_of)
        n = sum(a.n for a in apps)
        if n < k:
            raise UsageError(f"-N {k}: {n} ranks cannot fill {k} nodes")
        if where is not None and not opts.spec.ppn:
            from pm.common.mapping import step_counts

            counts: list[int | None] = [*step_counts(n, where[1])]
            where = where[0], counts, where[2]
    return where


def slurm_binding(env: Mapping[str, str]) -> str | None:
    """The ``--bind-to`` that srun would apply in this allocation, or None (pure).

    With ``-c N`` (``SLURM_CPUS_PER_TASK``) srun binds each task to N cpus of what the
    job has on the node; pmrun does the same unless told otherwise (``hwthread:N``: N
    neighbouring hardware threads, a Slurm cpu being one).  The agents only ever see
    the cpus the allocation grants on their node (the step's cgroup and affinity), so
    the ranks stay within them.
    """
    text = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if not text.isdecimal() or int(text) < 1:
        return None
    return "hwthread" if int(text) == 1 else f"hwthread:{int(text)}"


def _order_nodes(opts: CliOptions,
                 where: tuple[list[str], list[int | None], dict[str, object]] | None
                 ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Hydra's ``-order-nodes ASCENDING`` (``DESCENDING``): the hosts by their slots, fewest
    (most) first, hosts with as many in their order; a host without a count has one."""
    order = opts.extra.get("order_nodes")
    if order is None or where is None:
        return where
    hosts, slots, boot = where
    ranked = sorted(range(len(hosts)), key=lambda i: slots[i] or 1,
                    reverse=order == "descending")
    return [hosts[i] for i in ranked], [slots[i] for i in ranked], boot


def _skip_launch_node(opts: CliOptions,
                      where: tuple[list[str], list[int | None], dict[str, object]] | None
                      ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Hydra's ``-skip-launch-node`` (Open MPI's ``--nolocal``): the hosts but this machine
    (a batch job's first node, a login node in the host file)."""
    if "skip_launch" not in opts.extra:
        return where
    from pm.common.hostlist import is_this_machine

    what = "no ranks on this machine (-skip-launch-node, --nolocal)"
    if where is None:
        raise UsageError(f"{what}, but it is the only host (give -hosts or -f, or run inside "
                         "an allocation)")
    kept = [i for i, host in enumerate(where[0]) if not is_this_machine(host)]
    if not kept:
        raise UsageError(f"{what}, but every host given is this machine")
    return [where[0][i] for i in kept], [where[1][i] for i in kept], where[2]


def _where(opts: CliOptions) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    from pm.bootstrap import bootstrap_options, default_hosts
    from pm.bootstrap.base import LOCAL_NAMES

    entries = None
    try:
        if opts.hosts or opts.hostfile:
            from pm.common.hostlist import merged, parse_hostfile, parse_hosts_option
            from pm.options import file_text

            if opts.hostfile:
                listed = parse_hostfile(file_text(opts.hostfile), merge=False)
            else:
                listed = parse_hosts_option(opts.hosts or "", merge=False)
            entries = merged(listed)
        # Hosts that are other machines are reached over ssh unless told otherwise.
        boot = bootstrap_options(opts.extra, [e.host for e in entries] if entries else False)
        given = None if entries is not None else default_hosts(boot)
        if entries is not None and boot["name"] != "slurm":
            # (Nodes of the allocation we run in, as srun -w: placed as srun's.)
            opts.host_entries = [(e.host, e.slots) for e in listed]
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if given is not None:
        if opts.local_nodes:
            raise UsageError(f"--local-nodes and --launcher {boot['name']} do not go together")
        return [h for h, _ in given], [s for _, s in given], boot
    if entries is not None:
        if opts.local_nodes:
            raise UsageError("--local-nodes and -hosts/-f do not go together")
        return [e.host for e in entries], [e.slots for e in entries], boot
    if boot["name"] not in LOCAL_NAMES:
        raise UsageError(f"--launcher {boot['name']} needs hosts (-hosts or -f)")
    return None


def _placed_otherwise(opts: CliOptions) -> bool:
    """Whether an option places the ranks, not Hydra's dealing to a host list's entries:
    -ppn, -m (--distribution), --map-by, a rankfile (-rankmap, -m arbitrary), -N."""
    return bool(opts.spec.ppn or opts.distribution_given or opts.map_by_given
                or opts.spec.placement or "nodes" in opts.extra)


def _deals(opts: CliOptions) -> bool:
    """Whether the job's ranks are dealt to its -hosts' or -f's entries as Hydra deals
    them (:func:`_dealt`): nothing places them otherwise (an allocation's
    SLURM_DISTRIBUTION neither)."""
    return (opts.host_entries is not None and not _placed_otherwise(opts)
            and opts.spec.distribution == "block")


def _hydra_entries(opts: CliOptions, kept: list[str]) -> list[tuple[str, int]]:
    """The entries of -hosts' or -f's list as Hydra deals ranks to them: in order, a
    count not given 1, a host named again right after itself one entry (Hydra's), those
    of the ``kept`` hosts (-skip-launch-node, --relative), in -order-nodes' order."""
    assert opts.host_entries is not None
    out: list[tuple[str, int]] = []
    for host, count in opts.host_entries:
        if out and out[-1][0] == host:
            out[-1] = (host, out[-1][1] + (count or 1))
        else:
            out.append((host, count or 1))
    keep = set(kept)
    out = [e for e in out if e[0] in keep]
    order = opts.extra.get("order_nodes")
    if order is not None:
        out.sort(key=lambda e: e[1], reverse=order == "descending")
    return out


def _dealt(opts: CliOptions,
           where: tuple[list[str], list[int | None], dict[str, object]] | None
           ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Hydra's placement for hosts given with -hosts or -f (HYDRA_HOST_FILE): every
    entry of the list has its count (1 when none is given) and the ranks are dealt to the
    entries in order, each taking its count, round and round; a host named twice is one
    node (one agent) with two entries (``opts.deal``).  The hosts in the order the
    entries first name them (where the ranks go first)."""
    opts.deal = None
    if where is None or opts.app_nodes is not None or not _deals(opts):
        return where
    entries = _hydra_entries(opts, where[0])
    hosts = list(dict.fromkeys(host for host, _ in entries))
    if hosts != where[0]:  # (-order-nodes, a host named again: by its entries' order)
        given = dict(zip(where[0], where[1], strict=True))
        where = hosts, [given[h] for h in hosts], where[2]
    index = {host: i for i, host in enumerate(hosts)}
    opts.deal = [(index[host], count) for host, count in entries]
    return where


def system_size(slots: list[int | None], bootstrap: dict[str, object]) -> int:
    """-usize SYSTEM: the slots of the nodes (Hydra: their cores); a node given without
    slots counts this machine's cpus if it is this machine, else 1."""
    from pm.bootstrap.base import LOCAL_NAMES

    here = len(os.sched_getaffinity(0)) if bootstrap.get("name") in LOCAL_NAMES else 1
    return sum(s if s is not None else here for s in slots)


def exit_codes(ranks: Mapping[int, RankResult], node_of_rank: list[int], hosts: list[str]
               ) -> str:
    """-print-all-exitcodes: every rank's exit status (128+N for signal N, - for one that
    never started: the job was killed before its node could start it, most often before
    its agent joined the tree), one line per node as Hydra prints them."""
    per_node: dict[int, list[str]] = {}
    for rank, node in enumerate(node_of_rank):
        r = ranks.get(rank)
        code = "-" if r is None else str(128 + r.signal if r.signal else r.code)
        per_node.setdefault(node, []).append(code)
    return "".join(f"pmrun: exit codes [{hosts[node]}] {','.join(codes)}\n"
                   for node, codes in sorted(per_node.items()))


def _collect_from_now_on() -> None:
    """Imports are done: keep their objects out of every collection, collect again."""
    import gc

    gc.freeze()
    gc.enable()


def _tasks(opts: CliOptions) -> bool:
    """Whether the command line runs an ensemble (``--tasks FILE``, ``CMD ::: ARGS``)."""
    return "tasks" in opts.extra or "tasks_line" in opts.extra


async def _run_hook(prog: str, spec: JobSpec) -> str:
    """srun's ``--prolog``/``--epilog`` PROG: run here with the job's command (its first
    program's words) as arguments and pmrun's environment and descriptors; '' when it
    succeeded, else how it failed, its status the last word (a signal's as 128+N, 127
    when it cannot run)."""
    import asyncio
    import subprocess

    argv = [prog, *spec.apps[0].argv] if spec.apps else [prog]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"cannot run ({exc.strerror or exc}): status 127"
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        raise
    return f"failed with status {128 - code if code < 0 else code}" if code else ""


async def _main(opts: CliOptions, started: StartedRanks | None = None) -> int:
    import asyncio
    import signal

    if "topology" in opts.extra or "number_of" in opts.extra:
        from pm.agent.topology import discover_async, summary

        topo = await discover_async()
        count = {"threads": len(topo.pus), "cores": len(topo.cores),
                 "sockets": len(topo.packages)}.get(opts.extra.get("number_of", ""))
        sys.stdout.write(f"{summary(topo) if count is None else count}\n")
        return 0
    if "onall" in opts.extra:  # GNU parallel's --onall, --nonall: a run per host
        from pm.ensemble.onall import run_onall

        return await run_onall(opts)
    if _tasks(opts):
        from pm.ensemble.cli import run_cli

        return await run_cli(opts)

    from pm.common.nodes import Nodes
    from pm.common.output import stdin_for_job
    from pm.head import JobRun

    _collect_from_now_on()
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    if "usize_system" in opts.extra:
        opts.spec.universe_size = system_size(nodes.slots, nodes.bootstrap)
    sim = None
    if "sim_ranks" in opts.extra:
        from pm.agent.sim import sim_job

        try:
            sim = sim_job(opts.spec, len(nodes.hosts), opts.extra)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    stdin = None if opts.extra.get("stdin") == "none" or opts.spec.stdin_file else \
        stdin_for_job()
    job = JobRun(opts.spec, nodes, stdin=stdin, verbose=opts.verbose > 0, sim=sim,
                 started=started)
    refused = job.refusal() if sim is None else None
    if refused is not None:  # (as the quick path refuses it)
        from pm.agent.spawn import EXIT_NOT_STARTED

        sys.stderr.write(f"pmrun: {refused}\n")
        return EXIT_NOT_STARTED
    if "display_allocation" in opts.extra:  # Open MPI's --display allocation
        from pm.bootstrap.base import LOCAL_NAMES

        here = len(os.sched_getaffinity(0))
        local = nodes.bootstrap.get("name") in LOCAL_NAMES
        sys.stderr.write("".join(
            f"pmrun: allocation: node {i} ({host}): "
            + (f"{slots} slots" if slots is not None else f"{here} slots (its CPU threads)"
               if local else "no slot count given") + "\n"
            for i, (host, slots) in enumerate(zip(nodes.hosts, nodes.slots, strict=True))))
    if "print_rank_map" in opts.extra and started is None:  # (else the quick path said it)
        from pm.common.output import rank_map

        sys.stderr.write(rank_map(job.node_of_rank, job.plan.hosts))
    if "no_oversubscribe" in opts.extra:  # Open MPI's --nooversubscribe
        why = oversubscribed(opts.spec.size, nodes)
        if why is not None:
            from pm.agent.spawn import EXIT_NOT_STARTED

            sys.stderr.write(f"pmrun: --nooversubscribe: {why}\n")
            return EXIT_NOT_STARTED
    if "do_not_launch" in opts.extra:  # Open MPI's: checked and laid out, nothing started
        if job.writer is not None:
            job.writer.close()
        return 0
    if "report_pid" in opts.extra:  # Open MPI's
        report_pid(str(opts.extra["report_pid"]))
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGINT: job.interrupt, signal.SIGTERM: job.interrupt,
                signal.SIGHUP: job.interrupt, signal.SIGQUIT: job.interrupt,
                signal.SIGUSR1: job.signal,
                signal.SIGUSR2: job.signal, signal.SIGTSTP: job.suspend,
                signal.SIGCONT: job.signal}
    if opts.spec.pty:  # srun's --pty: a new size of pmrun's terminal is rank 0's too
        handlers[signal.SIGWINCH] = job.resized
    for num in str(opts.extra.get("forward_signals", "")).split(","):
        if num:  # (Open MPI's --forward-signals: more of them; those above keep their part)
            handlers.setdefault(signal.Signals(int(num)), job.signal)
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler, sig)
    from pm.quick import noted_signals

    # What reached pmrun before the loop had its signals (in the quick phase, or while the
    # full path imported): the job acts on them once its launch is under way (JobRun).
    for signum in started.pending_signals() if started is not None else noted_signals():
        handlers[signal.Signals(signum)](signum)
    prolog = opts.extra.get("srun_prolog")
    if prolog:  # srun's --prolog: before anything starts, here
        failed = await _run_hook(str(prolog), opts.spec)
        if failed:
            sys.stderr.write(f"pmrun: --prolog {prolog} {failed}: the job is not started\n")
            if job.writer is not None:
                job.writer.close()
            return int(failed.rsplit(" ", 1)[1])
    with _raw_terminal(opts.spec.pty):
        await job.start()
        result = await job.wait()
    epilog = opts.extra.get("srun_epilog")
    if epilog:  # srun's --epilog: once the job has ended, here; its status is not the job's
        failed = await _run_hook(str(epilog), opts.spec)
        if failed:
            sys.stderr.write(f"pmrun: --epilog {epilog} {failed}\n")
    if "print_all_exitcodes" in opts.extra:
        sys.stderr.write(exit_codes(result.ranks, job.node_of_rank, job.plan.hosts))
    if sim is not None:
        from pm.agent.sim import phase_report, summary_line

        sys.stdout.write(summary_line(result.stats.get("sim"), job.plan.size,
                                      len(job.plan.hosts)) + "\n")
        sys.stdout.flush()
        if opts.verbose:
            sys.stderr.write(phase_report(result.stats.get("sim")))
    if opts.verbose:
        import logging

        kb = result.stats.get("kvs_bytes") or {}
        assert isinstance(kb, dict)
        # [bytes the agent keeps, bytes in the node's shared-memory KVS] per node.
        logging.getLogger("pm").info("KVS bytes per node: %s", ", ".join(
            f"node {k}: {v[0]} in the agent + {v[1]} in shared memory"
            for k, v in sorted(kb.items(), key=lambda kv: int(kv[0]))))
    return result.returncode


@contextlib.contextmanager
def _raw_terminal(pty: bool) -> Iterator[None]:
    """srun's --pty: pmrun's stdin, if it is a terminal, raw while the job runs (its keys
    go to rank 0's terminal as they are, as ssh -t does), as it was after."""
    import termios

    try:
        saved = termios.tcgetattr(0) if pty and os.isatty(0) else None
    except termios.error:
        saved = None
    if saved is None:
        yield
        return
    import logging
    import tty

    tty.setraw(0, termios.TCSADRAIN)
    # pmrun's own lines meanwhile: a raw terminal does not return the carriage at a new line.
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    for h in handlers:
        h.terminator = "\r\n"
    try:
        yield
    finally:
        for h in handlers:
            h.terminator = "\n"
        with contextlib.suppress(termios.error):
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pmrun``; given no ``argv`` (run as a program) it ends the process."""
    import gc

    if argv is None:
        from pm.common.output import ensure_std_fds

        ensure_std_fds()  # pmrun's own descriptors (pm.quick does this for its path)
    # Start-up allocates only long-lived objects (modules, classes): collecting
    # them is wasted time.  _main freezes them and turns the collector back on.
    gc.disable()
    try:
        code = _run(argv)
    finally:
        gc.enable()
    if argv is None:
        # Skip the interpreter's teardown (freeing every module and object, ~10 ms):
        # the job is over and everything it held is closed; only buffers remain.
        _flush_all()
        os._exit(code)
    return code


def _flush_all() -> None:
    import logging

    if "pm.agent.links" in sys.modules:  # (zmq was used)
        from pm.agent.links import flush

        flush()
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def take_over(argv: list[str], started: StartedRanks) -> int:
    """The full path for a job pmrun's quick path started (:mod:`pm.quick`): its ranks are
    running, the in-process agent takes them over, and the job goes on as if started here."""
    code = _run(argv, started)
    _flush_all()
    return code


def _run(argv: list[str] | None, started: StartedRanks | None = None) -> int:
    import logging

    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse(args)
        if opts.spec.apps:
            opts.spec.validate()
            if opts.spec.bcast is not None:  # srun's --bcast: read now, refused in one line
                from pm.common.bcast import programs_of

                opts.spec.bcast_files = programs_of(opts.spec)
    except UsageError as exc:
        return refuse(exc)
    except Exception as exc:  # JobSpecError, HostlistError: the user's input
        from pm.proto.errors import PMError

        if isinstance(exc, PMError):
            return refuse(exc)
        raise
    logging.basicConfig(format="pmrun: %(message)s", level=log_level(opts.verbose))
    if "semaphore" in opts.extra:  # GNU parallel's sem: no job, one command under a lock
        from pm.ensemble.semaphore import run as semaphore

        try:
            return semaphore(opts.extra)
        except UsageError as exc:
            return refuse(exc)
    if opts.spec.apps and not _tasks(opts) and "do_not_launch" not in opts.extra and not (
            opts.hosts or opts.hostfile or opts.local_nodes or "launcher" in opts.extra
            or os.environ.get("SLURM_JOB_ID")):
        from pm.agent.pmix_server import prestart as pmix_prestart  # vertex 0 runs here

        pmix_prestart(opts.spec.mpi, [a.argv for a in opts.spec.apps])
    from pm.agent.spawn import raise_fd_limit

    raise_fd_limit()
    relay = False
    if (started is None and "sim_ranks" not in opts.extra and not _tasks(opts)
            and "do_not_launch" not in opts.extra):
        try:
            where = hosts_of(opts)
        except UsageError as exc:
            return refuse(exc)
        if where is not None:
            from pm.bootstrap.base import head_relays
            from pm.bootstrap.early import prestart

            # ssh to the first agents now: the connection is made while we import.
            prestart(where[0], where[1], where[2], opts.spec, opts.fanout, opts.app_nodes,
                     opts.deal)
            relay = head_relays(where[2])
    from collections.abc import Callable, Coroutine
    from typing import Any

    run: Callable[[Coroutine[Any, Any, int]], int]
    if relay or started is not None:
        # asyncio's own loop starts 9 ms of CPU cheaper than uvloop (which imports ssl, as
        # asyncio does when it can: pmrun never speaks TLS), and here that is on the job's
        # way: the nodes are other hosts (this process serves no rank, only relays the
        # tree's messages), or the quick phase hands its job over at a request it cannot
        # serve, whose rank waits for the hand-over (measured at a spawn, before the quick
        # phase carried spawns out itself: 97 -> 90 ms).
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
        import asyncio

        run = asyncio.run
    else:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            import asyncio

            run = asyncio.run
    from pm.proto.errors import PMError

    try:
        from pm.agent.owned import checked

        return int(run(checked(_main(opts, started))))
    except UsageError as exc:
        return refuse(exc)
    except PMError as exc:  # a layer's own failure, said where it happened: one line
        sys.stderr.write(f"pmrun: {exc}\n")
        return 255
    except Exception as exc:  # a defect of pmrun's: one line (-v: the traceback too)
        return internal_error(exc, opts.verbose > 0)


if __name__ == "__main__":
    sys.exit(main())
