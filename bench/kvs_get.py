"""Get latency and KVS memory per node: shared-memory KVS against the socket; the wire.

    python -m bench.kvs_get [--quick] [--part wire|latency|memory] [--runs R]
        [--ranks 1,8,32] [--modes hydra,pmi1,...] [--duration S] [--baseline PMRUN]

pmrun is the checkout installed as a user installs it (``pip install .`` into
``bench/out/release``, :func:`bench._util.release_install`), and the ranks run
that install's interpreter under both launchers.  ``--ranks``, ``--modes`` and
``--runs`` measure some points only: printed, the results file left as the
full run wrote it.  ``--baseline PMRUN`` adds, interleaved with the rest, the
PMI-1 and native columns of another pmrun (an install of an earlier commit) as
``base_pmi1`` and ``base_native``: before and after in one window.

1. *Get latency seen by a Python rank.*  1, 8 and 32 ranks on one node put a
   64-byte value each, fence, then all get at once, round-robin over every
   rank's key, for a fixed time (``pm.client.sync``'s ``get``; each call timed
   alone with ``perf_counter_ns``, the clock's own cost removed).  A rank
   reports its median; a run's figure is the median over its ranks; the table
   gives the median (min-max) over runs, ``--kvs shm`` and ``--kvs socket``
   interleaved.  The first get of each key (the table probe before the
   reader's cache has it) is reported apart.
2. *The PMI wire against Hydra.*  One raw PMI-1 client (Python: ``sendall``
   of the request line, ``readline`` of the reply, nothing else) runs under
   pmrun and under the MPICH wheel's Hydra ``mpiexec``, alternately: every
   rank puts a 64-byte value, ``barrier_in``, then all ranks get round-robin
   over every rank's key for a fixed time, each call timed alone (under pmrun
   served by the quick phase, and again with ``PM_QUICK=0`` by the asyncio
   agent).  Beside it, under pmrun only: the same loop on the native protocol
   with a raw client (one msgpack frame out, one in) and through
   ``pm.client.sync`` over the socket (``--kvs socket``).  Figures as in 1.
3. *KVS memory per node.*  R = 1..32 ranks on one node share a KVS of a fixed
   size S (each puts S/R bytes), then every rank takes hold of every value:
   with shm as zero-copy views into the node's segment
   (``pm.client.shmkvs.ShmKVSReader.get_view``), with the socket as the bytes
   ``get`` returns.  Measured: the growth of PSS (``/proc/PID/smaps_rollup``,
   shared pages divided among their users) of every rank plus the agent's
   process, from before the puts to when every value is held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._util import interleaved, machine, median_range, release_install, tool, write_section

MIB = 1 << 20
#: The wire part's contenders (--modes).
MODES = ("hydra", "pmi1", "pmi1_agent", "native", "client")
#: The release install's python (release_install) and the pmrun script beside it, set by
#: main(); the ranks run the same interpreter.
_PYTHON: list[Path] = []


def pmrun() -> list[str]:
    """argv prefix of the release install's ``pmrun`` script (as a user runs it)."""
    return [str(_PYTHON[0].parent / "pmrun")]


def python() -> str:
    return str(_PYTHON[0]) if _PYTHON else sys.executable

LATENCY_RANK = r'''
import json, os, statistics, sys, time
from pm.client.sync import connect

clock = time.perf_counter_ns
duration = float(sys.argv[1])
with connect() as pmi:
    r, n = pmi.rank, pmi.size
    pmi.put("addr", b"%064d" % r)
    pmi.fence()
    overhead = []
    for _ in range(5000):
        t0 = clock()
        overhead.append(clock() - t0)
    ov = statistics.median(overhead)
    get = pmi.get
    first, rest = [], []
    pmi.barrier()  # everyone starts getting at once
    end = time.monotonic() + duration
    i = 0
    while True:
        src = i % n
        t0 = clock()
        get("addr", rank=src)
        dt = clock() - t0 - ov
        (first if i < n else rest).append(dt)
        i += 1
        if not i & 63 and time.monotonic() > end:
            break
    pmi.barrier()
    print("RESULT " + json.dumps(dict(rank=r, first=statistics.median(first),
                                      median=statistics.median(rest), gets=i,
                                      shm=pmi.info.get("shm") is not None)), flush=True)
'''

