"""The cases of the fault matrix (``bench/faults.py``): what each does and expects."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._fault_harness import (
    Lines,
    Run,
    fd_count,
    listening_ports,
    pmrun_argv,
    rank_argv,
    rss_kb,
    run,
)
from bench._util import ROOT

sys.path.insert(0, str(ROOT / "tests"))

READY = r"READY (\d+) (\d+)"


@dataclass
class Case:
    name: str
    what: str
    once: Callable[[Any], Run]
    expect_rc: frozenset[int] | None = None
    cause: str | None = None
    forbidden: str | None = None
    setup: Callable[[ExitStack], Any] | None = None
    ci: bool = True
    notes: list[str] = field(default_factory=list)


def _go() -> str:
    return os.path.join(tempfile.gettempdir(), f"pmfault-go-{os.getpid()}-{time.time_ns()}")


def mpi(mode: str, arg: str = "", *opts: str) -> Callable[[Any], Run]:
    def once(ctx: Any) -> Run:
        return run(pmrun_argv("-n", "3", "--local-nodes", "3", *opts, *rank_argv(mode, arg)))
    return once


def one_node_exit(ctx: Any) -> Run:
    return run(pmrun_argv("-n", "2", *rank_argv("exit", "7")))


def waiting(harm: Callable[[subprocess.Popen[bytes], dict[int, int], Run], None],
            *opts: str, nodes: int = 3, argv_of: Callable[[str], list[str]] | None = None,
            settle: float = 10.0) -> Callable[[Any], Run]:
    """Ranks that say READY and wait; ``harm(proc, agent_of_rank, run)`` once all are ready."""
    def once(ctx: Any) -> Run:
        go = _go()

        def action(proc: subprocess.Popen[bytes], out: Lines, res: Run) -> None:
            got = out.wait_for(READY, nodes, 60)
            if len(got) < nodes:
                res.extra["action_error"] = f"{len(got)} of {nodes} ranks ready"
                Path(go).touch()
                return
            agents = {int(m[1]): int(m[2]) for m in got}
            harm(proc, agents, res)
            Path(go).touch()  # whatever is left of the job may end

        argv = (argv_of(go) if argv_of is not None else
                pmrun_argv("-n", str(nodes), "--local-nodes", str(nodes), *opts,
                           *rank_argv("wait", go)))
        try:
            return run(argv, action=action, settle=settle)
        finally:
            with_suppress_unlink(go)
    return once


def with_suppress_unlink(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


def kill_pmrun(sig: int) -> Callable[[subprocess.Popen[bytes], dict[int, int], Run], None]:
    def harm(proc: subprocess.Popen[bytes], agents: dict[int, int], res: Run) -> None:
        os.kill(proc.pid, sig)
    return harm


def agent(sig: int) -> Callable[[subprocess.Popen[bytes], dict[int, int], Run], None]:
    def harm(proc: subprocess.Popen[bytes], agents: dict[int, int], res: Run) -> None:
        pid = agents[max(agents)]
        os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            res.extra["stopped"] = pid
    return harm


# ---------------------------------------------------------------- namespace hosts
def netns_setup(stack: ExitStack) -> Any:
    from netns_util import NetnsHosts, netns_missing

    why = netns_missing()
    if why:
        raise RuntimeError(why)
    return stack.enter_context(NetnsHosts(3))


def ns_mpi(mode: str, arg: str = "") -> Callable[[Any], Run]:
    """An MPI fault on 3 namespace hosts (one agent each, the exec launcher)."""
    def once(ctx: Any) -> Run:
        from netns_util import exec_launcher_args

        return run(pmrun_argv("-n", "3", *exec_launcher_args(ctx), *rank_argv(mode, arg)))
    return once


def ns_waiting(harm: Callable[[subprocess.Popen[bytes], dict[int, int], Run], None],
               *opts: str) -> Callable[[Any], Run]:
    """Ranks waiting on 3 namespace hosts; ``harm`` once all are ready."""
    def once(ctx: Any) -> Run:
        from netns_util import exec_launcher_args

        def argv_of(go: str) -> list[str]:
            return pmrun_argv("-n", "3", *exec_launcher_args(ctx), *opts,
                              *rank_argv("wait", go))
        return waiting(harm, argv_of=argv_of)(ctx)
    return once


def link_down(ctx: Any) -> Run:
    from netns_util import exec_launcher_args

    hosts = ctx

    def harm(proc: subprocess.Popen[bytes], agents: dict[int, int], res: Run) -> None:
        hosts.link_down(2)

    def argv_of(go: str) -> list[str]:
        return pmrun_argv("-n", "3", *exec_launcher_args(hosts), "--heartbeat", "2",
                          *rank_argv("wait", go))
    try:
        return waiting(harm, argv_of=argv_of)(ctx)
    finally:
        subprocess.run(["ip", "link", "set", hosts.veth(2), "up"], check=False, timeout=30)


# ---------------------------------------------------------------- malformed input
def _pmi1_lines(rng: random.Random, draw: Callable[[], Any]) -> bytes:
    from hypothesis import strategies as st

    word = st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                 exclude_characters="= \n"), min_size=0, max_size=40)
    cmds = ["init", "get_maxes", "get_my_kvsname", "put", "get", "barrier_in", "get_appnum",
            "get_universe_size", "abort", "finalize", "spawn", "publish_name", "lookup_name"]
    line = st.one_of(
        st.builds(lambda c, kv: "cmd=" + c + "".join(f" {k}={v}" for k, v in kv) + "\n",
                  st.sampled_from(cmds), st.lists(st.tuples(word, word), max_size=6)),
        st.builds(lambda b: b.decode("latin-1") + "\n", st.binary(max_size=300)),
        st.just("mcmd=spawn\n"), st.just("endcmd\n"),
        st.builds(lambda n: "cmd=put key=k value=" + "v" * n + "\n", st.integers(0, 70000)),
    )
    lines = draw_many((line, FUZZ[0]))
    return "".join(lines).encode("latin-1")


def _pmi2_frames(rng: random.Random, draw: Callable[[], Any]) -> bytes:
    from hypothesis import strategies as st

    word = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters=";"),
                   max_size=30)
    cmds = ["fullinit", "job-getid", "kvs-put", "kvs-get", "kvs-fence", "info-getnodeattr",
            "info-putnodeattr", "info-getjobattr", "abort", "finalize", "spawn", "name-publish"]
    body = st.one_of(
        st.builds(lambda c, kv: f"cmd={c};" + "".join(f"{k}={v};" for k, v in kv),
                  st.sampled_from(cmds), st.lists(st.tuples(word, word), max_size=6)),
        st.builds(lambda b: b.decode("latin-1"), st.binary(max_size=200)))
    frames = draw_many((st.tuples(body, st.integers(-3, 3), st.booleans()), FUZZ[0]))
    out = f"{len(b'cmd=init;pmi_version=2;'):<6}".encode() + b"cmd=init;pmi_version=2;"
    for text, skew, bad_len in frames:
        data = text.encode("latin-1")
        n = max(0, len(data) + skew)
        head = (f"{n:<6}" if not bad_len else f"{n:06x}")[:6].encode()
        out += head + data
    return out


def _native_frames(rng: random.Random, draw: Callable[[], Any]) -> bytes:
    import msgpack
    from hypothesis import strategies as st

    from pm.proto.native import MAGIC

    leaf = st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=40), st.text(max_size=20),
                     st.none(), st.booleans(), st.floats(allow_nan=False))
    ops = st.sampled_from(["init", "put", "get", "fence", "barrier", "allgather", "ring",
                           "abort", "finalize", "reserve", "spawn", "nope"])
    req = st.one_of(
        st.builds(lambda i, op, args: [i, op, *args], st.one_of(st.integers(-5, 2**40), leaf,
                                                                st.lists(leaf, max_size=2)),
                  ops, st.lists(st.recursive(leaf, lambda c: st.lists(c, max_size=3),
                                             max_leaves=5), max_size=4)),
        st.recursive(leaf, lambda c: st.lists(c, max_size=3), max_leaves=6))
    msgs = draw_many((st.tuples(req, st.integers(-2, 2)), FUZZ[0]))
    out = bytearray(MAGIC)
    for m, skew in msgs:
        data = msgpack.packb(m)
        out += struct.pack(">I", max(0, len(data) + skew)) + data
    return bytes(out)


def draw_many(strategy: Any) -> list[Any]:
    """Hypothesis's examples of ``strategy`` (a list strategy: its elements' strategy is
    run as many times as the list would hold), a fresh random search each call: the
    fuzz input of one run."""
    from hypothesis import HealthCheck, Phase, given, settings

    element, count = strategy
    out: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(element)
    def collect(x: Any) -> None:
        out.append(x)

    collect()
    return out


#: Examples hypothesis draws per run (lines or frames); ``bench.faults --fuzz N``.
FUZZ = [350]
GARBAGE = {"pmi1": _pmi1_lines, "pmi2": _pmi2_frames, "native": _native_frames}
#: Lines (PMI-1) or frames (PMI-2, native) sent so far, by wire.
SENT: dict[str, int] = {k: 0 for k in GARBAGE}


def malformed(wire: str) -> Callable[[Any], Run]:
    def once(ctx: Any) -> Run:
        rng = random.Random()
        data = GARBAGE[wire](rng, lambda: None)
        SENT[wire] += data.count(b"\n") if wire == "pmi1" else FUZZ[0]
        with tempfile.NamedTemporaryFile(prefix="pmfault-", suffix=f".{wire}",
                                         delete=False) as f:
            f.write(data)
        try:
            return run(pmrun_argv("-n", "2", "--local-nodes", "2",
                                  *rank_argv("garbage", f.name)), timeout=60)
        finally:
            os.unlink(f.name)
    return once


# ---------------------------------------------------------------- strangers
def _attack(port: int) -> None:
    """Junk, a NULL-mechanism greeting with a 400 MB frame, a CURVE greeting likewise."""
    for mech in (None, b"NULL", b"CURVE"):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if mech is None:
                    s.sendall(os.urandom(1 << 16))
                    continue
                s.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + mech.ljust(20, b"\0")
                          + bytes(32))
                s.sendall(b"\x06" + (400 << 20).to_bytes(8, "big"))
                chunk = bytes(1 << 20)
                for _ in range(64):
                    s.sendall(chunk)
        except OSError:
            continue  # refused and closed on us: what should happen


def strangers(ctx: Any) -> Run:
    def harm(proc: subprocess.Popen[bytes], agents: dict[int, int], res: Run) -> None:
        pids = [proc.pid, *set(agents.values())]
        before = {p: rss_kb(p) for p in pids}
        ports = listening_ports(pids)
        threads = [threading.Thread(target=_attack, args=(p,)) for p in ports]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        res.extra["ports"] = len(ports)
        res.extra["rss_growth_kb"] = max((rss_kb(p) - before[p] for p in pids), default=0)
    return waiting(harm)(ctx)


# ---------------------------------------------------------------- persistent agents
def services_setup(stack: ExitStack) -> Any:
    from netns_util import NetnsHosts, netns_missing
    from test_persistent import start_services, stop_services

    why = netns_missing()
    if why:
        raise RuntimeError(why)
    hosts = stack.enter_context(NetnsHosts(2))
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pmfault-svc-")))
    svc = start_services(hosts, tmp)
    stack.callback(stop_services, svc)
    pids = [p.pid for p in svc.procs]
    # The service's own process (ip netns exec execs it: same pid).
    svc.start_figures = {p: (rss_kb(p), fd_count(p)) for p in pids}
    return svc


def persistent_job(ctx: Any) -> Run:
    svc = ctx
    res = run(pmrun_argv("--agents", str(svc.agents_file), "--iface", svc.hosts.bridge_addr,
                         "-n", "2", "true"), timeout=60, cwd=str(svc.dir))
    deadline = time.monotonic() + 10
    while svc.job_agents() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the namespaces against a deadline
    res.leftovers += [f"job agent {p} in {ns}" for ns, ps in svc.job_agents().items()
                      for p in ps]
    res.extra["service"] = {p.pid: (rss_kb(p.pid), fd_count(p.pid)) for p in svc.procs}
    res.extra["service_start"] = svc.start_figures
    return res


# ---------------------------------------------------------------- concurrency, I/O
def concurrent(ctx: Any) -> Run:
    """Six jobs at once; the run's figures are the worst of the six."""
    results: list[Run] = []

    def one() -> None:
        results.append(run(pmrun_argv("-n", "2", "--local-nodes", "2",
                                      *rank_argv("hello")), settle=5))
    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    worst = Run(rc=0)
    for r in results:
        worst.hung |= r.hung
        if r.rc != 0:
            worst.rc = r.rc
        worst.err += r.err
        worst.out += r.out
        worst.peak_kb = max(worst.peak_kb, r.peak_kb)
        worst.leftovers += r.leftovers
        worst.files += r.files
    if len(results) < 6 or sum(r.out.count("hello ") for r in results) != 12:
        worst.rc = worst.rc or 99  # a job lost or its output short
    return worst


