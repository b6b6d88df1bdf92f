"""pm.agent.binding: map-by / bind-to tables on synthetic topologies, and on this node."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from pm.agent.binding import (
    BIND_TARGETS,
    MAP_TARGETS,
    BindingError,
    Bindings,
    BindPolicy,
    compute_bindings,
    parse_bind,
    parse_map,
    report_line,
)
from pm.agent.topology import Topology, discover, format_cpuset
from pm.proto.errors import PMError

pytestmark = pytest.mark.timeout(30)

ALL_MAPS = (*MAP_TARGETS, "hwthread", "l3cache")


def union(sets: tuple[frozenset[int], ...]) -> frozenset[int]:
    return frozenset().union(*sets)


def make_big() -> Topology:
    """2 packages x 2 NUMA nodes x 4 cores x 2 PUs; core c has PUs c and c+16
    (the usual x86 numbering); one L3 per NUMA node."""
    cores = tuple(frozenset({c, c + 16}) for c in range(16))
    numa = tuple(union(cores[4 * i : 4 * i + 4]) for i in range(4))
    packages = (union(cores[:8]), union(cores[8:]))
    return Topology("sysfs", tuple(range(32)), cores, numa, packages, numa, 128 << 30, None)


def make_flat(ncores: int = 2) -> Topology:
    """One package, one NUMA node, no SMT, no L3 information."""
    cores = tuple(frozenset({c}) for c in range(ncores))
    every = (frozenset(range(ncores)),)
    return Topology("sysfs", tuple(range(ncores)), cores, every, every, (), 8 << 30, None)


BIG = make_big()


# The cpu lists of BIG's NUMA nodes (= its L3 caches) and packages.
N0, N1, N2, N3 = "0-3,16-19", "4-7,20-23", "8-11,24-27", "12-15,28-31"
P0, P1 = "0-7,16-23", "8-15,24-31"


def fmt(b: Bindings) -> list[str] | None:
    return None if b.cpusets is None else [format_cpuset(s) for s in b.cpusets]


# ------------------------------------------------------------------ literal tables


@pytest.mark.parametrize(
    ("bind", "map_by", "expected"),
    [
        ("core", "core", ["0,16", "1,17", "2,18", "3,19", "4,20", "5,21"]),
        ("core", "slot", ["0,16", "1,17", "2,18", "3,19", "4,20", "5,21"]),
        ("core", "numa", ["0,16", "4,20", "8,24", "12,28", "1,17", "5,21"]),
        ("core", "package", ["0,16", "8,24", "1,17", "9,25", "2,18", "10,26"]),
        ("core", "hwthread", ["0,16", "0,16", "1,17", "1,17", "2,18", "2,18"]),
        ("hwthread", "hwthread", ["0", "16", "1", "17", "2", "18"]),
        ("hwthread", "slot", ["0", "16", "1", "17", "2", "18"]),
        ("hwthread", "core", ["0", "1", "2", "3", "4", "5"]),
        ("hwthread", "package", ["0", "8", "1", "9", "2", "10"]),
        ("numa", "core", [N0, N0, N0, N0, N1, N1]),
        ("numa", "numa", [N0, N1, N2, N3, N0, N1]),
        ("numa", "package", [N0, N2, N0, N2, N0, N2]),
        ("package", "core", [P0] * 6),
        ("package", "numa", [P0, P0, P1, P1, P0, P0]),
        ("package", "package", [P0, P1] * 3),
        ("l3cache", "l3cache", [N0, N1, N2, N3, N0, N1]),
        ("socket", "socket", [P0, P1] * 3),
    ],
)
def test_literal_tables(bind: str, map_by: str, expected: list[str]) -> None:
    result = compute_bindings(BIG, 6, bind, map_by)
    assert fmt(result) == expected
    assert result.notice is None


# ------------------------------------------------------------------ every combination

# Where each of 6 ranks lands on BIG (the PU standing for its place), written
# out by hand per map-by; "thread" when a place is a hardware thread.
PLACES = {
    ("slot", False): [0, 1, 2, 3, 4, 5],
    ("core", False): [0, 1, 2, 3, 4, 5],
    ("numa", False): [0, 4, 8, 12, 1, 5],
    ("l3cache", False): [0, 4, 8, 12, 1, 5],
    ("package", False): [0, 8, 1, 9, 2, 10],
    ("hwthread", True): [0, 16, 1, 17, 2, 18],
    ("core", True): [0, 1, 2, 3, 4, 5],
    ("numa", True): [0, 4, 8, 12, 1, 5],
    ("l3cache", True): [0, 4, 8, 12, 1, 5],
    ("package", True): [0, 8, 1, 9, 2, 10],
}


def objects_of(topo: Topology, target: str) -> tuple[frozenset[int], ...]:
    if target == "hwthread":
        return tuple(frozenset({p}) for p in topo.pus)
    return {
        "core": topo.cores,
        "l3cache": topo.l3caches,
        "numa": topo.numa_nodes,
        "package": topo.packages,
    }[target]


@pytest.mark.parametrize(("bind", "map_by"), list(itertools.product(BIND_TARGETS, ALL_MAPS)))
def test_every_combination(bind: str, map_by: str) -> None:
    result = compute_bindings(BIG, 6, bind, map_by)
    if bind == "none":
        assert result == Bindings(None, None)
        return
    assert result.cpusets is not None and result.notice is None
    assert len(result.cpusets) == 6
    if map_by == "slot" and bind == "hwthread":
        places = PLACES[("hwthread", True)]  # slot is compact
    else:
        places = PLACES[(map_by, bind == "hwthread" or map_by == "hwthread")]
    allowed = objects_of(BIG, bind)
    for cpus, place in zip(result.cpusets, places, strict=True):
        assert cpus in allowed  # exactly one object of the bind type
        assert place in cpus  # the one containing the mapped place


# ------------------------------------------------------------------ disjointness


@pytest.mark.parametrize("map_by", ["slot", "core", "numa", "package", "l3cache"])
@pytest.mark.parametrize("nlocal", [1, 2, 3, 5, 8, 11, 16])
def test_bind_core_is_disjoint(map_by: str, nlocal: int) -> None:
    cpusets = compute_bindings(BIG, nlocal, "core", map_by).cpusets
    assert cpusets is not None and len(cpusets) == nlocal
    assert all(c in BIG.cores for c in cpusets)
    assert len(set(cpusets)) == nlocal  # no two ranks share a core


@pytest.mark.parametrize("map_by", ALL_MAPS)
def test_bind_hwthread_is_disjoint_up_to_every_pu(map_by: str) -> None:
    cpusets = compute_bindings(BIG, 32, "hwthread", map_by).cpusets
    assert cpusets is not None
    assert sorted(min(c) for c in cpusets) == list(range(32))


def test_uneven_packages_spread_then_fill() -> None:
    cores = tuple(frozenset({c}) for c in range(8))
    packages = (union(cores[:2]), union(cores[2:]))  # 2 cores and 6 cores
    topo = Topology("sysfs", tuple(range(8)), cores, packages, packages, (), 1 << 30, None)
    result = compute_bindings(topo, 8, "core", "package")
    assert fmt(result) == ["0", "2", "1", "3", "4", "5", "6", "7"]


# ------------------------------------------------------------------ overload


def test_overload_defaults_to_no_binding() -> None:
    result = compute_bindings(make_flat(2), 7, "core")
    assert result.cpusets is None
    assert result.notice is not None
    assert result.notice.startswith("7 ranks on 2 cores")
    assert "not binding" in result.notice
    assert "core:overload-allowed" in result.notice
    assert "\n" not in result.notice


def test_overload_suggests_hwthreads_when_they_suffice() -> None:
    result = compute_bindings(BIG, 20, "core")
    assert result.cpusets is None and result.notice is not None
    assert result.notice.startswith("20 ranks on 16 cores")
    assert "--bind-to hwthread" in result.notice
    forced = compute_bindings(BIG, 20, "hwthread")
    assert forced.cpusets is not None and len(set(forced.cpusets)) == 20
    too_many = compute_bindings(BIG, 40, "core")
    assert too_many.notice is not None and "hwthread to bind" not in too_many.notice


@pytest.mark.parametrize("bind", ["package", "numa", "l3cache"])
def test_coarse_targets_share_objects_without_overload(bind: str) -> None:
    # 16 ranks on 16 cores bound to 2-4 objects: sharing an object is the point.
    result = compute_bindings(BIG, 16, bind)
    assert result.cpusets is not None and result.notice is None
    assert compute_bindings(BIG, 17, bind).cpusets is None


def test_overload_allowed_reuses_places_round_robin() -> None:
    cpusets = compute_bindings(BIG, 40, "core:overload-allowed", "numa").cpusets
    assert cpusets is not None and len(cpusets) == 40
    assert all(c in BIG.cores for c in cpusets)
    uses = {c: cpusets.count(c) for c in BIG.cores}
    assert max(uses.values()) - min(uses.values()) <= 1  # 40 over 16 cores: 2 or 3 each


# ------------------------------------------------------------------ edge cases


def test_none_and_zero_ranks() -> None:
    assert compute_bindings(BIG, 5, "none") == Bindings(None, None)
    assert compute_bindings(BIG, 0, "core") == Bindings((), None)
    with pytest.raises(BindingError):
        compute_bindings(BIG, -1, "core")


def test_no_l3_information() -> None:
    flat = make_flat(4)
    for bind, map_by in [("l3cache", "core"), ("core", "l3cache")]:
        result = compute_bindings(flat, 2, bind, map_by)
        assert result.cpusets is None
        assert result.notice is not None and "L3" in result.notice


def test_policy_object_accepted() -> None:
    policy = BindPolicy("core")
    assert compute_bindings(BIG, 2, policy) == compute_bindings(BIG, 2, "core")


# ------------------------------------------------------------------ user lists


def test_user_lists() -> None:
    policy = parse_bind("user:0+1,2-3x2,5")
    assert policy.target == "user"
    assert policy.user_sets == (
        frozenset({0, 1}),
        frozenset({2, 3}),
        frozenset({2, 3}),
        frozenset({5}),
    )
    result = compute_bindings(BIG, 4, policy, "package")  # map-by does not apply
    assert fmt(result) == ["0-1", "2-3", "2-3", "5"]
    assert result.notice is None
    wrapped = compute_bindings(BIG, 6, "user:7,9")
    assert fmt(wrapped) == ["7", "9", "7", "9", "7", "9"]
    assert wrapped.notice is not None and "round robin" in wrapped.notice


def test_user_cpus_must_exist_on_node() -> None:
    with pytest.raises(BindingError, match="40-41"):
        compute_bindings(BIG, 2, "user:0,40+41")


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("spec", "target", "overload"),
    [
        ("core", "core", False),
        (" Core ", "core", False),
        ("socket", "package", False),
        ("NUMA", "numa", False),
        ("numanode", "numa", False),
        ("hwthread:overload-allowed", "hwthread", True),
        ("l3cache", "l3cache", False),
        ("none", "none", False),
    ],
)
def test_parse_bind(spec: str, target: str, overload: bool) -> None:
    policy = parse_bind(spec)
    assert (policy.target, policy.overload_allowed) == (target, overload)
    assert parse_bind(str(policy)) == policy


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown --bind-to 'bogus'"),
        ("", "unknown --bind-to"),
        ("core:foo", "unknown qualifier 'foo'"),
        ("none:overload-allowed", "takes no qualifier"),
        ("user:", "at least one cpu"),
        ("user:a", "'a' is not a cpu number"),
        ("user:0,,1", "'' is not a cpu number"),
        ("user:3-1", "empty range"),
        ("user:1x0", "bad repeat count"),
        ("user:1xq", "bad repeat count"),
    ],
)
def test_parse_bind_errors(spec: str, message: str) -> None:
    with pytest.raises(BindingError, match=message) as info:
        parse_bind(spec)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PMError)


def test_parse_map() -> None:
    assert [parse_map(m) for m in MAP_TARGETS] == list(MAP_TARGETS)
    assert parse_map("socket") == "package"
    assert parse_map(" HWTHREAD ") == "hwthread"
    assert parse_map("l3cache") == "l3cache"
    assert parse_map("numanode") == "numa"
    for bad in ("bogus", "core:span", "", "user:0"):
        with pytest.raises(BindingError, match="unknown --map-by"):
            parse_map(bad)


def test_user_policy_round_trips() -> None:
    policy = parse_bind("user:0+1+2,4-7,3x3")
    assert parse_bind(str(policy)) == policy


def test_report_line() -> None:
    assert report_line(3, "node1", frozenset({2, 3})) == "rank 3 on node1: cpus 2-3"
    assert report_line(0, "n0", frozenset({0, 8, 16, 17})) == "rank 0 on n0: cpus 0,8,16-17"
    assert report_line(5, "node2", None) == "rank 5 on node2: not bound"


# ------------------------------------------------------------------ this node


@pytest.mark.parametrize("bind", ["core", "hwthread", "numa", "package"])
def test_bindings_on_this_node_can_be_applied(bind: str) -> None:
    topo = discover()
    n = len(topo.cores) if bind != "hwthread" else len(topo.pus)
    cpusets = compute_bindings(topo, n, bind).cpusets
    assert cpusets is not None and len(cpusets) == n
    assert union(cpusets) == frozenset(topo.pus)
    # The kernel accepts each set as an affinity mask, in a real child process.
    code = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')})\n"
        "print(','.join(map(str, sorted(os.sched_getaffinity(0)))))\n"
    )
    for cpus in set(cpusets):
        arg = ",".join(map(str, sorted(cpus)))
        out = subprocess.run(
            [sys.executable, "-c", code, arg], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == arg


# ------------------------------------------------------------------ srun's --cpu-bind
@pytest.mark.parametrize(("value", "bind", "verbose"), [
    ("cores", "core", False), ("verbose,threads", "hwthread", True), ("none", "none", False),
    ("sockets", "package", False), ("ldoms", "numa", False), ("q,cores", "core", False),
    ("map_cpu:1,0", "user:1,0", False), ("map_cpu:0*2", "user:0x2", False),
    ("mask_cpu:0x3,0xc", "user:0+1,2+3", False), ("verbose", "core", True),
])
def test_srun_cpu_bind_is_a_bind_to(value: str, bind: str, verbose: bool) -> None:
    from pm.options import cpu_bind_of

    assert cpu_bind_of(value, "--cpu-bind") == (bind, verbose)


@pytest.mark.parametrize("value", ["boards", "map_ldom:0", "mask_cpu:zz", "mask_cpu:0x0",
                                   "map_cpu:", "map_cpu:a", ""])
def test_srun_cpu_bind_pmrun_cannot_do_is_named(value: str) -> None:
    from pm.options import cpu_bind_of
    from pm.proto.errors import UsageError

    with pytest.raises(UsageError, match="takes srun's none, cores, threads, sockets"):
        cpu_bind_of(value, "--cpu-bind")


# ------------------------------------------------------------------ srun's --hint
@pytest.mark.parametrize(("words", "cpus"), [
    # A rank a core (both of its threads), the cores in turn.
    (["--hint=nomultithread"], ["0,16", "1,17", "2,18", "3,19"]),
    (["--hint", "compute_bound", "-c", "2"], ["0-1,16-17", "2-3,18-19", "4-5,20-21",
                                              "6-7,22-23"]),
    # Ranks fill the hardware threads: two a core.
    (["--hint=multithread"], ["0", "16", "1", "17"]),
    (["--hint=multithread", "-c", "2"], ["0,16", "1,17", "2,18", "3,19"]),
    # Ranks spread over the sockets, a core each.
    (["--hint=memory_bound"], ["0,16", "8,24", "1,17", "9,25"]),
    # What --cpu-bind/--bind-to and --map-by say wins.
    (["--hint=multithread", "--cpu-bind=cores", "--map-by", "core"],
     ["0,16", "1,17", "2,18", "3,19"]),
    (["--hint=memory_bound", "--bind-to", "package"], [P0, P1, P0, P1]),
])
def test_srun_hint_is_a_binding(words: list[str], cpus: list[str]) -> None:
    from pm.options import parse

    values = parse([*words, "-n", "4", "prog"], {}).values
    assert "hint" not in values
    got = compute_bindings(BIG, 4, str(values["bind_to"]), str(values.get("map_by", "core")))
    assert fmt(got) == cpus


def test_srun_hint_pmrun_does_not_know_is_named() -> None:
    from pm.options import parse
    from pm.proto.errors import UsageError

    with pytest.raises(UsageError, match="--hint takes nomultithread, compute_bound, "
                                         "multithread, memory_bound, not 'fast'"):
        parse(["--hint=fast", "-n", "4", "prog"], {})


@pytest.mark.skipif(len(discover().pus) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_srun_cpu_bind_binds_the_ranks(tmp_path: object, quick: str) -> None:
    """On both paths: a one-node job is bound on the quick path (pm.quick) as the agent
    binds it, and the job takes that path (binding made it three times as slow to start)."""
    from launch_util import pmrun_argv, pmrun_env

    from pm.quick import parse as quick_parse

    assert quick_parse(["--cpu-bind=verbose,map_cpu:1,0", "-n", "2", "prog"], {}) is not None
    show = "echo $PMI_RANK $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
    r = subprocess.run(pmrun_argv("--cpu-bind=verbose,map_cpu:1,0", "-n", "2", "sh", "-c", show),
                       capture_output=True, text=True, timeout=60,
                       env=pmrun_env({"PM_QUICK": quick}))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 1", "1 0"]
    host = os.uname().nodename
    assert f"rank 0 on {host}: cpus 1\n" in r.stderr, r.stderr  # verbose: --report-bindings
    r = subprocess.run(pmrun_argv("--bind-to", "core", "-n", "2", "-l", "sh", "-c", show),
                       capture_output=True, text=True, timeout=60,
                       env=pmrun_env({"PM_QUICK": quick}))
    assert r.returncode == 0 and sorted(r.stdout.splitlines()) == ["[0] 0 0", "[1] 1 1"], r
    r = subprocess.run(pmrun_argv("--cpu-bind", "cores", "--bind-to", "none", "true"),
                       capture_output=True, text=True, timeout=60, env=pmrun_env())
    assert (r.returncode, r.stderr) == (2, "pmrun: --cpu-bind cores and --bind-to none "
                                           "disagree\n")



@pytest.mark.skipif(len(discover().pus) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_quiet_keeps_the_notices_and_not_the_errors(quick: str) -> None:
    """-Q (srun's, Open MPI's --quiet): a notice (more ranks than cpu sets) is not said; an
    error still is."""
    from launch_util import pmrun_argv, pmrun_env

    env = pmrun_env({"PM_QUICK": quick})
    line = ["-n", "3", "--bind-to", "user:0,1", "true"]
    r = subprocess.run(pmrun_argv(*line), capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and "reusing them round robin" in r.stderr, r
    for quiet in ("-Q", "--quiet"):
        r = subprocess.run(pmrun_argv(quiet, *line), capture_output=True, text=True,
                           timeout=60, env=env)
        assert (r.returncode, r.stderr) == (0, ""), r
    r = subprocess.run(pmrun_argv("-Q", "-n", "2", "sh", "-c", "exit 3"), capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 3 and "exited with code 3" in r.stderr, r

# ------------------------------------------------------------------ Open MPI's ppr:N:OBJECT


@pytest.mark.parametrize(
    ("bind", "map_by", "nlocal", "expected"),
    [
        # N ranks to each object, object after object (not round robin: map-by package).
        ("core", "ppr:2:package", 4, ["0,16", "1,17", "8,24", "9,25"]),
        ("core", "ppr:1:numa", 4, ["0,16", "4,20", "8,24", "12,28"]),
        ("package", "ppr:3:socket", 6, [P0, P0, P0, P1, P1, P1]),
        ("hwthread", "ppr:2:core", 4, ["0", "16", "1", "17"]),
        ("core", "ppr:1:core", 3, ["0,16", "1,17", "2,18"]),
        ("hwthread", "ppr:1:hwthread", 3, ["0", "16", "1"]),
        ("numa", "ppr:1:l3cache", 4, [N0, N1, N2, N3]),
    ],
)
def test_ppr_gives_each_object_its_ranks_in_turn(bind: str, map_by: str, nlocal: int,
                                                 expected: list[str]) -> None:
    result = compute_bindings(BIG, nlocal, bind, map_by)
    assert (fmt(result), result.notice) == (expected, None)


def test_parse_map_ppr() -> None:
    assert parse_map("ppr:2:socket") == "ppr:2:package"
    assert parse_map("PPR:1:NUMA") == "ppr:1:numa"
    for bad in ("ppr:0:core", "ppr:x:core", "ppr:2:slot", "ppr:2:board", "ppr:2"):
        with pytest.raises(BindingError, match="ppr:N:OBJECT takes a count"):
            parse_map(bad)
