"""Launch time over hosts: pmrun against Hydra over real sshds and against srun in Slurm.

    python -m bench.hosts [--quick] [--part ssh,slurm,tasks,model,exec,local]

``ssh``: 4 and 8 network-namespace hosts, each with a real sshd
(tests/realcluster_util.py), host names only in an ssh configuration:
``pmrun -hosts ... --ssh 'ssh -F CONFIG' -ppn 1 -n N`` against Hydra's
``mpiexec -launcher ssh -launcher-exec WRAPPER -iface BRIDGE -hosts ... -ppn 1
-n N`` (WRAPPER: ``exec ssh -F CONFIG "$@"``), for ``true`` and the mpi4py
hello, interleaved, medians.

``slurm``: inside one ``salloc -N4 -n8`` on a real Slurm cluster of 4 namespace
nodes: ``pmrun -n 8`` against ``srun --mpi=pmi2 -n 8``, same programs.

``tasks``: a task ensemble on 2 namespace hosts with real sshds, 2 tasks at once
on each: ``pmrun -S 2/h1,2/h2 --ssh 'ssh -F CONFIG' true ::: 1..N`` against GNU
parallel's ``parallel -S 2/h1,2/h2 --ssh 'ssh -F CONFIG' true ::: 1..N``, N = 20
and 200, interleaved, medians.

``model``: per-hop costs measured here (an ssh round trip, an agent's start, the
CPU one ssh client costs its parent) put into a launch-time model of pmrun's
tree (the head reaches two levels in one hop, then one hop per level, each
parent starting up to ``k`` children) and of Hydra (the head ssh'es to every
host), at 64, 1,024 and 16,384 hosts, with the fan-out pmrun would pick.

``exec`` / ``local``: the older rows, exec launcher (``ip netns exec``) and
``--local-nodes``, fan-out 2, 8, 32.

Wall time of ``pmrun -ppn 1 -n N true`` (start every agent, run one rank per
node, tear down), medians (min-max) of interleaved runs:

* over 1, 2, 4, 8 network-namespace hosts (tests/netns_util.py; real TCP
  between namespaces, agents started with the exec launcher ``ip netns exec``,
  each agent starting its own children), fan-out 2, 8 and 32;
* over ``--local-nodes`` 1 … 64 agents on this machine, same fan-outs.

The tree height (levels of agents below the head) is given for each case:
with fan-out 2 the tree is deeper and agents start level by level; with 32
the head starts them all itself.  On a small machine both are bounded by the
CPU cost of starting the interpreters, which no tree shape removes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import math
import resource
import shlex
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench._util import (
    ROOT,
    interleaved,
    machine,
    median_range,
    release_install,
    timed,
    tool,
    write_section,
)
from pm.bootstrap.ssh import DEFAULT_FANOUT, DEFAULT_LIMIT
from pm.common.kary_tree import Tree

sys.path.insert(0, str(ROOT / "tests"))

FANOUTS = (2, 8, 32)


#: The release installs pmrun runs from (bench._util.release_install), by label: "pmrun"
#: is this checkout; "before" another checkout (``--before PATH``), run interleaved with it.
_INSTALLS: dict[str, Path] = {}


def _env() -> dict[str, str]:
    """The environment of every launch: ours, without a path to this checkout (pmrun, its
    agents and the hello's ranks run from the release install), bytecode allowed (pip
    compiled pmrun's)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PM_QUICK", None)
    env.pop("MPIEXEC_TIMEOUT", None)
    # Namespaces on one machine: MPICH's default transports would use shared memory.
    env["FI_PROVIDER"] = "tcp"
    return env


def python(label: str = "pmrun") -> str:
    """The release install's interpreter (the agents on the hosts run it too: pmrun starts
    them with its own ``sys.executable``)."""
    return str(_INSTALLS[label])


def pmrun(label: str = "pmrun") -> list[str]:
    """The release install's ``pmrun`` script, as a user runs it."""
    return [str(_INSTALLS[label].parent / "pmrun")]


def hello() -> list[str]:
    """The mpi4py hello, the same rank program under every launcher."""
    return [python(), "-m", "mpi4py.bench", "helloworld"]


def programs() -> dict[str, list[str]]:
    return {"true": ["true"], "hello": hello()}


def _label(label: str, prog: str) -> str:
    return prog if label == "pmrun" else f"{prog} ({label})"


def ssh_rows(sizes: Sequence[int], runs: int) -> tuple[list[str], dict[str, float]]:
    """Rows of pmrun vs Hydra over real sshds, and the ratios (for the summary)."""
    from realcluster_util import RealCluster, realcluster_missing

    why = realcluster_missing(slurm=False)
    if why:
        return [f"| ssh | skipped: {why} | | | |"], {}
    rows: list[str] = []
    ratios: dict[str, float] = {}
    hydra = tool("mpiexec")
    for n in sizes:
        with RealCluster(n, slurm=False, pythonpath=None) as c:
            hosts = ",".join(c.names)
            contenders = {}
            cpu: dict[str, list[tuple[float, float]]] = {}
            for prog, argv in programs().items():
                for label in _INSTALLS:
                    contenders[f"{label} {prog}"] = _cpu_runner(
                        [*pmrun(label), "-hosts", hosts, "--ssh", c.ssh_command(), "-ppn",
                         "1", "-n", str(n), *argv], c, cpu.setdefault(f"{label} {prog}", []))
                contenders[f"hydra {prog}"] = _cpu_runner(
                    [hydra, "-launcher", "ssh", "-launcher-exec", str(c.ssh_wrapper),
                     "-iface", c.bridge, "-hosts", hosts, "-ppn", "1", "-n", str(n), *argv],
                    c, cpu.setdefault(f"hydra {prog}", []))
            res = interleaved(contenders, runs)
            for prog in programs():
                for label in _INSTALLS:
                    p, h = res[f"{label} {prog}"], res[f"hydra {prog}"]
                    ratio = statistics.median(p) / statistics.median(h)
                    ratios[f"{n} {_label(label, prog)}"] = ratio
                    rows.append(f"| {n} hosts | {_label(label, prog)} | "
                                f"{median_range(p, '{:.2f}')} | "
                                f"{median_range(h, '{:.2f}')} | {ratio:.2f}x | "
                                f"{_cpu_text(cpu[f'{label} {prog}'][-runs:])} | "
                                f"{_cpu_text(cpu[f'hydra {prog}'][-runs:])} |")
    return rows, ratios


def task_rows(counts: Sequence[int], runs: int) -> list[str]:
    """Rows of a remote task ensemble, pmrun against GNU parallel -S, on 2 sshd hosts."""
    from realcluster_util import RealCluster, realcluster_missing

    why = realcluster_missing(slurm=False)
    parallel = shutil.which("parallel")
    if why or parallel is None:
        return [f"| tasks | skipped: {why or 'GNU parallel not installed'} | | | |"]
    rows: list[str] = []
    with RealCluster(2, slurm=False, pythonpath=None) as c:
        logins = ",".join(f"2/{h}" for h in c.names)
        for n in counts:
            args = ["true", ":::", *map(str, range(1, n + 1))]
            res = interleaved({
                "pmrun": _runner([*pmrun(), "-S", logins, "--ssh", c.ssh_command(), *args]),
                "parallel": _runner([parallel, "--will-cite", "-S", logins, "--ssh",
                                     c.ssh_command(), *args]),
            }, runs)
            p, g = res["pmrun"], res["parallel"]
            rows.append(f"| {n} | {median_range(p, '{:.2f}')} | {median_range(g, '{:.2f}')} | "
                        f"{statistics.median(p) / statistics.median(g):.2f}x |")
    return rows


def _sshd_cpu(cluster: object) -> float:
    """CPU seconds the cluster's sshds' sessions used (everything ssh started on the hosts:
    shells, agents or proxies, ranks), once they have been reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for f in getattr(cluster, "_pidfiles", []):
        if "sshd" not in f.name:
            continue
        with open(f"/proc/{int(f.read_text())}/stat") as st:
            fields = st.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def _cpu_runner(argv: list[str], cluster: object, out: list[tuple[float, float]]
                ) -> Callable[[], float]:
    """A runner that also records (CPU of the launcher's own processes, CPU on the hosts)."""
    env = _env()

    def run() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        remote = _sshd_cpu(cluster)
        took = timed(argv, env=env, timeout=300)
        time.sleep(0.3)  # the sessions' ends are reaped by their sshd
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
                    _sshd_cpu(cluster) - remote))
        return took
    return run