SLOW_READER = ("import os, sys, time\n"
               "end = time.monotonic() + 3\n"
               "while time.monotonic() < end:\n"
               "    os.read(0, 65536); time.sleep(0.01)\n")


def flood(ctx: Any) -> Run:
    return _flood(["yes"])


def flood_python(ctx: Any) -> Run:
    return _flood(rank_argv("flood"))


def flood_1(ctx: Any) -> Run:
    return _flood(["yes"], ())


def _flood(prog: list[str], nodes: tuple[str, ...] = ("--local-nodes", "2")) -> Run:
    cmd = (" ".join(pmrun_argv("-n", "4", *nodes, *prog))
           + f" | {sys.executable} -c '{SLOW_READER}'; exit ${{PIPESTATUS[0]}}")
    return run(["bash", "-c", cmd], stdout=subprocess.DEVNULL, timeout=90)


STDIN_BYTES = 100 << 20


@contextmanager
def _big_file(size: int) -> Iterator[str]:
    with tempfile.NamedTemporaryFile(prefix="pmfault-stdin-", delete=False) as f:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(block)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


def stdin_setup(stack: ExitStack) -> Any:
    return stack.enter_context(_big_file(STDIN_BYTES))


def stdin_file(ctx: Any, nodes: tuple[str, ...] = ("--local-nodes", "2")) -> Run:
    with open(ctx, "rb") as f:
        res = run(pmrun_argv("-n", "1", *nodes, *rank_argv("stdin")), stdin=f)
    if res.out.strip() != str(STDIN_BYTES):
        res.rc = res.rc or 98
        res.extra["short"] = res.out.strip()
    return res


