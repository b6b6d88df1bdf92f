"""The node's memory as the kernel reports it: probes for memory subscription control.

* :class:`NodeMemory` / :func:`read_node_memory` -- the node's total and used
  bytes, from the memory cgroup it runs under (v2 or v1) or ``/proc/meminfo``.
* :func:`tree_pids`, :func:`tree_rss` -- a process and its descendants, and
  the bytes they hold (``/proc/<pid>``).

Reading the kernel's figures is apart from :mod:`pm.agent.memory` (what admits
and polices work against them) because it is plain synchronous file parsing,
used on its own too (ensembles probe nodes and process trees with it), while
the governor is asyncio state; :mod:`pm.agent.memory` re-exports these names.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from pm.agent.admission import SizeError


@dataclass(frozen=True)
class MemorySnapshot:
    """The node's memory as admission sees it.

    ``total``: the memory cgroup limit when the process (or the cgroup
    given) is under one smaller than the machine, else MemTotal.
    ``used``: for a cgroup, its usage minus its inactive page cache
    (``inactive_file``: the kernel reclaims it before it OOM-kills, so it is
    not pressure); for the machine, MemTotal - MemAvailable.
    ``limit_source``: ``"cgroup2:<dir>"``, ``"cgroup1:<dir>"`` or ``"meminfo"``.
    """

    total: int
    used: int
    limit_source: str

    @property
    def available(self) -> int:
        return max(0, self.total - self.used)


_V2 = ("memory.max", "memory.current", "inactive_file")
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _read_int(path: Path) -> int | None:
    """An integer file, or None for "max", a missing file or a vanished cgroup."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def _stat_field(directory: Path, name: str) -> int:
    try:
        with open(directory / "memory.stat") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == name:
                    return int(value)
    except OSError:
        pass
    return 0


def _own_cgroup() -> tuple[Path, tuple[str, str, str]] | None:
    """The memory cgroup directory of this process and its file names, if visible."""
    v1_path = v2_path = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and controllers == "":
                v2_path = path
            elif "memory" in controllers.split(","):
                v1_path = path
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        sep = fields.index("-")
        fstype, root, point, opts = fields[sep + 1], fields[3], fields[4], fields[-1]
        if fstype == "cgroup" and v1_path is not None and "memory" in opts.split(","):
            path, files = v1_path, _V1
        elif fstype == "cgroup2" and v2_path is not None and v1_path is None:
            path, files = v2_path, _V2
        else:
            continue
        # A mount may expose only a subtree (containers): map the path under its root.
        rel = os.path.relpath(path, root)
        if not rel.startswith(".."):
            return Path(point, rel).resolve(), files
    return None


class NodeMemory:
    """A probe of the node's memory, resolved once, read on every :meth:`read`.

    ``cgroup``: a cgroup directory to watch (v1 memory hierarchy or v2, told
    apart by its files), e.g. the cgroup the tasks run in; default: this
    process's own memory cgroup.  The limit is the smallest one on the path
    from that cgroup up to the mount point, and the usage is read where
    that limit is set.  With no limit below MemTotal the machine's figures
    from /proc/meminfo are used.
    """

    def __init__(self, cgroup: str | os.PathLike[str] | None = None) -> None:
        self._chain: list[Path] = []
        self._files = _V2
        if cgroup is not None:
            start = Path(cgroup)
            self._files = _V2 if (start / "memory.current").exists() else _V1
            if not (start / self._files[1]).exists():
                raise SizeError(f"{start} is not a memory cgroup directory")
        else:
            own = _own_cgroup()
            if own is None:
                return
            start, self._files = own
        # Walk up while the parent is a cgroup of the same hierarchy.
        d = start
        while (d / self._files[1]).exists() or (d / self._files[0]).exists():
            self._chain.append(d)
            if d.parent == d:
                break
            d = d.parent

    def read(self) -> MemorySnapshot:
        info = _meminfo()
        mem_total = info["MemTotal"]
        best: tuple[int, Path] | None = None
        for d in self._chain:
            limit = _read_int(d / self._files[0])
            if limit is not None and limit < mem_total and (best is None or limit < best[0]):
                best = (limit, d)
        if best is not None:
            limit, d = best
            current = _read_int(d / self._files[1])
            if current is not None:
                used = max(0, current - _stat_field(d, self._files[2]))
                version = "cgroup2" if self._files is _V2 else "cgroup1"
                return MemorySnapshot(limit, used, f"{version}:{d}")
        available = info.get("MemAvailable", info.get("MemFree", 0))
        return MemorySnapshot(mem_total, mem_total - available, "meminfo")

    def used(self) -> int:
        """``read().used``: a usage source for :class:`MemoryGovernor`."""
        return self.read().used


def read_node_memory(cgroup: str | os.PathLike[str] | None = None) -> MemorySnapshot:
    """One-off :meth:`NodeMemory.read` (see :class:`NodeMemory` for ``cgroup``)."""
    return NodeMemory(cgroup).read()


_PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (empty if ``pid`` is gone).

    Reads ``/proc/<pid>/task/<tid>/children``; a process exiting mid-walk
    is skipped (its children, reparented, are lost for this walk).
    """
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        out.append(p)
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
            except OSError:
                continue
    return out


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])  # after "(comm)": state, ppid


def _send(fd: int, sig: int) -> bool:
    try:
        signal.pidfd_send_signal(fd, sig)
    except OSError:  # ended and reaped, not ours, or the fd closed under us
        return False
    return True


def pidfd_alive(fd: int) -> bool:
    """True while the process ``fd`` names is not reaped (its pid is still its own)."""
    return _send(fd, 0)


def signal_tree(pidfd: int, pid: int, sig: int) -> int:
    """Send ``sig`` to the process ``pidfd`` names (``pid``) and to its descendants.

    Only to processes this call can prove are that tree: each one through a
    pidfd opened first, and signalled only if its parent is still the process
    it was found under (that parent's pidfd still names a live or unreaped
    process, so its pid was not reused).  A pid that ended and was reused by
    someone else is never signalled.  Returns how many processes got ``sig``.
    """
    sent = 0
    if _send(pidfd, 0):
        # Children first found, then the root signalled last: a stopped or killed root
        # does not hide its children (they stay its children until it is reaped).
        stack: list[tuple[int, int]] = [(pid, pidfd)]
        owned: list[int] = []
        verified: list[int] = []
        try:
            while stack:
                p, pfd = stack.pop()
                for child in _children(p):
                    try:
                        cfd = os.pidfd_open(child)
                    except OSError:
                        continue  # gone already
                    owned.append(cfd)
                    try:
                        ours = _ppid(child) == p and _send(pfd, 0)
                    except (OSError, ValueError, IndexError):
                        ours = False
                    if ours:
                        verified.append(cfd)
                        stack.append((child, cfd))
            for fd in verified:
                sent += _send(fd, sig)
        finally:
            for fd in owned:
                os.close(fd)
        sent += _send(pidfd, sig)
    return sent


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def tree_rss(pid: int, *, pss: bool = False) -> int:
    """Resident bytes of ``pid`` and its descendants; 0 if it is gone.

    RSS (from ``statm``) counts shared pages once per process, so it
    overestimates a tree sharing libraries; ``pss=True`` reads the
    proportional figure from ``smaps_rollup`` instead (exact, but the kernel
    walks page tables: costs more for big processes).
    """
    total = 0
    for p in tree_pids(pid):
        try:
            if pss:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    total += next(
                        (int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:")), 0
                    )
            else:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):  # exited between the walk and the read
            continue
    return total
