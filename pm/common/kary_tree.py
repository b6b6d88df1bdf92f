"""The k-ary tree of node agents, as a pure object.

Vertices are numbered ``0 .. size-1`` in depth-first pre-order, so every
subtree is a contiguous range of ids that starts with its root.  That is what
makes routing a range check and lets a ring collective exchange only the
boundary values of each subtree.

Shape: a vertex ``v`` whose subtree holds ``s`` vertices splits the other
``s - 1`` into ``min(fanout, s - 1)`` contiguous chunks, as equal as possible
(earlier chunks get the extra vertex); each chunk is a child subtree whose
first id is the child.  Equal chunks make the height the least any tree of
this size and fanout can have (about ``log_fanout(size)``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

__all__ = ["Tree"]


class Tree:
    """A k-ary tree of ``size`` vertices numbered in DFS pre-order.

    All tables are built in ``__init__`` in O(size); every query is O(1)
    except ``route``, which is O(log fanout).  Vertex arguments outside
    ``0 .. size-1`` raise ``IndexError``.
    """

    __slots__ = ("_children", "_depth", "_end", "_height", "_parent", "fanout", "size")

    size: int
    fanout: int

    def __init__(self, size: int, fanout: int) -> None:
        """Build the tree; ``ValueError`` unless ``size >= 1`` and ``fanout >= 1``."""
        if size < 1:
            raise ValueError(f"tree size must be >= 1, got {size}")
        if fanout < 1:
            raise ValueError(f"tree fanout must be >= 1, got {fanout}")
        self.size = size
        self.fanout = fanout
        parent: list[int] = [-1] * size
        end: list[int] = [0] * size  # subtree(v) == range(v, end[v])
        depth: list[int] = [0] * size
        children: list[tuple[int, ...]] = [()] * size
        end[0] = size
        # Each vertex is finished by its parent before it is visited, so a plain
        # increasing walk over ids is a valid top-down order (pre-order numbering).
        for v in range(size):
            rest = end[v] - v - 1
            if rest == 0:
                continue
            k = min(fanout, rest)
            q, r = divmod(rest, k)
            kids: list[int] = []
            c = v + 1
            d = depth[v] + 1
            for i in range(k):
                n = q + 1 if i < r else q
                kids.append(c)
                parent[c] = v
                end[c] = c + n
                depth[c] = d
                c += n
            children[v] = tuple(kids)
        self._parent = parent
        self._end = end
        self._depth = depth
        self._children = children
        self._height = max(depth)

    def _check(self, v: int) -> None:
        if not 0 <= v < self.size:
            raise IndexError(f"vertex {v} not in a tree of size {self.size}")

    def parent(self, v: int) -> int | None:
        """The parent of ``v``, or ``None`` for the root (vertex 0)."""
        self._check(v)
        p = self._parent[v]
        return None if p < 0 else p

    def children(self, v: int) -> tuple[int, ...]:
        """The children of ``v`` in increasing order (empty for a leaf)."""
        self._check(v)
        return self._children[v]

    def subtree(self, v: int) -> range:
        """The contiguous ids of ``v``'s subtree, ``v`` first."""
        self._check(v)
        return range(v, self._end[v])

    def depth(self, v: int) -> int:
        """Distance of ``v`` from the root; the root's depth is 0."""
        self._check(v)
        return self._depth[v]

    def height(self) -> int:
        """The largest depth of any vertex (0 for a single vertex)."""
        return self._height

    def route(self, src: int, dst: int) -> int:
        """Next hop from ``src`` towards ``dst``.

        That is the child of ``src`` whose subtree holds ``dst`` if there is
        one, else the parent of ``src``.  ``ValueError`` if ``src == dst``.
        """
        self._check(src)
        self._check(dst)
        if src == dst:
            raise ValueError(f"route from vertex {src} to itself")
        if src < dst < self._end[src]:
            kids = self._children[src]
            # Children's subtrees tile (src, end[src]) in order: the last child
            # whose id is <= dst is the one holding dst.
            return kids[bisect_right(kids, dst) - 1]
        return self._parent[src]

    def level_order(self) -> list[int]:
        """All vertices breadth-first from the root, children in increasing order."""
        out: list[int] = []
        todo: deque[int] = deque((0,))
        while todo:
            v = todo.popleft()
            out.append(v)
            todo.extend(self._children[v])
        return out

    def __repr__(self) -> str:
        return f"Tree(size={self.size}, fanout={self.fanout})"