WIRE_RANK = r'''
import json, os, socket, statistics, sys, time

clock = time.perf_counter_ns
mode, duration = sys.argv[1], float(sys.argv[2])
r, n = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
value = b"%064d" % r
if mode == "client":  # pm.client.sync over the socket
    from pm.client.sync import connect

    pmi = connect()
    pmi.put("addr", value)
    pmi.fence()
    def get(src, _get=pmi.get):
        _get("addr", rank=src)
    def barrier():
        pmi.barrier()
else:
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    send, recv = sock.sendall, sock.recv
    if mode == "pmi1":
        reader = sock.makefile("rb")
        readline = reader.readline
        def ask(line):
            send(line)
            return readline()
        ask(b"cmd=init pmi_version=1 pmi_subversion=1\n")
        kvs = ask(b"cmd=get_my_kvsname\n").split(b"kvsname=")[1].strip()
        ask(b"cmd=put kvsname=%s key=addr%d value=%s\n" % (kvs, r, value))
        ask(b"cmd=barrier_in\n")
        lines = [b"cmd=get kvsname=%s key=addr%d\n" % (kvs, i) for i in range(n)]
        def get(src):
            send(lines[src])
            if not readline().startswith(b"cmd=get_result rc=0"):
                raise SystemExit("get failed")
        def barrier():
            ask(b"cmd=barrier_in\n")
    else:  # raw native frames
        import msgpack
        from pm.proto import native

        unpackb = msgpack.unpackb
        def ask(*req):
            send(native.pack(list(req)))
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                buf += recv(65536)
            return unpackb(buf[4:])
        send(native.MAGIC)
        ask(0, "init")
        ask(1, "put", b"addr", value)
        ask(2, "fence")
        frames = [native.pack([3, "get", b"addr", i]) for i in range(n)]
        def get(src):
            send(frames[src])
            buf = recv(65536)
            while len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                buf += recv(65536)
        def barrier():
            ask(4, "barrier")
overhead = []
for _ in range(5000):
    t0 = clock()
    overhead.append(clock() - t0)
ov = statistics.median(overhead)
times = []
barrier()  # everyone starts getting at once
end = time.monotonic() + duration
i = 0
while True:
    t0 = clock()
    get(i % n)
    times.append(clock() - t0 - ov)
    i += 1
    if not i & 63 and time.monotonic() > end:
        break
barrier()
if mode == "pmi1":
    ask(b"cmd=finalize\n")
elif mode == "native":
    ask(5, "finalize")
else:
    pmi.close()
print("RESULT " + json.dumps(dict(rank=r, median=statistics.median(times[n:]), gets=i,
                                  shm=False)), flush=True)
'''

MEMORY_RANK = r'''
import json, os, sys
from pm.client.sync import connect
from pm.client.shmkvs import ShmKVSReader
from pm.proto import native

def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss line")

total = int(sys.argv[1])
with connect() as pmi:
    r, n = pmi.rank, pmi.size
    lead = pmi.local_rank == 0
    agent = os.getppid()
    value = os.urandom(total // n)
    pmi.barrier()
    before = pss_kib("self")
    agent_before = pss_kib(agent) if lead else 0
    pmi.barrier()
    pmi.put("blob", value)
    pmi.fence()
    name = pmi.info.get("shm")
    if name:
        reader = ShmKVSReader(name)
        held = [reader.get_view(native.rank_key(i, b"blob")) for i in range(n)]
    else:
        held = [pmi.get("blob", rank=i) for i in range(n)]
    assert sum(len(v) for v in held) == n * (total // n)
    pmi.barrier()
    after = pss_kib("self")
    agent_after = pss_kib(agent) if lead else 0
    pmi.barrier()  # every value still held while the others measure
    print("RESULT " + json.dumps(dict(rank=r, delta=after - before,
                                      agent_delta=agent_after - agent_before,
                                      shm=name is not None)), flush=True)
'''


def results(stdout: str) -> list[dict[str, float]]:
    # Found anywhere, not per line: Hydra's mpiexec may write one rank's line and its
    # newline in two pieces, with another rank's line in between (seen at 8 ranks).
    return [json.loads(m) for m in re.findall(r"RESULT (\{[^{}\n]*\})", stdout)]


def run_job(prog: Path, n: int, kvs: str, *args: str, launcher: Sequence[str] = (),
            env: dict[str, str] | None = None, cpu: int | None = None
            ) -> list[dict[str, float]]:
    """``cpu``: the launcher, and so everything it starts, on that CPU only."""
    argv = [*(launcher or [*pmrun(), "--kvs", kvs]), "-n", str(n), python(), str(prog), *args]
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env} if env else None, preexec_fn=pin)
    got = results(p.stdout)
    if p.returncode != 0 or len(got) != n:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode} with {len(got)} results:\n"
                           f"{p.stderr[-2000:]}")
    if any(bool(g["shm"]) != (kvs == "shm") for g in got):
        raise RuntimeError(f"--kvs {kvs}: a rank saw the wrong KVS path")
    return got