def _cpu_text(values: list[tuple[float, float]]) -> str:
    head = statistics.median(v[0] for v in values)
    hosts = statistics.median(v[1] for v in values)
    return f"{head:.2f} + {hosts:.2f}"


#: Runs inside the allocation: times pmrun and srun round-robin, prints JSON.
_IN_ALLOCATION = """
import json, os, subprocess, sys, time
runs, warmup = int(sys.argv[1]), 1
contenders = json.loads(sys.argv[2])
out = {name: [] for name in contenders}
cpu = {name: [] for name in contenders}
def busy():  # every CPU's busy time, in seconds: the whole cluster runs on this machine
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
for i in range(warmup + runs):
    for name, argv in contenders.items():
        t0, b0 = time.perf_counter(), busy()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode:
            sys.exit(f"{argv} exited {proc.returncode}: {proc.stderr[-1000:]!r}")
        if i >= warmup:
            out[name].append(time.perf_counter() - t0)
            cpu[name].append(busy() - b0)
print(json.dumps({"times": out, "cpu": cpu}))
"""


def slurm_rows(runs: int) -> tuple[list[str], dict[str, float]]:
    from realcluster_util import RealCluster, realcluster_missing

    why = realcluster_missing(slurm=True, ssh=False)
    if why:
        return [f"| Slurm | skipped: {why} | | | | | |"], {}
    contenders = {}
    for prog, argv in programs().items():
        for label in _INSTALLS:
            contenders[f"{label} {prog}"] = [*pmrun(label), "-n", "8", *argv]
        contenders[f"srun {prog}"] = ["srun", "--mpi=pmi2", "-n", "8", *argv]
    with RealCluster(4, ssh=False, pythonpath=None) as c:
        res = subprocess.run(["salloc", "--quiet", "-N4", "-n8", sys.executable, "-c",
                              _IN_ALLOCATION, str(runs), json.dumps(contenders)],
                             env=c.env(_env()), capture_output=True, text=True, timeout=1800)
        if res.returncode:
            raise RuntimeError(f"salloc run failed: {res.stderr[-2000:]}")
        measured = json.loads(res.stdout.strip().splitlines()[-1])
    times, cpu = measured["times"], measured["cpu"]
    rows, ratios = [], {}
    for prog in programs():
        for label in _INSTALLS:
            p, s = times[f"{label} {prog}"], times[f"srun {prog}"]
            ratio = statistics.median(p) / statistics.median(s)
            ratios[_label(label, prog)] = ratio
            rows.append(f"| 4 nodes, 8 ranks | {_label(label, prog)} | "
                        f"{median_range(p, '{:.2f}')} | {median_range(s, '{:.2f}')} | "
                        f"{ratio:.2f}x | {statistics.median(cpu[f'{label} {prog}']):.2f} | "
                        f"{statistics.median(cpu[f'srun {prog}']):.2f} |")
    return rows, ratios


