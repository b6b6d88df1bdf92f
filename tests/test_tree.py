"""pm.common.kary_tree: shape, pre-order numbering, routing and speed of the agent tree."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pm.common.kary_tree import Tree

pytestmark = pytest.mark.timeout(60)


def shape(t: Tree) -> dict[int, tuple[int, ...]]:
    return {v: t.children(v) for v in range(t.size) if t.children(v)}


def min_height(size: int, fanout: int) -> int:
    """The least height of any tree with this many vertices and this fanout."""
    h, cap, level = 0, 1, 1
    while cap < size:
        level *= fanout
        cap += level
        h += 1
    return h


def test_single_vertex() -> None:
    t = Tree(1, 4)
    assert t.parent(0) is None
    assert t.children(0) == ()
    assert t.subtree(0) == range(0, 1)
    assert t.depth(0) == 0
    assert t.height() == 0
    assert t.level_order() == [0]
    with pytest.raises(ValueError):
        t.route(0, 0)


def test_two_vertices() -> None:
    t = Tree(2, 3)
    assert shape(t) == {0: (1,)}
    assert t.parent(1) == 0
    assert t.route(0, 1) == 1
    assert t.route(1, 0) == 0
    assert t.height() == 1


def test_seven_binary_is_the_perfect_tree_in_preorder() -> None:
    t = Tree(7, 2)
    assert shape(t) == {0: (1, 4), 1: (2, 3), 4: (5, 6)}
    assert [t.parent(v) for v in range(7)] == [None, 0, 1, 1, 0, 4, 4]
    assert t.subtree(1) == range(1, 4)
    assert t.subtree(4) == range(4, 7)
    assert [t.depth(v) for v in range(7)] == [0, 1, 2, 2, 1, 2, 2]
    assert t.height() == 2
    assert t.level_order() == [0, 1, 4, 2, 3, 5, 6]
    assert t.route(2, 6) == 1
    assert t.route(1, 6) == 0
    assert t.route(0, 6) == 4
    assert t.route(4, 6) == 6


def test_thirteen_ternary() -> None:
    t = Tree(13, 3)
    assert shape(t) == {0: (1, 5, 9), 1: (2, 3, 4), 5: (6, 7, 8), 9: (10, 11, 12)}
    assert t.height() == 2
    assert t.level_order() == [0, 1, 5, 9, 2, 3, 4, 6, 7, 8, 10, 11, 12]


def test_uneven_chunks_give_the_extra_vertex_to_earlier_children() -> None:
    # 9 vertices, fanout 3: the other 8 split 3, 3, 2.
    t = Tree(9, 3)
    assert t.children(0) == (1, 4, 7)
    assert [len(t.subtree(c)) for c in t.children(0)] == [3, 3, 2]
    # Fewer remaining vertices than the fanout: one child each.
    assert Tree(3, 8).children(0) == (1, 2)


def test_fanout_one_is_a_chain() -> None:
    t = Tree(5, 1)
    assert shape(t) == {0: (1,), 1: (2,), 2: (3,), 3: (4,)}
    assert t.height() == 4
    assert t.route(4, 0) == 3
    assert t.route(0, 4) == 1


@pytest.mark.parametrize(("size", "fanout"), [(0, 2), (-1, 2), (3, 0), (3, -2)])
def test_bad_arguments(size: int, fanout: int) -> None:
    with pytest.raises(ValueError):
        Tree(size, fanout)


def test_out_of_range_vertex() -> None:
    t = Tree(5, 2)
    for bad in (-1, 5):
        with pytest.raises(IndexError):
            t.parent(bad)
        with pytest.raises(IndexError):
            t.route(0, bad)


def check_consistent(t: Tree) -> None:
    """Every invariant that ties parent, children, subtree and depth together."""
    seen_children = 0
    for v in range(t.size):
        sub = t.subtree(v)
        assert sub.start == v and sub.step == 1 and len(sub) >= 1
        kids = t.children(v)
        assert list(kids) == sorted(kids)
        assert len(kids) <= t.fanout
        seen_children += len(kids)
        # The children's subtrees tile the rest of v's subtree in order.
        nxt = v + 1
        for c in kids:
            assert c == nxt
            assert t.parent(c) == v
            assert t.depth(c) == t.depth(v) + 1
            nxt = t.subtree(c).stop
        assert nxt == sub.stop
        # Equal split: sibling subtree sizes differ by at most one, larger first.
        sizes = [len(t.subtree(c)) for c in kids]
        assert sizes == sorted(sizes, reverse=True)
        assert not sizes or sizes[0] - sizes[-1] <= 1
        assert len(kids) == min(t.fanout, len(sub) - 1)
    assert seen_children == t.size - 1
    assert t.parent(0) is None
    assert t.subtree(0) == range(t.size)
    assert t.height() == max(t.depth(v) for v in range(t.size))
    order = t.level_order()
    assert sorted(order) == list(range(t.size))
    assert [t.depth(v) for v in order] == sorted(t.depth(v) for v in order)


@given(st.integers(1, 400), st.integers(1, 9))
@settings(max_examples=150, deadline=None)
def test_structure_is_consistent(size: int, fanout: int) -> None:
    t = Tree(size, fanout)
    check_consistent(t)
    # Equal chunks make the tree as shallow as any tree of this fanout can be.
    assert t.height() == min_height(size, fanout)


@pytest.mark.parametrize("fanout", [2, 3, 8, 32])
def test_height_of_large_trees(fanout: int) -> None:
    for size in (1000, 4097, 100_000):
        t = Tree(size, fanout)
        assert t.height() == min_height(size, fanout)
        # min_height is at most ceil(log_fanout(size)).
        bound, cap = 0, 1
        while cap < size:
            cap *= fanout
            bound += 1
        assert t.height() <= bound


def path(t: Tree, src: int, dst: int) -> list[int]:
    hops = [src]
    while hops[-1] != dst:
        hops.append(t.route(hops[-1], dst))
        assert len(hops) <= t.size, "routing loops"
    return hops


def lca(t: Tree, a: int, b: int) -> int:
    ancestors = set()
    v: int | None = a
    while v is not None:
        ancestors.add(v)
        v = t.parent(v)
    v = b
    while v not in ancestors:
        p = t.parent(v)
        assert p is not None
        v = p
    return v


@given(st.data(), st.integers(1, 2000), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_route_reaches_any_vertex_on_the_tree_path(
    data: st.DataObject, size: int, fanout: int
) -> None:
    t = Tree(size, fanout)
    src = data.draw(st.integers(0, size - 1))
    dst = data.draw(st.integers(0, size - 1))
    if src == dst:
        with pytest.raises(ValueError):
            t.route(src, dst)
        return
    hops = path(t, src, dst)
    assert len(hops) - 1 <= t.depth(src) + t.depth(dst)
    # Exactly the tree path: up to the lowest common ancestor, then down.
    a = lca(t, src, dst)
    assert len(hops) - 1 == t.depth(src) + t.depth(dst) - 2 * t.depth(a)
    assert a in hops
    for u, w in itertools.pairwise(hops):
        assert t.parent(u) == w or t.parent(w) == u


def test_route_in_all_pairs_of_a_small_tree() -> None:
    t = Tree(23, 3)
    for src in range(t.size):
        for dst in range(t.size):
            if src != dst:
                nxt = t.route(src, dst)
                if dst in t.subtree(src):
                    assert nxt in t.children(src) and dst in t.subtree(nxt)
                else:
                    assert nxt == t.parent(src)


@pytest.mark.timeout(30)
def test_large_tree_is_fast() -> None:
    t0 = time.perf_counter()
    t = Tree(100_000, 16)
    built = time.perf_counter() - t0
    order = t.level_order()
    for v in range(0, 100_000, 7):
        if v != 99_999 - v:
            t.route(v, 99_999 - v)
        t.subtree(v)
        t.children(v)
    elapsed = time.perf_counter() - t0
    assert len(order) == 100_000
    # "Well under a second" on a shared two-core machine; generous margins.
    assert built < 0.5, built
    assert elapsed < 1.0, elapsed