def latency(prog: Path, counts: Sequence[int], runs: int, duration: float
            ) -> dict[int, dict[str, list[float]]]:
    out: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        firsts: dict[str, list[float]] = {"shm": [], "socket": []}
        gets: dict[str, list[float]] = {"shm": [], "socket": []}

        def one(kvs: str, n: int = n, firsts: dict[str, list[float]] = firsts,
                gets: dict[str, list[float]] = gets) -> Callable[[], float]:
            def go() -> float:
                got = run_job(prog, n, kvs, str(duration))
                firsts[kvs].append(statistics.median(g["first"] for g in got))
                gets[kvs].append(sum(g["gets"] for g in got))
                return statistics.median(g["median"] for g in got)
            return go

        med = interleaved({"shm": one("shm"), "socket": one("socket")}, runs, warmup=0)
        out[n] = {"shm": med["shm"], "socket": med["socket"], "shm_first": firsts["shm"],
                  "socket_first": firsts["socket"], "shm_gets": gets["shm"],
                  "socket_gets": gets["socket"]}
        print(f"latency n={n}: shm {median_range(med['shm'], '{:.0f}')} ns, "
              f"socket {median_range(med['socket'], '{:.0f}')} ns", file=sys.stderr, flush=True)
    return out


def wire(prog: Path, counts: Sequence[int], runs: int, duration: float,
         modes: Sequence[str] = MODES, baseline: str | None = None
         ) -> dict[int, dict[str, list[float]]]:
    hydra = [tool("mpiexec")]
    out: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        def one(mode: str, launcher: Sequence[str] = (), n: int = n,
                env: dict[str, str] | None = None, cpu: int | None = None
                ) -> Callable[[], float]:
            def go() -> float:
                got = run_job(prog, n, "socket", mode, str(duration), launcher=launcher,
                              env=env, cpu=cpu)
                return statistics.median(g["median"] for g in got)
            return go

        def contenders(cpu: int | None = None, tag: str = ""
                       ) -> dict[str, Callable[[], float]]:
            return {"hydra" + tag: one("pmi1", hydra, cpu=cpu), "pmi1" + tag: one("pmi1", cpu=cpu),
                    "pmi1_agent" + tag: one("pmi1", env={"PM_QUICK": "0"}, cpu=cpu),
                    "native" + tag: one("native", cpu=cpu), "client" + tag: one("client", cpu=cpu)}

        every = contenders()
        if n == 1:
            # One rank: the launcher's side and the rank's either share a CPU or wake
            # each other across the two (a 15-30 us idle exit on this VM), as the
            # scheduler places them, run by run.  On CPU 0 both, for every contender:
            # what the protocols and servers cost, without the placement's lottery.
            every.update(contenders(0, "_cpu0"))
        todo = {k: v for k, v in every.items() if k.removesuffix("_cpu0") in modes}
        if baseline:
            base = [baseline, "--kvs", "socket"]
            todo["base_pmi1"] = one("pmi1", base)
            todo["base_native"] = one("native", base)
        out[n] = interleaved(todo, runs, warmup=0)
        print(f"wire n={n}: " + ", ".join(f"{k} {median_range(v, '{:.0f}')} ns"
                                          for k, v in out[n].items()),
              file=sys.stderr, flush=True)
    return out