def stdin_pipe(ctx: Any, nodes: tuple[str, ...] = ("--local-nodes", "2")) -> Run:
    def feed(proc: subprocess.Popen[bytes], out: Lines, res: Run) -> None:
        assert proc.stdin is not None

        def write() -> None:
            try:
                with open(ctx, "rb") as f, proc.stdin as w:  # type: ignore[union-attr]
                    while chunk := f.read(1 << 20):
                        w.write(chunk)
            except OSError as exc:
                res.extra["stdin_error"] = repr(exc)
        threading.Thread(target=write, daemon=True).start()

    res = run(pmrun_argv("-n", "1", *nodes, *rank_argv("stdin")),
              stdin=subprocess.PIPE, action=feed)
    if res.out.strip() != str(STDIN_BYTES):
        res.rc = res.rc or 98
        res.extra["short"] = res.out.strip()
    return res


def stdin_file_1(ctx: Any) -> Run:
    return stdin_file(ctx, ())


def stdin_pipe_1(ctx: Any) -> Run:
    return stdin_pipe(ctx, ())


def one_node_spawn(ctx: Any) -> Run:
    return run(pmrun_argv("-n", "1", *rank_argv("spawn-exit", "7")))


def one_node(mode: str, arg: str = "") -> Callable[[Any], Run]:
    def once(ctx: Any) -> Run:
        return run(pmrun_argv("-n", "2", *rank_argv(mode, arg)))
    return once