def _ssh_costs(runs: int) -> dict[str, float]:
    """Measured: ssh round trip, remote agent start, CPU of one ssh client, per child."""
    from realcluster_util import RealCluster

    from pm.bootstrap.ssh import tuning

    with RealCluster(1, slurm=False, pythonpath=None) as c:
        base = ["ssh", "-F", str(c.ssh_config)]
        ssh = [*base, c.names[0]]
        # As pmrun runs ssh (its options: pm.bootstrap.ssh.tuning), and as Hydra does.
        ours = [*base, *tuning(base, c.names[0]), c.names[0]]
        hop, agent, cpu, plain_cpu = [], [], [], []

        def client(argv: list[str], cpus: list[float]) -> float:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([*argv, "true"], check=True)
            took = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
            return took

        for _ in range(runs):
            hop.append(client(ours, cpu))
            client(ssh, plain_cpu)
            t0 = time.perf_counter()
            # As a remote agent starts (pm.bootstrap.base.agent_command, lean).
            subprocess.run([*ours, shlex.join([
                python(), "-S", "-P", "-c", f"import sys;sys.path+={_site_dirs()!r};"
                "from pm.agent.main import _preimport;_preimport()"])],
                check=True, env=_env())
            agent.append(time.perf_counter() - t0 - hop[-1])
    return {"hop": statistics.median(hop), "agent": max(0.0, statistics.median(agent)),
            "client_cpu": statistics.median(cpu), "plain_cpu": statistics.median(plain_cpu)}