def wire_section(res: dict[int, dict[str, list[float]]], runs: int, duration: float) -> str:
    md = ["## The PMI wire: one get round trip, pmrun vs Hydra", "",
          f"{machine()}; {runs} run(s) per point, the contenders interleaved; each run's "
          f"figure is the median over its ranks of each rank's median call, all ranks "
          f"getting round-robin from every rank's 64-byte value for {duration:g} s at "
          "once; medians (min-max) over runs.  Same raw PMI-1 client (Python "
          "`sendall` + `readline`) under both launchers.  pmrun's columns serve a one-node "
          "job from its quick phase (pm.agent.pmi_quick, a poll loop), as a plain "
          "`pmrun -n N prog` does; *agent* is the same job with the quick phase off "
          "(`PM_QUICK=0`: the asyncio agent, as on several nodes).  Targets: PMI-1 under "
          "pmrun <= 1.0x Hydra; native <= PMI-1.", "",
          "| ranks | Hydra PMI-1 (us) | pmrun PMI-1 (us) | pmrun / Hydra | pmrun PMI-1, agent "
          "(us) | agent / Hydra | pmrun native raw (us) | native / PMI-1 | "
          "pm.client.sync, socket (us) |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(str(n), {k: v for k, v in d.items() if not k.endswith("_cpu0")})
            for n, d in res.items()]
    rows += [(f"{n}, on one CPU", {k.removesuffix("_cpu0"): v for k, v in d.items()
                                   if k.endswith("_cpu0")})
             for n, d in res.items() if any(k.endswith("_cpu0") for k in d)]
    for label, d in rows:
        us = {k: [x / 1000 for x in v] for k, v in d.items()}
        med = {k: statistics.median(v) for k, v in d.items()}
        md.append(f"| {label} | {median_range(us['hydra'], '{:.1f}')} | "
                  f"{median_range(us['pmi1'], '{:.1f}')} | {med['pmi1'] / med['hydra']:.2f}x | "
                  f"{median_range(us['pmi1_agent'], '{:.1f}')} | "
                  f"{med['pmi1_agent'] / med['hydra']:.2f}x | "
                  f"{median_range(us['native'], '{:.1f}')} | "
                  f"{med['native'] / med['pmi1']:.2f}x | "
                  f"{median_range(us['client'], '{:.1f}')} |")
    md += ["", "*1, on one CPU*: the same one-rank runs with the launcher, and so everything "
           "it starts, on CPU 0 (`sched_setaffinity`).  With one rank each get is two "
           "wake-ups; whether the rank and its server share a CPU or wake each other "
           "across the two is the scheduler's choice, run by run, and a wake-up across CPUs "
           "costs this VM 15-30 us (an idle CPU's exit): the free runs' figures are "
           "bimodal (about 18 and 26 us under pmrun) whatever the protocol.  On one CPU "
           "that lottery is gone and what is left is the protocols' and the servers' own "
           "cost."]
    return "\n".join(md)


def memory(prog: Path, counts: Sequence[int], runs: int, total: int
           ) -> dict[int, dict[str, list[float]]]:
    out: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        def one(kvs: str, n: int = n) -> Callable[[], float]:
            def go() -> float:
                got = run_job(prog, n, kvs, str(total))
                return sum(g["delta"] + g["agent_delta"] for g in got) * 1024.0
            return go

        out[n] = interleaved({"shm": one("shm"), "socket": one("socket")}, runs, warmup=0)
        print(f"memory n={n}: shm {median_range([x / MIB for x in out[n]['shm']], '{:.1f}')} "
              f"MiB, socket {median_range([x / MIB for x in out[n]['socket']], '{:.1f}')} MiB",
              file=sys.stderr, flush=True)
    return out


def plot(mem: dict[int, dict[str, list[float]]], total: int) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    from bench._util import RESULTS

    xs = sorted(mem)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for kvs in ("shm", "socket"):
        ax.plot(xs, [statistics.median(mem[n][kvs]) / MIB for n in xs], marker="o",
                label=f"--kvs {kvs}")
    ax.axhline(total / MIB, color="grey", linestyle=":", label="KVS size S")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks per node")
    ax.set_ylabel("KVS memory per node (MiB, PSS)")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "kvs_get.png", dpi=110)
    return "\n![KVS memory per node](kvs_get.png)\n"


def _words(text: str) -> list[str]:
    return [w for w in text.split(",") if w]


