"""``pmrun``'s full path: a command line run through the event loop and
:class:`pm.head.JobRun` (the same path as ``pm.run``).

:func:`main` runs a command line the quick path (:mod:`pm.quick`) left to it, and
:func:`take_over` a job the quick path started and hands over.  Before the heavy imports,
it starts what can start early (vertex 0's PMIx server, ssh to the first agents:
:func:`pm.bootstrap.early.prestart`); then it picks the loop, and the job runs with
pmrun's signals, srun's ``--prolog``/``--epilog`` and the reports asked for
(``-print-all-exitcodes``, Open MPI's ``--display allocation``, ``--report-pid``...).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

from pm.cli import CliOptions, parse
from pm.cli_nodes import hosts_of, nodes_of, oversubscribed, system_size
from pm.options import internal_error, log_level, refuse
from pm.proto.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from pm.agent.started import StartedRanks
    from pm.job_result import RankResult
    from pm.jobspec import JobSpec


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
                signal.SIGUSR2: job.signal, signal.SIGALRM: job.signal,
                signal.SIGTSTP: job.suspend,
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
        from pm.common.output_writer import ensure_std_fds

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