SIG = r"rank 2 \(node 2, [^)]*\) "
CASES: list[Case] = [
    Case("rank-exit", "rank 2 of 3 (3 nodes) exits 7 after MPI_Init", mpi("exit", "7"),
         frozenset({7}), SIG + "exited with code 7"),
    Case("rank-exit-1-node", "rank 1 of 2 (one node, quick path) exits 7",
         one_node_exit, frozenset({7}), r"rank 1 .*exited with code 7", ci=False),
    Case("rank-abort-1-node", "rank 1 of 2 (one node) calls MPI_Abort(5)",
         one_node("abort", "5"), frozenset({5}), r"rank 1 .*called abort with code 5", ci=False),
    Case("rank-exit-ns", "rank 2 of 3 on 3 namespace hosts exits 7 after MPI_Init",
         ns_mpi("exit", "7"), frozenset({7}), r"rank 2 .*exited with code 7",
         setup=netns_setup, ci=False),
    Case("rank-signal", "rank 2 of 3 kills itself with SIGSEGV", mpi("signal", "11"),
         frozenset({139}), SIG + "killed by SIGSEGV", ci=False),
    Case("rank-abort", "rank 2 of 3 calls MPI_Abort(5)", mpi("abort", "5"),
         frozenset({5}), SIG + "called abort with code 5"),
    Case("pmi-close", "rank 2 of 3 closes its PMI fd after MPI_Init and lives on",
         mpi("pmi-close"), frozenset({1}), SIG + "closed its PMI connection before finalize",
         ci=False),
    Case("pmrun-sigkill", "pmrun killed with SIGKILL while 3 ranks on 3 nodes wait",
         waiting(kill_pmrun(signal.SIGKILL)), frozenset({-9}), None),
    Case("pmrun-sigterm", "SIGTERM to pmrun while ranks wait", waiting(kill_pmrun(
        signal.SIGTERM)), frozenset({143}), r"SIGTERM", ci=False),
    Case("pmrun-sigint", "SIGINT to pmrun while ranks wait", waiting(kill_pmrun(
        signal.SIGINT)), frozenset({130}), r"SIGINT"),
    Case("agent-sigkill", "node 2's agent killed with SIGKILL", waiting(agent(signal.SIGKILL)),
         frozenset({255}), r"node 2 .*lost"),
    Case("agent-sigkill-ns", "node 2's agent (3 namespace hosts) killed with SIGKILL",
         ns_waiting(agent(signal.SIGKILL)), frozenset({255}), r"node 2 .*lost",
         setup=netns_setup, ci=False),
    Case("pmrun-sigkill-ns", "pmrun killed with SIGKILL while ranks on 3 namespace hosts wait",
         ns_waiting(kill_pmrun(signal.SIGKILL)), frozenset({-9}), None, setup=netns_setup,
         ci=False),
    Case("pmrun-sigkill-1-node", "pmrun killed with SIGKILL while 2 ranks on one node wait",
         waiting(kill_pmrun(signal.SIGKILL), nodes=2, argv_of=lambda go: pmrun_argv(
             "-n", "2", *rank_argv("wait", go))), frozenset({-9}), None, ci=False),
    Case("pmrun-sigint-1-node", "SIGINT to pmrun while 2 ranks on one node wait",
         waiting(kill_pmrun(signal.SIGINT), nodes=2, argv_of=lambda go: pmrun_argv(
             "-n", "2", *rank_argv("wait", go))), frozenset({130}), r"SIGINT", ci=False),
    Case("spawn-exit-1-node", "a spawned rank (one node: the quick phase spawned it) exits 7",
         one_node_spawn, frozenset({7}), r"rank 1 of spawned job 1 .*exited with code 7",
         ci=False),
    Case("spawn-sigkill-1-node", "pmrun killed with SIGKILL while a one-node job and the 2 "
         "ranks it spawned wait",
         waiting(kill_pmrun(signal.SIGKILL), nodes=3, argv_of=lambda go: pmrun_argv(
             "-n", "1", *rank_argv("spawn-wait", go))), frozenset({-9}), None, ci=False),
    Case("spawn-sigint-1-node", "SIGINT to pmrun while a one-node job and the 2 ranks it "
         "spawned wait",
         waiting(kill_pmrun(signal.SIGINT), nodes=3, argv_of=lambda go: pmrun_argv(
             "-n", "1", *rank_argv("spawn-wait", go))), frozenset({130}), r"SIGINT", ci=False),
    Case("agent-sigstop", "node 2's agent stopped (SIGSTOP), --heartbeat 2",
         waiting(agent(signal.SIGSTOP), "--heartbeat", "2"), frozenset({255}),
         r"node 2 .*lost", ci=False),
    Case("link-down", "namespace host 3's link cut (3 hosts, --heartbeat 2)", link_down,
         frozenset({255}), r"node 2 .*lost", setup=netns_setup, ci=False),
    Case("malformed-pmi1", "a rank sends hypothesis-made PMI-1 lines",
         malformed("pmi1"), None, None),
    Case("malformed-pmi2", "a rank sends hypothesis-made PMI-2 frames",
         malformed("pmi2"), None, None),
    Case("malformed-native", "a rank sends hypothesis-made native frames",
         malformed("native"), None, None),
    Case("strangers", "junk, 400 MB frames (NULL and CURVE greetings) on every tree port, "
         "then the job goes on", strangers, frozenset({0}), None),
    Case("persistent-seq", "sequential jobs through pm-agent services on 2 namespace hosts",
         persistent_job, frozenset({0}), None, setup=services_setup, ci=False),
    Case("concurrent", "6 jobs at once, 2 ranks on 2 nodes each (a run = 6 jobs)", concurrent,
         frozenset({0}), None, ci=False),
    Case("flood", "4 ranks of `yes` on 2 nodes; reader slow for 3 s, then closes",
         flood, frozenset({141}), None, forbidden=r"lost"),
    Case("flood-1-node", "4 ranks of `yes` on one node; reader slow for 3 s, then closes",
         flood_1, frozenset({141}), None, forbidden=r"lost", ci=False),
    Case("flood-python", "the same with Python ranks (they ignore SIGPIPE)",
         flood_python, frozenset({141}), None, forbidden=r"lost", ci=False),
    Case("stdin-file", "100 MB stdin from a file to rank 0 (2 nodes)", stdin_file,
         frozenset({0}), None, setup=stdin_setup),
    Case("stdin-pipe", "100 MB stdin from a pipe to rank 0 (2 nodes)", stdin_pipe,
         frozenset({0}), None, setup=stdin_setup, ci=False),
    Case("stdin-file-1-node", "100 MB stdin from a file to rank 0 (one node)", stdin_file_1,
         frozenset({0}), None, setup=stdin_setup, ci=False),
    Case("stdin-pipe-1-node", "100 MB stdin from a pipe to rank 0 (one node)", stdin_pipe_1,
         frozenset({0}), None, setup=stdin_setup, ci=False),
]