def _site_dirs() -> list[str]:
    """The site directories a lean agent of the release install puts on its path."""
    out = subprocess.run([python(), "-c", "import json; from pm.bootstrap.base import "
                          "site_dirs; print(json.dumps(site_dirs()))"],
                         check=True, capture_output=True, text=True, env=_env()).stdout
    return list(json.loads(out))


def model_time(n: int, k: int, costs: dict[str, float], limit: int = DEFAULT_LIMIT) -> float:
    """pmrun's launch over ssh for ``n`` hosts, fan-out ``k`` (seconds, modelled).

    One hop reaches vertex 0 and its children (the head starts them all at once,
    paying one ssh client's CPU each); each further level is one more hop, its
    parent paying one client's CPU per child it starts (at most ``k``).  A parent
    runs at most ``limit`` ssh clients at once (``--ssh-limit``): beyond that its
    children start in waves, one more hop each.  Every host has CPUs of its own
    (a real cluster; not this machine's namespace hosts)."""
    tree = Tree(n, k)
    levels = tree.height()
    step = costs["hop"] + costs["agent"]
    waves = math.ceil(min(k, max(1, n - 1)) / limit)
    first = min(n, 1 + k) * costs["client_cpu"] + (math.ceil(min(n, 1 + k) / limit) - 1) * \
        costs["hop"]
    deeper = max(0, levels - 1) * (step + (waves - 1) * costs["hop"] + k * costs["client_cpu"])
    return step + first + deeper


def hydra_model(n: int, costs: dict[str, float]) -> float:
    """Hydra over ssh: the head's ssh clients to every host, one hop, a C proxy (no start);
    its clients use ssh's default key exchange (``plain_cpu`` each)."""
    return costs["hop"] + n * costs.get("plain_cpu", costs["client_cpu"])


#: Fan-outs the model tries, and ssh limits.
MODEL_FANOUTS = (2, 4, 8, 16, 32, 64, 128, 256)


def _default_note(costs: dict[str, float]) -> str:
    """How far the default fan-out is from the model's best, over 16 to 16,384 hosts."""
    worst = {}
    for k in (DEFAULT_FANOUT, *MODEL_FANOUTS):
        worst[k] = max(model_time(n, k, costs) / min(model_time(n, b, costs)
                                                     for b in MODEL_FANOUTS)
                       for n in (16, 64, 256, 1024, 16384))
    best = min(worst, key=lambda k: worst[k])
    return (f"over 16 to 16,384 hosts at most {100 * (worst[DEFAULT_FANOUT] - 1):.0f} % "
            f"slower than the model's best fan-out for each count; the fan-out with the "
            f"smallest such worst case is {best}")


def model_rows(costs: dict[str, float]) -> list[str]:
    rows = []
    for n in (64, 1024, 16384):
        best = min(MODEL_FANOUTS, key=lambda k: model_time(n, k, costs))
        d = DEFAULT_FANOUT
        rows.append(f"| {n:,} | {model_time(n, d, costs):.2f} s (h{Tree(n, d).height()}) | "
                    f"{best}: {model_time(n, best, costs):.2f} s (h{Tree(n, best).height()}) | "
                    f"{model_time(n, 32, costs):.2f} s | "
                    f"{model_time(n, 32, costs, limit=8):.2f} s | "
                    f"{hydra_model(n, costs):.2f} s |")
    return rows


def _runner(argv: list[str]) -> Callable[[], float]:
    env = _env()
    return lambda: timed(argv, env=env, timeout=300)


def _height(n: int, k: int) -> int:
    return Tree(n, k).height() if n > 1 else 0


