"""Memory-capped cgroups for tests (needs root and a memory cgroup hierarchy).

``with memory_cgroup(256 << 20) as cg:`` creates a fresh cgroup with that
memory limit and no swap, and removes it at exit after killing whatever is
still in it.  Commands join it through :meth:`MemCgroup.wrap` (a shell that
writes its own pid to ``cgroup.procs`` and then execs the command, so the
command is inside the cgroup before its first allocation) or
:meth:`MemCgroup.add`.

Where: with cgroup v2 (memory controller on the unified hierarchy), a new
child of the hierarchy's root, because the root is exempt from the "no
internal processes" rule and so can enable ``+memory`` for its children
while still holding processes; with cgroup v1, a child of this process's
own memory cgroup (v1 has no such rule).  If neither works, the context
manager skips the test with the reason (:func:`cgroup_unavailable`).
:func:`capped_cgroup` is the same without pytest (benchmarks): it raises
:class:`CgroupUnavailable` instead of skipping.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()


def _mounts() -> list[tuple[str, str, str, str]]:
    """(fstype, root, mount point, super options) of the cgroup mounts."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] in ("cgroup", "cgroup2"):
                out.append((fields[sep + 1], fields[3], fields[4], fields[-1]))
    return out


def _own_path(v1: bool) -> str | None:
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if v1 and "memory" in controllers.split(","):
                return path
            if not v1 and hid == "0" and controllers == "":
                return path
    return None


def _parent_dir() -> tuple[Path, int] | str:
    """Where to create the test cgroup and its version, or why it cannot be done."""
    if os.geteuid() != 0:
        return "creating cgroups needs root"
    mounts = _mounts()
    for fstype, root, point, _ in mounts:
        if fstype == "cgroup2" and root == "/":
            base = Path(point)
            controllers = (base / "cgroup.controllers").read_text().split()
            if "memory" not in controllers:
                continue  # hybrid setup: memory lives in the v1 hierarchy
            try:
                (base / "cgroup.subtree_control").write_text("+memory")
            except OSError as e:
                return f"cannot enable +memory in {base}/cgroup.subtree_control: {e}"
            return base, 2
    own = _own_path(v1=True)
    for fstype, root, point, opts in mounts:
        if fstype == "cgroup" and "memory" in opts.split(",") and own is not None:
            rel = os.path.relpath(own, root)
            if not rel.startswith(".."):
                return Path(point, rel).resolve(), 1
    return "no memory cgroup hierarchy (v2 with +memory, or v1) is mounted and writable"


def cgroup_unavailable() -> str | None:
    """None if :func:`memory_cgroup` can work here, else the reason it cannot."""
    where = _parent_dir()
    if isinstance(where, str):
        return where
    if not os.access(where[0], os.W_OK):
        return f"{where[0]} is not writable"
    return None


@dataclass
class MemCgroup:
    """A memory-capped cgroup made by :func:`memory_cgroup`."""

    path: Path
    version: int  # 1 or 2
    limit: int

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this cgroup from its first instruction."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs_file), *argv]

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def add(self, pid: int) -> None:
        self.procs_file.write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in self.procs_file.read_text().split()]

    def current(self) -> int:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return int((self.path / name).read_text())

    def peak(self) -> int | None:
        """Highest usage since creation (v2 needs memory.peak, Linux >= 5.19)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except FileNotFoundError:
            return None

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in this cgroup."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError(f"{self.path / name} has no oom_kill counter (kernel too old)")

    def kill_all(self, deadline: float) -> None:
        """Kill every process inside and poll until the cgroup is empty or ``deadline``."""
        kill_file = self.path / "cgroup.kill"
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            if kill_file.exists():
                kill_file.write_text("1")
            else:
                for pid in pids:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)  # polling the kernel's view against the deadline
        raise TimeoutError(f"processes left in {self.path}: {self.pids()}")


def _write(path: Path, value: str) -> None:
    if path.exists():
        path.write_text(value)


class CgroupUnavailable(RuntimeError):
    """No memory-capped cgroup can be made here; the message says why."""


@contextmanager
def memory_cgroup(limit: int) -> Iterator[MemCgroup]:
    """A fresh cgroup capped at ``limit`` bytes without swap; skips the test if impossible."""
    import pytest  # only tests skip; benchmarks use capped_cgroup

    with ExitStack() as stack:
        try:
            cg = stack.enter_context(capped_cgroup(limit))
        except CgroupUnavailable as e:
            pytest.skip(f"no memory-capped cgroup: {e}")
        yield cg


@contextmanager
def capped_cgroup(limit: int) -> Iterator[MemCgroup]:
    """A fresh cgroup capped at ``limit`` bytes without swap, removed at exit after
    killing what is left in it; :class:`CgroupUnavailable` if it cannot be made."""
    reason = cgroup_unavailable()
    if reason is not None:
        raise CgroupUnavailable(reason)
    where = _parent_dir()
    assert not isinstance(where, str)
    parent, version = where
    path = parent / f"pmtest-{os.getpid()}-{next(_counter)}"
    try:
        path.mkdir()
    except OSError as e:
        raise CgroupUnavailable(f"cannot create {path}: {e}") from e
    cg = MemCgroup(path, version, limit)
    try:
        if version == 2:
            (path / "memory.max").write_text(str(limit))
            _write(path / "memory.swap.max", "0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            _write(path / "memory.memsw.limit_in_bytes", str(limit))
        yield cg
    finally:
        deadline = time.monotonic() + 10
        cg.kill_all(deadline)
        while True:
            try:
                path.rmdir()
                break
            except OSError:  # EBUSY while the kernel finishes tearing processes down
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
