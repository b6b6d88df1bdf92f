"""pm.common.mapping: Hydra's rank placement and MPICH's PMI_process_mapping."""

from __future__ import annotations

import itertools
import os
import random
import re
import socket
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pm.common.mapping import (
    MAX_MAPPING_LEN,
    MappingError,
    capacities,
    deal,
    deal_slots,
    dealt_placement,
    local_ranks,
    parse_process_mapping,
    place,
    process_mapping,
    ranked,
    step_counts,
)
from pm.proto.errors import PMError

pytestmark = pytest.mark.timeout(60)


# --- place -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "slots", "nodes"),
    [
        (4, [1, 1], [0, 1, 0, 1]),
        (8, [4, 4], [0, 0, 0, 0, 1, 1, 1, 1]),
        (5, [2, 2], [0, 0, 1, 1, 0]),
        (0, [3], []),
        (3, [5], [0, 0, 0]),
        (7, [1, 2, 3], [0, 1, 1, 2, 2, 2, 0]),
        (10, [3, 1], [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]),
    ],
)
def test_place(n: int, slots: list[int], nodes: list[int]) -> None:
    assert place(n, slots) == nodes


@pytest.mark.parametrize(("n", "slots"), [(-1, [1]), (2, []), (2, [1, 0]), (2, [-3])])
def test_place_errors(n: int, slots: list[int]) -> None:
    with pytest.raises(MappingError):
        place(n, slots)


