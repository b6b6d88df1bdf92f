"""``pmrun``: the command line.  Parses Hydra-style options into a JobSpec and
runs it through :class:`pm.head.JobRun` (the same path as ``pm.run``)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pm.jobspec import AppSpec, JobSpec

if TYPE_CHECKING:
    from pm.quick import QuickStart

USAGE = """\
usage: pmrun [options] prog [args...] [: [options] prog2 [args...] ...]

Start the ranks of a parallel job through a tree of node agents and serve them
PMI (PMI-1 and PMI-2 wire protocols for unmodified MPICH and Intel MPI, and
pmrun's own protocol for Python ranks using pm.client).

Ranks and placement:
  -n, -np N               number of ranks of the program (default 1)
  -ppn N                  ranks per node (fills each node with N ranks, then wraps)
  -hosts H1,H2[:SLOTS]    hosts to run on; node[01-04] ranges are expanded
  -f, --hostfile FILE     hosts from FILE ("host", "host:4" or "host slots=4" per line)
  --local-nodes N         run N node agents on this machine, each acting as a separate
                          node with its own KVS (to try and test the tree on one host)
  --fanout K              width of the agent tree (default 32)

Environment:
  -genv NAME VALUE        set NAME=VALUE for every rank
  -env NAME VALUE         set NAME=VALUE for this program's ranks (MPMD section)
  -genvall                pass the whole environment on (default)
  -genvnone               pass nothing but -genv/-env (and PATH, HOME, USER, LANG, TERM)
  -genvlist A,B           pass only these variables
  -wdir DIR               working directory of the ranks

Multiple hosts:
  --launcher NAME         how agents start on hosts: local, ssh, slurm, exec, persistent
  --launcher-exec TMPL    exec launcher template, e.g. 'ip netns exec {host} {command}'
  --ssh CMD, --user USER  ssh command and remote user for the ssh launcher
  --ssh-limit N           at most N ssh connections starting at once (default 32)
  --agents FILE           use running pm-agent services listed in FILE (host:port per line)
  --iface ADDR|NAME       address or interface agents listen on for their children
  --join-timeout S        give up when a node has not joined after S seconds (default 60)
  --heartbeat S           a node silent for S seconds is lost (default 5)

Binding and topology:
  --bind-to TARGET        none, hwthread, core, l3cache, numa, package, user:0,1+2
  --map-by TARGET         slot, core, numa, package
  --report-bindings       print each rank's cpus
  --topology              print this node's topology as the agent sees it, and exit

Task ensembles (memory-controlled):
  --tasks FILE            run one command per line of FILE over the nodes
  --mem-per-task SIZE     memory reserved for each task (e.g. 2G); a line may say [mem=SIZE]
  --mem-high SIZE|PCT     stop admitting work above this node memory use (default 90%)
  --mem-low SIZE|PCT      resume admitting below this (default 80%)
  --retries N             rerun a failed task up to N times
  --mem-overrun ACTION    warn (default), kill or suspend a task over its declared size
  --mem-settle S|off      shrink a task's reservation to its measured peak once that peak
                          held S seconds (default 1); off: reservations only grow
  (--mem-high, --mem-low and --mem-overrun also govern ranks' pmi.reserve blocks)

Start-up analysis:
  --profile FILE          write a Chrome trace of the start-up timeline to FILE
  --sim-ranks-per-node R  emulate R ranks per agent in-process (scale tests; no program):
                          put an address, exchange it, get a few peers' addresses, check
  --sim-value-size B      bytes of each simulated address (default 64)
  --sim-exchange KIND     allgather (default) or fence
  --sim-gets LIST         peers each simulated rank gets from: left,right,leader (default), far

Output and control:
  -l, --label             prefix every output line with [rank]
  --output PATTERN        write the ranks' stdout to files: %r (or %t) is the rank, %j the
                          job id, %% a percent sign; without %r all ranks share the file
                          (Hydra's -outfile-pattern)
  --error PATTERN         the same for their stderr (-errfile-pattern)
  --timeout SECONDS       kill the job after SECONDS (exit status 124); also MPIEXEC_TIMEOUT
  --kvs shm|socket        how ranks using pm.client read the node's KVS (default shm)
  -v, --verbose           say what pmrun does (twice: debug)
  --version               print the version and exit
  -h, --help              show this help and exit

pmrun reads from its own environment:
  MPIEXEC_TIMEOUT=S       as --timeout S
  PM_QUICK=0              start even a one-node job through the agent, not the quick path
  (a rank's environment: see -genv*; PM_TOPOLOGY_SHARE=0 there stops sharing the topology)

Exit status: 0 if every rank exited 0; else the status of the first rank that failed
(128+N for signal N, the code given to MPI_Abort); 124 on --timeout; 255 when pmrun
itself could not run the job (a node was lost, an agent failed to start).
Ctrl-C is forwarded to every rank; a second Ctrl-C kills the job at once. Ctrl-Z stops
every rank and pmrun; fg or bg continues them.
"""


class UsageError(Exception):
    pass


@dataclass(slots=True)
class CliOptions:
    spec: JobSpec
    hosts: str | None = None
    hostfile: str | None = None
    local_nodes: int | None = None
    fanout: int = 32
    verbose: int = 0
    extra: dict[str, str] = field(default_factory=dict)


_GLOBAL_VALUE = {
    "-ppn": "ppn", "-hosts": "hosts", "-host": "hosts", "-f": "hostfile", "-hostfile": "hostfile",
    "--hostfile": "hostfile", "--local-nodes": "local_nodes", "--fanout": "fanout",
    "--timeout": "timeout", "-timeout": "timeout", "--kvs": "kvs", "-genvlist": "genvlist",
    "--output": "output", "-outfile-pattern": "output", "--error": "error",
    "-errfile-pattern": "error",
    "--bind-to": "bind_to", "-bind-to": "bind_to", "--map-by": "map_by", "-map-by": "map_by",
    "--profile": "profile", "--launcher": "launcher", "-launcher": "launcher",
    "--launcher-exec": "launcher_exec", "-launcher-exec": "launcher_exec",
    "--ssh": "ssh", "--user": "user", "--iface": "iface", "-iface": "iface",
    "--agents": "agents", "--ssh-limit": "ssh_limit", "--join-timeout": "join_timeout",
    "--heartbeat": "heartbeat",
    "--tasks": "tasks", "--mem-per-task": "mem_per_task", "--mem-high": "mem_high",
    "--mem-low": "mem_low", "--retries": "retries", "--mem-overrun": "mem_overrun",
    "--mem-settle": "mem_settle",
    "--sim-ranks-per-node": "sim_ranks", "--sim-value-size": "sim_value_size",
    "--sim-exchange": "sim_exchange", "--sim-gets": "sim_gets",
}
_FLAGS = {
    "-l": "label", "--label": "label", "-prepend-rank": "label", "-genvall": "genvall",
    "-genvnone": "genvnone", "-v": "verbose", "--verbose": "verbose", "-verbose": "verbose",
    "--report-bindings": "report_bindings", "--topology": "topology",
}


def _int(text: str, opt: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{opt} takes a whole number, not {text!r}") from None
    if value < minimum:
        raise UsageError(f"{opt} must be at least {minimum}")
    return value


def parse(argv: list[str]) -> CliOptions:
    """argv (without the program name) -> options. Raises UsageError."""
    spec = JobSpec(apps=[])
    opts = CliOptions(spec)
    i = 0
    app = AppSpec([])

    def value(opt: str) -> str:
        nonlocal i
        if i + 1 >= len(argv):
            raise UsageError(f"{opt} needs a value")
        i += 1
        return argv[i]

    while i < len(argv):
        arg = argv[i]
        if arg == ":":
            raise UsageError("':' must follow a program")
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not arg.startswith("-") or arg == "-":
            # The program and its arguments, up to a ':' section separator.
            j = i
            while j < len(argv) and argv[j] != ":":
                j += 1
            app.argv = argv[i:j]
            spec.apps.append(app)
            app = AppSpec([])
            i = j + 1
            if j < len(argv) and j + 1 >= len(argv):
                raise UsageError("nothing after ':'")
            continue
        get = functools.partial(_inline, inline) if eq else value
        if name in ("-h", "--help", "-help"):
            raise SystemExit(_print(USAGE, 0))
        if name in ("--version", "-version"):
            from pm import __version__

            raise SystemExit(_print(f"pmrun {__version__}\n", 0))
        if name in ("-n", "-np", "--np"):
            app.n = _int(get(name), name)
        elif name in ("-genv", "-env"):
            var = get(name)
            val = value(name)
            (spec.genv if name == "-genv" else app.env)[var] = val
        elif name in ("-wdir", "--wdir", "-dir"):
            w = get(name)
            if not os.path.isdir(w):
                raise UsageError(f"-wdir {w}: no such directory")
            app.wdir = os.path.abspath(w)
        elif name in _FLAGS:
            key = _FLAGS[name]
            if key == "label":
                spec.label = True
            elif key == "genvall":
                spec.env_mode = "all"
            elif key == "genvnone":
                spec.env_mode = "none"
            elif key == "verbose":
                opts.verbose += 1
            elif key == "report_bindings":
                spec.report_bindings = True
            else:
                opts.extra[key] = "1"
        elif name in _GLOBAL_VALUE:
            key, val = _GLOBAL_VALUE[name], get(name)
            if key == "ppn":
                spec.ppn = _int(val, name)
            elif key == "hosts":
                opts.hosts = val
            elif key == "hostfile":
                opts.hostfile = val
            elif key == "local_nodes":
                opts.local_nodes = _int(val, name)
            elif key == "fanout":
                opts.fanout = _int(val, name)
            elif key == "timeout":
                try:
                    spec.timeout = float(val)
                except ValueError:
                    raise UsageError(f"{name} takes seconds, not {val!r}") from None
            elif key == "kvs":
                spec.kvs = val
            elif key == "genvlist":
                spec.env_mode = "list"
                spec.genvlist = [v for v in val.split(",") if v]
            elif key == "bind_to":
                spec.bind_to = val
            elif key == "map_by":
                spec.map_by = val
            elif key == "profile":
                spec.profile = val
            elif key in ("output", "error"):
                from pm.output import pattern_problem

                problem = pattern_problem(name, val)
                if problem:
                    raise UsageError(problem)
                setattr(spec, key, val)
            else:
                opts.extra[key] = val
        else:
            raise UsageError(f"unknown option {arg} (see pmrun --help)")
        i += 1
    if "sim_ranks" in opts.extra:
        from pm.agent.sim import sim_settings

        if spec.apps:
            raise UsageError("--sim-ranks-per-node emulates the ranks: give no program")
        try:
            sim_settings(opts.extra)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if not spec.apps and not ({"tasks", "topology", "sim_ranks"} & opts.extra.keys()):
        raise UsageError("no program given (see pmrun --help)")
    if spec.timeout is None and os.environ.get("MPIEXEC_TIMEOUT"):
        spec.timeout = float(os.environ["MPIEXEC_TIMEOUT"])
    # Memory watermarks also govern the ranks' reserve blocks: they travel in the plan.
    spec.mem_high = opts.extra.get("mem_high")
    spec.mem_low = opts.extra.get("mem_low")
    spec.mem_overrun = opts.extra.get("mem_overrun", "warn")
    return opts


def _print(text: str, code: int) -> int:
    sys.stdout.write(text)
    return code


def nodes_of(opts: CliOptions) -> object:
    from pm.bootstrap.base import LOCAL_NAMES, bootstrap_options, default_hosts
    from pm.head import Nodes

    try:
        boot = bootstrap_options(opts.extra, bool(opts.hosts or opts.hostfile))
        given = None if (opts.hosts or opts.hostfile) else default_hosts(boot)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if given is not None:
        if opts.local_nodes:
            raise UsageError(f"--local-nodes and --launcher {boot['name']} do not go together")
        return Nodes([h for h, _ in given], [s for _, s in given], opts.fanout, boot)
    if opts.hosts or opts.hostfile:
        from pm.hostlist import parse_hostfile, parse_hosts_option

        if opts.hostfile:
            with open(opts.hostfile) as f:
                entries = parse_hostfile(f.read())
        else:
            entries = parse_hosts_option(opts.hosts or "")
        if opts.local_nodes:
            raise UsageError("--local-nodes and -hosts/-f do not go together")
        return Nodes([e.host for e in entries], [e.slots for e in entries], opts.fanout, boot)
    if boot["name"] not in LOCAL_NAMES:
        raise UsageError(f"--launcher {boot['name']} needs hosts (-hosts or -f)")
    nodes = Nodes.local(opts.local_nodes or 1, opts.fanout)
    nodes.bootstrap.update(boot)
    return nodes


def _collect_from_now_on() -> None:
    """Imports are done: keep their objects out of every collection, collect again."""
    import gc

    gc.freeze()
    gc.enable()


async def _main(opts: CliOptions, started: QuickStart | None = None) -> int:
    import asyncio
    import signal

    if "topology" in opts.extra:
        from pm.agent.topology import discover_async, summary

        sys.stdout.write(summary(await discover_async()) + "\n")
        return 0
    if "tasks" in opts.extra:
        from pm.ensemble_cli import run_cli

        return await run_cli(opts)

    from pm.head import JobRun, Nodes
    from pm.output import stdin_for_job

    _collect_from_now_on()
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    sim = None
    if "sim_ranks" in opts.extra:
        from pm.agent.sim import sim_job

        sim = sim_job(opts.spec, len(nodes.hosts), opts.extra)
    job = JobRun(opts.spec, nodes, stdin=stdin_for_job(), verbose=opts.verbose > 0, sim=sim,
                 started=started)
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGINT: job.interrupt, signal.SIGTERM: job.interrupt,
                signal.SIGHUP: job.interrupt, signal.SIGUSR1: job.signal,
                signal.SIGUSR2: job.signal, signal.SIGTSTP: job.suspend,
                signal.SIGCONT: job.signal}
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler, sig)
    await job.start()
    if started is not None:
        # What reached pmrun before the loop's handlers were in place.
        for signum in started.pending_signals():
            handlers[signal.Signals(signum)](signum)
    result = await job.wait()
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


def _inline(text: str, _option: str) -> str:
    """The value given as ``--option=value``."""
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pmrun``; given no ``argv`` (run as a program) it ends the process."""
    import gc

    if argv is None:
        from pm.output import ensure_std_fds

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

    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def take_over(started: QuickStart) -> int:
    """The full path for a job pmrun's quick path started (:mod:`pm.quick`): its ranks are
    running, the in-process agent takes them over, and the job goes on as if started here."""
    code = _run(started.argv, started)
    _flush_all()
    return code


def _run(argv: list[str] | None, started: QuickStart | None = None) -> int:
    import logging

    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse(args)
        if opts.spec.apps:
            opts.spec.validate()
    except UsageError as exc:
        sys.stderr.write(f"pmrun: {exc}\n")
        return 2
    except Exception as exc:  # JobSpecError, HostlistError: the user's input
        from pm.proto.errors import PMError

        if isinstance(exc, PMError):
            sys.stderr.write(f"pmrun: {exc}\n")
            return 2
        raise
    level = logging.WARNING if not opts.verbose else (
        logging.INFO if opts.verbose == 1 else logging.DEBUG)
    logging.basicConfig(format="pmrun: %(message)s", level=level)
    from pm.agent.spawn import raise_fd_limit

    raise_fd_limit()
    try:
        import uvloop

        return int(uvloop.run(_main(opts, started)))
    except ImportError:
        import asyncio

        return int(asyncio.run(_main(opts, started)))
    except UsageError as exc:
        sys.stderr.write(f"pmrun: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
