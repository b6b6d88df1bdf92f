"""Output of ranks as lines: assembled from a rank's pipes on the agent, and the credit
they travel on; which ranks' output is written, and which stdin goes to rank 0.

The head writes the lines (tagging, files, output that cannot be written) with
:class:`pm.common.output_writer.Writer`.
"""

from __future__ import annotations

import os
import stat

#: A partial line is held until its newline comes up to this length; a longer one goes on
#: as it comes, in pieces (a rank printing without newlines: memory stays bounded).
MAX_LINE = 1 << 20

STDOUT = 1
STDERR = 2


class LineBuffer:
    """Turns a stream's chunks into complete lines (newline included), its bytes as they are.

    A partial line is held until its newline comes; one of :data:`MAX_LINE` bytes without
    one is passed on from then on as it comes, in pieces, until its newline.  At EOF the last
    partial line comes as it is (no newline is added).  :attr:`open` says whether what was
    passed on so far ends inside a line (a long line's piece, or that last line): the
    writer is then told the stream's end (:meth:`pm.common.output_writer.Writer.write`
    with no bytes), so that it knows that line will not go on.  ``raw`` (srun's ``-u``):
    no line is held, every chunk passes as it came."""

    __slots__ = ("_part", "_raw", "open")

    def __init__(self, raw: bool = False) -> None:
        self._part = b""
        self._raw = raw
        self.open = False

    def feed(self, data: bytes) -> bytes:
        """The complete lines in ``data`` (with what was left before); keeps the rest."""
        if self._raw:
            return data
        if self.open:  # in a long line: its bytes go on as they come, up to its end
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                return data
            self.open = False
            self._part = data[cut:]
            return data[:cut]
        buf = self._part + data if self._part else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) >= MAX_LINE:
                self._part = b""
                self.open = True
                return buf
            self._part = buf
            return b""
        self._part = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        """At EOF: the last partial line, as it is."""
        part, self._part = self._part, b""
        if part:
            self.open = True
        return part


def output_window(nodes: int) -> int:
    """Bytes of output a node's agent may have on their way to the head (its credit): the
    head holds at most ``nodes`` times this while its stdout is slow."""
    return max(OUTPUT_WINDOW_MIN, OUTPUT_BUDGET // max(1, nodes))


#: What the head may hold of the ranks' output in all, and at least per node.
OUTPUT_BUDGET = 8 << 20
OUTPUT_WINDOW_MIN = 256 << 10


def read_ready(fd: int) -> bytes | None:
    """One read of ``fd`` that the loop said is readable: its bytes, ``b""`` at its end (or
    an error), None if nothing was there after all."""
    try:
        return os.read(fd, PIPE_READ)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def read_pipe(fd: int, buf: LineBuffer) -> tuple[bytes, int]:
    """One read of a rank's output pipe (non-blocking), assembled into lines by ``buf``.

    Returns the complete lines and how many bytes were read: -1 if none were
    there yet, 0 at EOF (the last partial line comes with it; the caller
    closes ``fd``).  The only reader of ranks' pipes, in every phase.
    """
    data = read_ready(fd)
    if data is None:
        return b"", -1
    return (buf.feed(data) if data else buf.flush()), len(data)


#: Bytes read from a rank's pipe at once (a pipe holds 64 KiB by default).
PIPE_READ = 65536


def rank_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``0-3,5`` as ranges of ranks (Hydra's ``-output-from 0``); ValueError if it is not."""
    out = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdecimal() or (dash and (not hi.isdecimal() or int(hi) < int(lo))):
            raise ValueError(f"{text!r} is not ranks (0, or 0-3,5)")
        out.append((int(lo), int(hi) if dash else int(lo)))
    return tuple(out)


def stdin_for_job() -> int | None:
    """Our stdin, if there is one worth forwarding to rank 0."""
    try:
        st = os.fstat(0)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode) and not os.isatty(0):
        return None  # /dev/null and the like
    return 0


def rank_map(node_of_rank: list[int], hosts: list[str]) -> str:
    """-print-rank-map: each node's ranks (``0-3,8``), one line per node, in node order."""
    from pm.agent.topology import format_cpuset  # (a kernel-style list of numbers)

    per_node: dict[int, list[int]] = {}
    for rank, node in enumerate(node_of_rank):
        per_node.setdefault(node, []).append(rank)
    return "".join(f"pmrun: rank map: node {node} ({hosts[node]}): {format_cpuset(ranks)}\n"
                   for node, ranks in sorted(per_node.items()))