@given(st.integers(0, 300), st.lists(st.integers(1, 9), min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_place_follows_the_slots(n: int, slots: list[int]) -> None:
    nodes = place(n, slots)
    assert len(nodes) == n
    # Walk the nodes in order, slots[i] ranks each, wrapping around.
    expected: list[int] = []
    while len(expected) < n:
        for i, s in enumerate(slots):
            expected.extend([i] * s)
    assert nodes == expected[:n]


@pytest.mark.parametrize(
    ("n", "slots", "distribution", "nodes"),
    [
        (4, [2, 2], "cyclic", [0, 1, 0, 1]),
        (5, [3, 3], "cyclic", [0, 1, 0, 1, 0]),
        # srun's: a node whose slots are taken is left out until every node's are.
        (4, [3, 1], "cyclic", [0, 1, 0, 0]),
        (6, [3, 1], "cyclic", [0, 1, 0, 0, 0, 1]),
        (2, [4, 4, 4], "cyclic", [0, 1]),
        (6, [3, 3], "plane=2", [0, 0, 1, 1, 0, 1]),
        (7, [4, 2], "plane=3", [0, 0, 0, 1, 1, 0, 0]),
        (5, [2, 2], "block", [0, 0, 1, 1, 0]),
    ],
)
def test_place_by_distribution(n: int, slots: list[int], distribution: str,
                               nodes: list[int]) -> None:
    assert place(n, slots, distribution) == nodes


@pytest.mark.parametrize(
    "n, slots, counts",
    [
        (4, [4, 1], [3, 1]),  # srun -N 2 -n 4 in an allocation of 4,1(x2) tasks
        (5, [4, 1, 1], [3, 1, 1]),
        (7, [4, 4, 4], [3, 2, 2]),  # equal nodes: as even as can be
        (7, [None, None, None], [3, 2, 2]),  # hosts without counts: likewise
        (5, [2, 1], [3, 2]),  # every node full: one a node over all of them
        (10, [1, 1], [5, 5]),
        (3, [1, None], [1, 2]),
        (0, [2, 2], [0, 0]),
    ],
)
def test_step_counts_are_sruns_layout(n: int, slots: list[int | None],
                                      counts: list[int]) -> None:
    assert step_counts(n, slots) == counts


@given(st.integers(0, 5), st.lists(st.integers(1, 9), min_size=1, max_size=12),
       st.sampled_from([1, 2, 5]), st.integers(0, 60))
@settings(max_examples=300, deadline=None)
def test_dealt_ranks_respect_the_slots(passes: int, slots: list[int], deal: int,
                                       extra: int) -> None:
    how = "cyclic" if deal == 1 else f"plane={deal}"
    # Whole passes over the slots: as many ranks a node as in blocks.
    whole = passes * sum(slots)
    assert sorted(place(whole, slots, how)) == sorted(place(whole, slots))
    # Within a pass: no node beyond its slots, and no node left behind by more than a
    # deal while it has room (a rank a node, round and round).
    n = min(extra, sum(slots))
    counts = [0] * len(slots)
    for node in place(n, slots, how):
        counts[node] += 1
    assert all(c <= s for c, s in zip(counts, slots, strict=True))
    most = max(counts)
    assert all(c >= min(s, most - deal) for c, s in zip(counts, slots, strict=True))


# --- deal: Hydra's host lists --------------------------------------------------


@pytest.mark.parametrize(("n", "entries", "nodes"), [
    # The cases compared with Hydra over real sshds (h1 is node 0, h2 node 1, ...).
    (5, [(0, 1), (1, 3)], [0, 1, 1, 1, 0]),  # -hosts h1,h2:3 -n 5
    (4, [(0, 1), (1, 1)], [0, 1, 0, 1]),  # -hosts h1,h2 -n 4
    (8, [(0, 1), (1, 1), (2, 1), (3, 2)], [0, 1, 2, 3, 3, 0, 1, 2]),  # h1,h2,h3,h4:2 -n 8
    (4, [(0, 1), (1, 1), (0, 1), (1, 1)], [0, 1, 0, 1]),  # h1,h2,h1,h2 -n 4
    (3, [(0, 1), (1, 1), (2, 1)], [0, 1, 2]),  # a file of h1, h2, h3; no -n
    (4, [(0, 2), (1, 1), (2, 1)], [0, 0, 1, 2]),  # h1:2, h2:1, h3; no -n
    (0, [(0, 1)], []),
])
def test_deal_is_hydras_placement(n: int, entries: list[tuple[int, int]],
                                  nodes: list[int]) -> None:
    assert deal(n, entries) == nodes


@given(st.integers(0, 60), st.lists(st.integers(1, 9), min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_deal_to_one_entry_a_node_is_places_block(n: int, slots: list[int]) -> None:
    entries = list(enumerate(slots))
    assert deal(n, entries) == place(n, slots)
    assert deal_slots(entries, len(slots)) == slots
    assert dealt_placement([n], entries, slots) == []  # (the slots say it: no list)


def test_dealt_placement_is_a_list_only_where_the_slots_would_differ() -> None:
    entries = [(0, 1), (1, 1), (0, 1), (1, 1)]  # -hosts a,b,a,b
    slots = deal_slots(entries, 2)
    assert slots == [2, 2]
    assert dealt_placement([4], entries, slots) == [0, 1, 0, 1]
    assert dealt_placement([1], entries, slots) == []  # (a either way)
    # MPMD: the programs' ranks dealt on, not each program from the first entry; Open
    # MPI's --rank-by numbers each program's ranks anew, node by node.
    assert dealt_placement([3, 2], entries, slots) == [0, 1, 0, 1, 0]
    assert dealt_placement([3, 2], entries, slots, "block") == [0, 0, 1, 0, 1]
    assert dealt_placement([4], None, slots) == []
    with pytest.raises(MappingError):
        deal(1, [])


def test_capacities_count_the_ranks_where_no_slots_were_given() -> None:
    # -hosts a,b,a,c -n 2: a has 2 slots (named twice), b and c none: the ranks there.
    assert capacities([2, None, None], deal(2, [(0, 1), (1, 1), (0, 1), (2, 1)]), 3) == \
        [2, 1, 0]


# --- process_mapping: golden values ------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "value"),
    [
        ([0, 0, 1, 1], "(vector,(0,2,2))"),
        ([0, 1, 0, 1], "(vector,(0,2,1),(0,2,1))"),
        ([0, 0, 0], "(vector,(0,1,3))"),
        ([0, 0, 1], "(vector,(0,1,2),(1,1,1))"),
        ([0], "(vector,(0,1,1))"),
        ([0, 0], "(vector,(0,1,2))"),
        ([0, 0, 0, 0, 1, 1, 1, 1], "(vector,(0,2,4))"),
        # What Intel's Hydra writes for three ranks on two nodes, one each.
        ([0, 1, 0], "(vector,(0,2,1),(0,1,1))"),
        ([0, 0, 1, 1, 0], "(vector,(0,2,2),(0,1,1))"),
        ([0] * 10, "(vector,(0,1,10))"),
        ([0, 1, 2] * 2, "(vector,(0,3,1),(0,3,1))"),
        ([0, 1, 1, 2, 2, 2, 0], "(vector,(0,1,1),(1,1,2),(2,1,3),(0,1,1))"),
        ([0, 0, 1, 1, 2, 2, 3], "(vector,(0,3,2),(3,1,1))"),
        ([1, 0], "(vector,(1,1,1),(0,1,1))"),
        ([1, 0, 1, 0], "(vector,(1,1,1),(0,2,1),(0,1,1))"),
        ([3, 3, 3], "(vector,(3,1,3))"),
    ],
)
def test_process_mapping_golden(nodes: list[int], value: str) -> None:
    assert process_mapping(nodes) == value
    assert parse_process_mapping(value, len(nodes)) == nodes


def test_hydra_placements() -> None:
    assert process_mapping(place(8, [4, 4])) == "(vector,(0,2,4))"
    assert process_mapping(place(4, [1, 1])) == "(vector,(0,2,1),(0,2,1))"
    assert process_mapping(place(16, [2, 2, 2, 2])) == "(vector,(0,4,2),(0,4,2))"
    assert process_mapping(place(9, [4, 4])) == "(vector,(0,2,4),(0,1,1))"
    assert process_mapping(place(6, [2, 1])) == "(vector,(0,1,2),(1,1,1),(0,1,2),(1,1,1))"
    # Block placement of 1024 ranks on 256 nodes stays tiny.
    assert process_mapping(place(1024, [4] * 256)) == "(vector,(0,256,4))"


def test_empty_and_bad_input() -> None:
    assert process_mapping([]) == ""
    with pytest.raises(MappingError):
        process_mapping([0, -1])
    err = MappingError("x")
    assert isinstance(err, PMError) and isinstance(err, ValueError)


def test_too_long_gives_no_mapping() -> None:
    # An irregular placement that needs one block per rank.
    rng = random.Random(7)
    nodes = [0] + [rng.randrange(1000, 2000) for _ in range(300)]
    assert process_mapping(nodes) == ""
    # Just under the limit is still written.
    short = [0] + [rng.randrange(10, 99) * 2 for _ in range(5)]
    value = process_mapping(short)
    assert value and len(value) <= MAX_MAPPING_LEN
    assert parse_process_mapping(value, len(short)) == short


def test_length_limit_is_exactly_1024() -> None:
    # "(vector," + k blocks "(a,1,1)" joined by commas + ")".  Node ids two
    # apart never merge, and all differ after rank 0, so nothing repeats.
    written = dropped = 0
    for k in range(60, 120):
        nodes = [0] + [10000 + 2 * i for i in range(1, k)]
        value = process_mapping(nodes)
        expected = "(vector," + ",".join(f"({a},1,1)" for a in nodes) + ")"
        if len(expected) <= MAX_MAPPING_LEN:
            assert value == expected
            written += 1
        else:
            assert value == ""
            dropped += 1
    assert written and dropped
    assert MAX_MAPPING_LEN == 1024


# --- round trips -------------------------------------------------------------


def block_count(value: str) -> int:
    return value.count("(") - 1


def process_mapping_of_prefix(prefix: list[int]) -> str:
    """Greedy block form of a list, written without repetition."""
    blocks: list[list[int]] = []
    i = 0
    while i < len(prefix):
        j = i
        while j < len(prefix) and prefix[j] == prefix[i]:
            j += 1
        node, count = prefix[i], j - i
        if blocks and blocks[-1][2] == count and blocks[-1][0] + blocks[-1][1] == node:
            blocks[-1][1] += 1
        else:
            blocks.append([node, 1, count])
        i = j
    return "(vector," + ",".join(f"({a},{b},{c})" for a, b, c in blocks) + ")"


@given(st.integers(1, 200), st.lists(st.integers(1, 8), min_size=1, max_size=10))
@example(192, [1, 2])  # 64 passes over two nodes: too long to write
@settings(max_examples=300, deadline=None)
def test_round_trip_of_hydra_placements(n: int, slots: list[int]) -> None:
    nodes = place(n, slots)
    value = process_mapping(nodes)
    if not value:
        # Many passes over small nodes: the whole value would not fit in a PMI value.
        assert len(process_mapping_of_prefix(nodes)) > MAX_MAPPING_LEN
        return
    assert parse_process_mapping(value, n) == nodes
    # At most a block per node for each pass over the nodes.
    assert block_count(value) <= len(slots) * -(-n // sum(slots))


@given(st.lists(st.integers(0, 4), min_size=1, max_size=40))
@settings(max_examples=400, deadline=None)
def test_round_trip_of_any_placement(nodes: list[int]) -> None:
    value = process_mapping(nodes)
    assert parse_process_mapping(value, len(nodes)) == nodes
    # Every rank written out, runs joined greedily: no reader has to start again.
    assert value == process_mapping_of_prefix(nodes)


def test_large_placement_is_fast_enough() -> None:
    nodes = place(100_000, [25_000] * 4)
    value = process_mapping(nodes)
    assert value == "(vector,(0,4,25000))"
    assert parse_process_mapping(value, 100_000) == nodes
    # Round robin over 4 nodes, 25,000 times: too long to write, so no mapping.
    assert process_mapping(place(100_000, [1] * 4)) == ""
    assert process_mapping([0] * 100_000) == "(vector,(0,1,100000))"


# --- the reader: MPICH's forms -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "n", "nodes"),
    [
        # The list starts again when ranks remain, and stops mid-block.
        ("(vector,(0,2,1))", 4, [0, 1, 0, 1]),
        ("(vector,(0,2,2))", 3, [0, 0, 1]),
        ("(vector,(0,2,2))", 0, []),
        # Bare node ids are (id,1,1).
        ("(vector,0,1,1)", 3, [0, 1, 1]),
        ("(vector,0,(1,1,2))", 6, [0, 1, 1, 0, 1, 1]),
        # [blocks]xK repeats blocks K times; what follows comes after them.
        ("(vector,[(0,2,1)]x2)", 4, [0, 1, 0, 1]),
        ("(vector,[(0,1,1),(1,1,2)]x2,(2,1,1))", 7, [0, 1, 1, 0, 1, 1, 2]),
        ("(vector,(0,1,2),[1,2]x2)", 6, [0, 0, 1, 2, 1, 2]),
        # Running out restarts at the last group...
        ("(vector,(0,1,2),[1,2]x2)", 8, [0, 0, 1, 2, 1, 2, 1, 2]),
        ("(vector,[0]x1,[1]x1)", 4, [0, 1, 1, 1]),
        # ...or, without groups, at the first block on node 0.
        ("(vector,(1,1,1),(0,1,2))", 5, [1, 0, 0, 0, 0]),
        ("(vector,(1,1,1),(0,1,1),(2,1,1))", 6, [1, 0, 2, 0, 2, 0]),
        # White space is allowed between tokens.
        (" ( vector , ( 0 , 2 , 1 ) ) ", 3, [0, 1, 0]),
        # More ranks written than needed is fine.
        ("(vector,(0,4,4))", 5, [0, 0, 0, 0, 1]),
    ],
)
def test_parse_mpich_forms(value: str, n: int, nodes: list[int]) -> None:
    assert parse_process_mapping(value, n) == nodes


@pytest.mark.parametrize(
    ("value", "n"),
    [
        ("", 2),
        ("vector,(0,1,2)", 2),
        ("(vectors,(0,1,2))", 2),
        ("(list,(0,1,2))", 2),
        ("(vector)", 2),
        ("(vector,(0,1))", 2),
        ("(vector,(0,1,2)", 2),
        ("(vector,(0,1,2)))", 2),
        ("(vector,(a,1,2))", 2),
        ("(vector,[(0,1,2)])", 2),
        ("(vector,[(0,1,2)]x)", 2),
        ("(vector,(0,-1,2))", 2),
        # Runs out with no block on node 0 to start again from.
        ("(vector,(1,1,1))", 2),
        # Starts again at a part that holds no ranks.
        ("(vector,(0,1,0))", 1),
        ("(vector,(1,1,1),[(0,0,3)]x5)", 2),
    ],
)
def test_parse_errors(value: str, n: int) -> None:
    with pytest.raises(MappingError):
        parse_process_mapping(value, n)


def test_parse_with_huge_repeat_count_stops_at_n() -> None:
    assert parse_process_mapping("(vector,[(0,1,1)]x999999999999)", 3) == [0, 0, 0]
    assert parse_process_mapping("(vector,[(0,0,1)]x999999999999,(0,1,1))", 2) == [0, 0]


# --- local_ranks -------------------------------------------------------------


def test_local_ranks() -> None:
    assert local_ranks([0, 1, 0, 1, 2]) == {0: [0, 2], 1: [1, 3], 2: [4]}
    assert list(local_ranks([2, 0, 1])) == [0, 1, 2]
    assert local_ranks([]) == {}


@given(st.integers(0, 100), st.lists(st.integers(1, 6), min_size=1, max_size=8))
@settings(max_examples=100, deadline=None)
def test_local_ranks_partition_the_ranks(n: int, slots: list[int]) -> None:
    nodes = place(n, slots)
    by_node = local_ranks(nodes)
    assert sorted(r for ranks in by_node.values() for r in ranks) == list(range(n))
    for node, ranks in by_node.items():
        assert ranks == sorted(ranks)
        assert all(nodes[r] == node for r in ranks)


# --- MPICH itself reads the strings ------------------------------------------

_RANK_PROGRAM = textwrap.dedent(
    """
    from mpi4py import MPI
    w = MPI.COMM_WORLD
    shared = w.Split_type(MPI.COMM_TYPE_SHARED)
    members = shared.allgather(w.Get_rank())
    print("node-mates", w.Get_rank(), *members, w.allreduce(1), flush=True)
    """
)


class _Job:
    """The job the PMI engine serves here: one fixed PMI_process_mapping, a flat KVS,
    a barrier over all ranks (the engine, pm.agent.pmi_engine, speaks the wire)."""

    def __init__(self, n: int, mapping: str) -> None:
        self.size = n
        self.kvsname = f"kvs_maptest_{uuid.uuid4().hex}"  # MPICH keys its shm by this
        self.mapping = mapping
        self.kvs: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(n)
        self.aborted: list[str] = []

    def appnum(self, rank: int) -> int:
        return 0

    def universe_size(self) -> int:
        return self.size

    def native_info(self, rank: int) -> dict[str, object]:
        return {}

    def job_attr(self, key: str) -> str | None:
        return self.mapping if key == "PMI_process_mapping" else None

    def put(self, rank: int, key: bytes, value: bytes) -> None:
        with self.lock:
            self.kvs[key] = value

    def get_now(self, key: bytes) -> bytes | None:
        with self.lock:
            return self.kvs.get(key)

    def node_attr_put(self, key: str, value: str) -> None:
        raise AssertionError("PMI-1 has no node attributes")

    def release(self, rank: int, ident: int) -> None:
        raise AssertionError("PMI-1 has no reservations")

    def serve(self, rank: int, sock: socket.socket) -> None:
        from pm.agent.pmi_engine import Close, Collective, Event, PmiEngine, Send

        engine = PmiEngine(self, rank)
        with sock:
            while data := sock.recv(65536):
                acts = engine.feed(data)
                while acts:
                    act = acts.pop(0)
                    if isinstance(act, Send):
                        sock.sendall(act.data)
                    elif isinstance(act, Collective):
                        try:
                            self.barrier.wait(timeout=60)
                        except threading.BrokenBarrierError:
                            return
                        acts += engine.complete(act.token, None)
                    elif isinstance(act, Close) or (isinstance(act, Event)
                                                    and act.name in ("abort", "error")):
                        self.aborted.append(f"rank {rank}: {act}")
                        self.barrier.abort()
                        return


def _node_mates_under_mpich(nodes: list[int], mapping: str) -> dict[int, list[int]]:
    """Run len(nodes) MPICH ranks given ``mapping``; each rank's MPI shared-memory group."""
    server = _Job(len(nodes), mapping)
    procs: list[subprocess.Popen[str]] = []
    threads: list[threading.Thread] = []
    try:
        for rank in range(len(nodes)):
            ours, theirs = socket.socketpair()
            env = dict(os.environ, PMI_FD=str(theirs.fileno()), PMI_RANK=str(rank))
            env["PMI_SIZE"] = str(len(nodes))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _RANK_PROGRAM],
                    env=env,
                    pass_fds=[theirs.fileno()],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            theirs.close()
            threads.append(threading.Thread(target=server.serve, args=(rank, ours),
                                            daemon=True))
            threads[-1].start()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert not server.aborted, server.aborted
    assert [p.returncode for p in procs] == [0] * len(nodes)
    mates: dict[int, list[int]] = {}
    for out in outputs:
        for line in out.splitlines():
            if line.startswith("node-mates "):
                _, who, *members, total = line.split()
                assert int(total) == len(nodes)
                mates[int(who)] = [int(m) for m in members]
    return mates


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "nodes",
    [
        place(4, [1, 1]),  # (0,2,1), read twice
        place(5, [2, 2]),  # (0,2,2), the second pass stops inside the block
        [0, 1, 0, 0, 1, 0],  # a repeated prefix that ends inside a run
        [1, 0, 1, 0],  # rank 0 not on node 0: written out in full
    ],
)
def test_mpich_reads_the_mapping(nodes: list[int]) -> None:
    pytest.importorskip("mpi4py")
    mapping = process_mapping(nodes)
    want = local_ranks(nodes)
    mates = _node_mates_under_mpich(nodes, mapping)
    assert mates == {r: want[nodes[r]] for r in range(len(nodes))}


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpich_check_catches_a_wrong_mapping() -> None:
    # The check above can fail: a mapping that puts all four ranks on one node
    # makes MPICH group them all together.
    pytest.importorskip("mpi4py")
    mates = _node_mates_under_mpich([0, 1, 0, 1], "(vector,(0,1,4))")
    assert mates == {r: [0, 1, 2, 3] for r in range(4)}


@pytest.mark.parametrize(("node_of_rank", "order", "starts", "want"), [
    ([0, 1, 0, 1, 0], "block", (0,), [0, 0, 0, 1, 1]),  # --map-by node --rank-by slot
    ([0, 0, 0, 1, 1], "cyclic", (0,), [0, 1, 0, 1, 0]),  # --rank-by node
    ([0, 0, 0, 0, 1], "cyclic", (0,), [0, 1, 0, 0, 0]),  # a node's numbered: left out
    ([2, 2, 0], "cyclic", (0,), [0, 2, 2]),
    ([0, 0, 1, 1, 2, 0], "cyclic", (0, 4), [0, 1, 0, 1, 0, 2]),  # each program apart
    ([], "block", (0,), []),
])
def test_ranked_numbers_each_nodes_ranks_as_open_mpis_rank_by(
        node_of_rank: list[int], order: str, starts: tuple[int, ...], want: list[int]) -> None:
    got = ranked(node_of_rank, order, starts)
    assert got == want
    for lo, hi in itertools.pairwise([*starts, len(node_of_rank)]):  # the same counts
        assert sorted(got[lo:hi]) == sorted(node_of_rank[lo:hi])


# ------------------------------------------------------------------ Open MPI's rankfile


def test_rankfile_lines_are_read_in_rank_order() -> None:
    from pm.common.rankfile import RankLine, parse

    text = "# ranks\nrank 1=+n2 slot=0:1-2  # a comment\n\nRANK 0 = aa\nrank 2=bb slot=3,5\n"
    assert parse(text) == [RankLine("aa", None, ""), RankLine("", 2, "0:1-2"),
                           RankLine("bb", None, "3,5")]


@pytest.mark.parametrize(("text", "message"), [
    ("", "no rank in the file"),
    ("rank 0=aa\nrank 0=bb\n", "line 2: rank 0 is placed twice"),
    ("rank 1=aa\n", "rank 0 is missing"),
    ("rank 0 aa\n", "line 1: 'rank 0 aa' is not 'rank N=HOST slot=LIST'"),
    ("rank 0=aa slot=2-1\n", "line 1: slot=2-1: the range 2-1 runs backwards"),
    ("rank 0=aa slot=*\n", "line 1: slot=*: '*' is not a core"),
    ("rank 0=aa slot=0:*,3\n", "nothing follows '0:*' but another package"),
])
def test_rankfile_mistakes_are_named(text: str, message: str) -> None:
    from pm.common.rankfile import RankfileError, parse

    with pytest.raises(RankfileError, match=re.escape(message)):
        parse(text, "f")


@pytest.mark.parametrize(("text", "ids", "again"), [
    ("1,1,2,2", [1, 1, 2, 2], None),
    ("(1,2,2)", [1, 1, 2, 2], None),  # Hydra's help: the same as 1,1,2,2
    ("(vector,0,1)", [0, 1], 0),
    (" 2, [0 ,1]x3", [2, 0, 1, 0, 1, 0, 1], 1),
    ("0,(1,2,1),3", [0, 1, 2, 3], 0),
    ("[(0,2,1)]x2,5", [0, 1, 0, 1, 5], 0),
])
def test_hydra_rankmap_reads_ids_blocks_and_repeats(text: str, ids: list[int],
                                                    again: int | None) -> None:
    from pm.common.rankfile import parse_rankmap

    assert parse_rankmap(text) == (ids, again)


@pytest.mark.parametrize(("text", "message"), [
    ("x", "no node id at 0"), ("1,,2", "no node id at 2"), ("[0,1", "no ']' closes a group"),
    ("[0,1],2", "']' at 4 needs its count"), ("(1,2)", "no node id at 0"), ("", "no node id"),
    ("1 2", "'2' at 2"),
])
def test_hydra_rankmap_mistakes_are_named(text: str, message: str) -> None:
    from pm.common.rankfile import RankfileError, parse_rankmap

    with pytest.raises(RankfileError, match=re.escape(message)):
        parse_rankmap(text)


def test_rankfile_slots_are_logical_cores_or_a_packages() -> None:
    from pm.common.rankfile import RankfileError, slot_cpus

    # Two packages of two cores, two hardware threads each: PUs 0,4 / 1,5 / 2,6 / 3,7.
    cores = [frozenset({c, c + 4}) for c in range(4)]
    packages = [cores[0] | cores[1], cores[2] | cores[3]]
    assert slot_cpus("1-2", cores, packages) == {1, 5, 2, 6}
    assert slot_cpus("1:0", cores, packages) == {2, 6}
    assert slot_cpus("0:1,1:*", cores, packages) == {1, 5, 2, 6, 3, 7}
    assert slot_cpus("0,1:1", cores, packages) == {0, 4, 3, 7}
    with pytest.raises(RankfileError,
                       match=re.escape("core 2 does not exist in package 1 (it has 2)")):
        slot_cpus("1:2", cores, packages)
    with pytest.raises(RankfileError, match="package 2 does not exist here"):
        slot_cpus("2:0", cores, packages)
    with pytest.raises(RankfileError, match="core 4 does not exist on this node"):
        slot_cpus("4", cores, packages)