def netns_rows(sizes: Sequence[int], runs: int) -> list[str]:
    from netns_util import EXEC_TEMPLATE, NetnsHosts, netns_missing

    why = netns_missing()
    if why:
        return [f"| namespace hosts | - | - | skipped: {why} |"]
    rows = []
    for n in sizes:
        with NetnsHosts(n) as hosts:
            base = [*pmrun(), "--launcher", "exec", "--launcher-exec", EXEC_TEMPLATE,
                    "-hosts", ",".join(hosts.names), "--iface", hosts.bridge_addr,
                    "-ppn", "1", "-n", str(n)]
            res = interleaved({k: _runner([*base, "--fanout", str(k), "true"])
                               for k in FANOUTS}, runs)
        rows.append(f"| {n} namespace hosts | " + " | ".join(
            f"{median_range(res[k], '{:.2f}')} (h{_height(n, k)})" for k in FANOUTS) + " |")
    return rows


def local_rows(sizes: Sequence[int], runs: int) -> list[str]:
    rows = []
    for n in sizes:
        base = [*pmrun(), "--local-nodes", str(n), "-ppn", "1", "-n", str(n)]
        res = interleaved({k: _runner([*base, "--fanout", str(k), "true"]) for k in FANOUTS},
                          runs)
        rows.append(f"| {n} local nodes | " + " | ".join(
            f"{median_range(res[k], '{:.2f}')} (h{_height(n, k)})" for k in FANOUTS) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="a short run that checks it works")
    ap.add_argument("--part", default="ssh,slurm,tasks,model,exec,local",
                    help="which parts to run (comma-separated)")
    ap.add_argument("--before", metavar="CHECKOUT",
                    help="also run pmrun from this other checkout, interleaved (its rows "
                         "are marked 'before')")
    ap.add_argument("--runs", type=int, help="interleaved runs a point (default 5)")
    ap.add_argument("--hosts", help="ssh part: these host counts (default 4,8)")
    args = ap.parse_args(argv)
    parts = set(args.part.split(","))
    # pmrun (head and agents) runs from a release install of this checkout, as a user's.
    _INSTALLS["pmrun"] = release_install()
    if args.before:
        _INSTALLS["before"] = release_install(Path(args.before).resolve(), "release-before")
    runs = args.runs or (1 if args.quick else 5)
    sections = []
    if "ssh" in parts:
        load0 = os.getloadavg()[0]
        t0 = time.strftime("%H:%M", time.gmtime())
        sizes = [int(n) for n in args.hosts.split(",")] if args.hosts else (
            [4] if args.quick else [4, 8])
        rows, _ = ssh_rows(sizes, runs)
        load = (f"Measured {t0}–{time.strftime('%H:%M', time.gmtime())} UTC, 1-minute load "
                f"average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
        sections += [
            "## Launch over real ssh: pmrun against Hydra",
            "",
            f"Wall seconds, median (min-max) of {runs} interleaved runs, one rank per host; "
            "namespace hosts each with its own sshd, names only in an ssh configuration; "
            f"mpi4py hello with MPICH's TCP provider. {machine()}"
            f"{', quick run' if args.quick else ''}.",
            "",
            "| hosts | program | pmrun | Hydra `-launcher ssh` | pmrun / Hydra | "
            "CPU s, pmrun: here + hosts | CPU s, Hydra: here + hosts |",
            "|---|---|---|---|---|---|---|", *rows, "",
            "CPU (medians): *here*, the launcher and every process it started on this side "
            "(the ssh clients); *hosts*, everything the sshds ran for the job (the login "
            "shell with its rc files, pmrun's agents or Hydra's proxies, the ranks).", "",
            load, ""]
    if "slurm" in parts:
        rows, _ = slurm_rows(runs)
        sections += [
            "## Launch inside a Slurm allocation: pmrun against srun",
            "",
            f"Inside one `salloc -N4 -n8` (real slurmctld, 4 slurmd): `pmrun -n 8` against "
            f"`srun --mpi=pmi2 -n 8`, wall seconds, median (min-max) of {runs} interleaved "
            "runs; CPU: seconds of CPU the whole machine spent during a launch (median), every "
            "daemon and process of the 4 nodes included, which share this machine's CPUs.",
            "",
            "| allocation | program | pmrun | srun | pmrun / srun | CPU s, pmrun | CPU s, srun |",
            "|---|---|---|---|---|---|---|", *rows, ""]
    if "tasks" in parts:
        rows = task_rows([20] if args.quick else [20, 200], runs)
        sections += [
            "## Tasks on other hosts: pmrun against GNU parallel -S",
            "",
            "`true` tasks on 2 namespace hosts with real sshds, 2 at a time on each: "
            "`pmrun -S 2/h1,2/h2 --ssh 'ssh -F CONFIG' true ::: 1..N` against the same "
            f"`parallel` command line (GNU parallel), wall seconds, median (min-max) of {runs} "
            "interleaved runs. parallel opens an ssh session per task; pmrun one per host, "
            f"whose runner starts every task there. {machine()}.",
            "",
            "| tasks | pmrun | GNU parallel | pmrun / parallel |",
            "|---|---|---|---|", *rows, ""]
    if "model" in parts:
        costs = _ssh_costs(3 if args.quick else 7)
        sections += [
            "## Launch model for large host counts",
            "",
            f"Measured here: one ssh round trip {costs['hop']:.2f} s, an agent's start after "
            f"ssh {costs['agent']:.2f} s, one ssh client's CPU {costs['client_cpu'] * 1000:.0f}"
            f" ms as pmrun runs it ({costs['plain_cpu'] * 1000:.0f} ms with ssh's default key "
            "exchange, as Hydra runs it). pmrun: the head reaches vertex 0 and its children "
            "in one hop, each further level is one hop plus its parent's ssh clients (in "
            "waves of `--ssh-limit`, one hop each); Hydra: one hop, the head runs every "
            "host's ssh client (its proxies are C: no start-up to pay). Each host has CPUs "
            "of its own, as on a cluster.",
            "",
            f"| hosts | pmrun, fan-out {DEFAULT_FANOUT} (default) | best fan-out: pmrun | "
            f"fan-out 32 | fan-out 32, `--ssh-limit 8` | Hydra |",
            "|---|---|---|---|---|---|", *model_rows(costs), "",
            f"Defaults: fan-out {DEFAULT_FANOUT} over ssh ({_default_note(costs)}: a wider "
            "parent pays more ssh clients' CPU than a level's hop saves, a narrower tree more "
            f"levels); `--ssh-limit` {DEFAULT_LIMIT}, above the fan-out, so a "
            "parent starts all its children in one wave (a limit below the fan-out adds a "
            "hop per wave, last column).", ""]
    if "exec" in parts or "local" in parts:
        hosts = (1, 2, 4) if args.quick else (1, 2, 4, 8)
        local = (1, 8, 16) if args.quick else (1, 8, 16, 32, 64)
        rows = (netns_rows(hosts, runs) if "exec" in parts else []) + (
            local_rows(local, runs) if "local" in parts else [])
        sections += [_fanout_section(rows, runs, args.quick)]
    write_section("hosts", _keep_others("\n".join(sections)))
    return 0


def _keep_others(new: str) -> str:
    """``new`` with the sections of the stored report it does not replace (a run of some
    parts keeps the others' last figures), in the stored order."""
    path = ROOT / "bench" / "results" / "hosts.md"

    def split(text: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in ("\n" + text).split("\n## ")[1:]:
            out[chunk.split("\n", 1)[0]] = "## " + chunk.rstrip() + "\n"
        return out

    fresh = split(new)
    old = split(path.read_text()) if path.exists() else {}
    merged = [fresh.pop(title, body) for title, body in old.items()] + list(fresh.values())
    return "\n".join(merged)


def _fanout_section(rows: list[str], runs: int, quick: bool) -> str:
    head = " | ".join(f"fan-out {k}" for k in FANOUTS)
    return "\n".join([
        "## Launch time over hosts and fan-out",
        "",
        f"`pmrun -ppn 1 -n N true`, wall seconds, median (min-max) of {runs} interleaved "
        "runs; (hN) is the tree height (levels of agents below vertex 0). Namespace hosts: "
        "exec launcher (`ip netns exec`), TCP between namespaces, agents start their "
        f"children. {machine()}{', quick run' if quick else ''}.",
        "",
        f"| nodes | {head} |",
        "|---|" + "---|" * len(FANOUTS),
        *rows,
        "",
        "Every agent is a Python interpreter start (about 0.1-0.2 s of CPU); on a 2-core "
        "machine their start-up, not the tree's latency, bounds the launch: a deeper tree "
        "(fan-out 2) adds a level of start-up latency per level, a flat tree starts all "
        "agents from one parent.",
    ])


if __name__ == "__main__":
    sys.exit(main())