def _ints(text: str) -> list[int]:
    return [int(w) for w in _words(text)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run: does it work?")
    ap.add_argument("--part", choices=("wire", "latency", "memory"),
                    help="only this part (the wire writes its own section, kvs_wire)")
    ap.add_argument("--runs", type=int, help="runs per point (default 5, 1 with --quick)")
    ap.add_argument("--ranks", type=_ints, help="only these rank counts (1,8,32)")
    ap.add_argument("--modes", type=_words, help=f"wire: only these ({','.join(MODES)})")
    ap.add_argument("--duration", type=float, help="seconds of gets a run (default 1)")
    ap.add_argument("--baseline", metavar="PMRUN",
                    help="wire: also another pmrun's PMI-1 and native columns")
    args = ap.parse_args()
    if not set(args.modes or ()) <= set(MODES):
        ap.error(f"--modes takes {','.join(MODES)}")
    _PYTHON[:] = [release_install()]
    runs = args.runs or (1 if args.quick else 5)
    duration = args.duration or (0.3 if args.quick else 1.0)
    lat_counts = args.ranks or ((1, 8) if args.quick else (1, 8, 32))
    if args.ranks or args.modes or args.duration or args.baseline:
        # Some points only: printed, the results files left as the full run wrote them.
        with tempfile.TemporaryDirectory(prefix="pm-bench-wire-") as d:
            wire_prog = Path(d) / "wire.py"
            wire_prog.write_text(WIRE_RANK)
            load0 = os.getloadavg()[0]
            res = wire(wire_prog, lat_counts, runs, duration, args.modes or MODES,
                       args.baseline)
        for n, d_ in res.items():
            med = {k: statistics.median(v) / 1000 for k, v in d_.items()}
            pairs = [(k, "hydra" + k[len(k.removesuffix("_cpu0")):]) for k in med
                     if "pmi1" in k]
            pairs += [("native", "pmi1"), ("base_native", "base_pmi1"),
                      ("native_cpu0", "pmi1_cpu0")]
            ratios = [f"{k}/{p} {med[k] / med[p]:.2f}x" for k, p in pairs
                      if k in med and p in med]
            print(f"n={n}: " + ", ".join(f"{k} {v:.1f} us" for k, v in med.items())
                  + "; " + ", ".join(ratios))
        print(f"(load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after)")
        return
    mem_counts = (1, 4) if args.quick else (1, 2, 4, 8, 16, 32)
    total = (1 if args.quick else 8) * MIB
    if args.part in (None, "wire"):
        with tempfile.TemporaryDirectory(prefix="pm-bench-wire-") as d:
            wire_prog = Path(d) / "wire.py"
            wire_prog.write_text(WIRE_RANK)
            load0 = os.getloadavg()[0]
            res = wire(wire_prog, lat_counts, runs, duration)
        load = f"\n\nLoad average (1 min) at the start and the end: {load0:.1f}, " \
            f"{os.getloadavg()[0]:.1f} (figures on a loaded machine swing widely)."
        write_section("kvs_wire", wire_section(res, runs, duration) + load)
        if args.part == "wire":
            return
    with tempfile.TemporaryDirectory(prefix="pm-bench-kvs-") as d:
        lat_prog = Path(d) / "latency.py"
        lat_prog.write_text(LATENCY_RANK)
        mem_prog = Path(d) / "memory.py"
        mem_prog.write_text(MEMORY_RANK)
        lat = latency(lat_prog, lat_counts, runs, duration)
        mem = memory(mem_prog, mem_counts, runs, total)

    md = ["## KVS get latency and memory: shared memory vs socket", "",
          f"{machine()}; {runs} run(s) per point, `--kvs shm` and `--kvs socket` interleaved; "
          "medians (min-max over runs).", "",
          f"**Get latency** seen by a Python rank (`pm.client.sync`, every rank getting "
          f"round-robin from every rank's 64-byte value for {duration:g} s at once; a run's "
          "figure is the median over its ranks).  Target: shm <= 1 us, >= 100x faster than "
          "the socket with 32 ranks.", "",
          "| ranks on the node | shm get (ns) | socket get (ns) | socket / shm | "
          "first get of a key, shm (ns) | target |",
          "|---:|---:|---:|---:|---:|---|"]
    for n, d_ in lat.items():
        shm, sock = statistics.median(d_["shm"]), statistics.median(d_["socket"])
        ok = shm <= 1000 and (n != 32 or sock / shm >= 100)
        md.append(f"| {n} | {median_range(d_['shm'], '{:.0f}')} | "
                  f"{median_range(d_['socket'], '{:.0f}')} | {sock / shm:.0f}x | "
                  f"{median_range(d_['shm_first'], '{:.0f}')} | {'met' if ok else 'MISSED'} |")
    md += ["", f"**KVS memory per node** (PSS growth of the ranks and the agent's process "
           f"while every rank holds every value; KVS size S = {total / MIB:g} MiB, "
           "spread over the ranks).  Target: flat in ranks per node with shm.", "",
           "| ranks per node | shm (MiB) | socket (MiB) | shm / S | socket / S |",
           "|---:|---:|---:|---:|---:|"]
    for n, d_ in mem.items():
        shm_mib = [x / MIB for x in d_["shm"]]
        sock_mib = [x / MIB for x in d_["socket"]]
        md.append(f"| {n} | {median_range(shm_mib, '{:.1f}')} | "
                  f"{median_range(sock_mib, '{:.1f}')} | "
                  f"{statistics.median(shm_mib) / (total / MIB):.1f} | "
                  f"{statistics.median(sock_mib) / (total / MIB):.1f} |")
    md += ["", "With shm a node holds the agent's table and the segment (the agent keeps "
           "its own dictionary too), whatever the number of ranks: ranks map the segment "
           "and hold views into it.  With the socket every rank holds its own copy of what "
           "it got."]
    md.append(plot(mem, total))
    write_section("kvs_get", "\n".join(md))


if __name__ == "__main__":
    main()
