"""The node's hardware topology, discovered once per node by the agent.

Every rank that loads hwloc itself pays the discovery again (seconds on
many-core nodes).  The agent discovers once, exports hwloc's XML, and hands
ranks ``HWLOC_XMLFILE`` / ``HWLOC_THISSYSTEM=1`` and the PMI key
``PMI_hwloc_xmlfile``; :mod:`pm.agent.binding` computes rank cpusets from the
same :class:`Topology`.

Two sources:

* ``hwloc``: the system libhwloc 2.x through cffi in ABI mode.  The C
  declarations live in ``hwloc.h`` beside this module and nothing else.
  The library is opened on the first :func:`discover`, never at import.
* ``sysfs``: ``/sys/devices/system/{cpu,node}`` and ``/proc/meminfo`` when
  libhwloc cannot be loaded or is turned off (``use_hwloc=False`` or
  ``PM_NO_HWLOC=1``).  It produces the same sets, but no XML.

In both cases, the PUs are those the process may use: hwloc's allowed cpuset
(or the online cpus), intersected with the process's affinity.  Objects left
with no usable PU are dropped.
"""

from __future__ import annotations

import _thread
import importlib
import os

from pm.common.values import Value
from pm.proto.errors import PMError

TYPE_CHECKING = False  # (typing, logging, re, pathlib, dataclasses: not on the quick path)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path
    from typing import Any


def _log() -> Any:
    import logging

    return logging.getLogger("pm.agent.topology")


#: The shared object opened in ABI mode (Debian's libhwloc15 is hwloc 2.x).
HWLOC_SONAME = "libhwloc.so.15"
#: Set to 1 to skip hwloc and read /sys (also what tests of the fallback use).
NO_HWLOC_ENV = "PM_NO_HWLOC"

# Versions whose struct hwloc_obj starts like the prefix in hwloc.h.
_API_MIN = 0x20000
_API_END = 0x30000

SYS_CPU = "/sys/devices/system/cpu"
SYS_NODE = "/sys/devices/system/node"
PROC_MEMINFO = "/proc/meminfo"


class TopologyError(PMError):
    """Discovery failed, an hwloc call returned an error, or the XML could not be written."""


class Topology(Value):
    """What one node offers to the ranks of a job.

    Every set holds OS indexes of PUs (hardware threads), restricted to the
    PUs in :attr:`pus`; objects are ordered like hwloc's logical indexes.
    """

    __slots__ = ("cores", "l3caches", "memory_bytes", "numa_nodes", "packages", "pus",
                 "source", "xml")

    def __init__(self, source: str, pus: tuple[int, ...], cores: tuple[frozenset[int], ...],
                 numa_nodes: tuple[frozenset[int], ...], packages: tuple[frozenset[int], ...],
                 l3caches: tuple[frozenset[int], ...], memory_bytes: int,
                 xml: bytes | None) -> None:
        self.source = source  # "hwloc" or "sysfs"
        self.pus = pus  # OS indexes of the PUs allowed, ascending
        self.cores = cores  # PU sets per core, ordered by logical index
        self.numa_nodes = numa_nodes  # NUMA nodes that have usable PUs
        self.packages = packages
        self.l3caches = l3caches  # empty tuple when unknown
        self.memory_bytes = memory_bytes  # total machine memory
        self.xml = xml  # hwloc XML export (None for the sysfs fallback)


# --------------------------------------------------------------------------
# cpu lists


def format_cpuset(cpus: Iterable[int]) -> str:
    """Format cpus as a kernel-style list: ``{0,1,2,3,8,10,11}`` -> ``"0-3,8,10-11"``.

    Duplicates are ignored; the empty set gives ``""``.
    """
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


#: Beyond any machine's CPU numbers (Linux's most is 8192): a bigger one is a slip.
MOST_CPUS = 1 << 16


def cpu_range(text: str) -> tuple[int, int] | None:
    """``"3"`` -> (3, 3), ``"2-5"`` -> (2, 5); None for anything else."""
    lo, dash, hi = text.partition("-")
    if not lo.isdigit() or not lo.isascii() or (dash and not (hi.isdigit() and hi.isascii())):
        return None
    return int(lo), int(hi) if dash else int(lo)


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a kernel cpu list (``"0-3,8,10-11"``, as in sysfs); ``""`` is the empty set.

    Raises ``ValueError`` on anything else.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        bounds = cpu_range(part.strip())
        if bounds is None:
            raise ValueError(f"bad cpu list item {part!r} in {text!r}")
        lo, hi = bounds
        if hi < lo:
            raise ValueError(f"bad cpu range {part!r} in {text!r}")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


# --------------------------------------------------------------------------
# hwloc through cffi (ABI mode).  Everything typed Any stays in this section.


class _Hwloc:
    """The opened library: ``ffi`` and ``lib`` are cffi objects (untyped)."""

    __slots__ = ("ffi", "lib", "version")

    def __init__(self, ffi: Any, lib: Any, version: int) -> None:
        self.ffi = ffi
        self.lib = lib
        self.version = version

    def call(self, name: str, *args: Any) -> Any:
        """Call an hwloc function that reports failure; the one return-code check.

        hwloc fails with a negative int (-1, errno set) or a NULL pointer; both
        become a :class:`TopologyError` naming the call.  errno is cleared
        first, so a stale value is never reported.  Functions whose negative
        results are values (bitmap iteration, type depths) are called directly.
        """
        ffi = self.ffi
        ffi.errno = 0
        result = getattr(self.lib, name)(*args)
        failed = result == ffi.NULL if isinstance(result, ffi.CData) else result < 0
        if failed:
            err = ffi.errno
            detail = f": {os.strerror(err)} (errno {err})" if err else ""
            raise TopologyError(f"{name} failed (returned {result!r}){detail}")
        return result


_load_lock = _thread.allocate_lock()
_loaded: dict[str, _Hwloc | str] = {}  # soname -> library, or why it could not be used


def _declarations() -> Any:
    """The declarations of ``hwloc.h``: pre-parsed (``_hwloc_ffi``, made by
    scripts/gen_ffi.py) unless this cffi cannot read that module, else parsed now (tens
    of ms).  Lazy (the CLI imports this module and must stay cheap), and untyped: cffi
    has no stubs, so it enters as Any here and nowhere else."""
    try:
        from pm.agent import _hwloc_ffi

        return _hwloc_ffi.ffi
    except Exception:  # another cffi version: parse the header
        pass
    cffi: Any = importlib.import_module("cffi")
    from importlib import resources

    ffi = cffi.FFI()
    ffi.cdef(resources.files("pm.agent").joinpath("hwloc.h").read_text())
    return ffi


def _load(soname: str) -> _Hwloc | str:
    """Open libhwloc once per process; returns the library or the reason it is unusable."""
    with _load_lock:
        cached = _loaded.get(soname)
        if cached is not None:
            return cached
        result: _Hwloc | str
        try:
            ffi = _declarations()
            lib = ffi.dlopen(soname)
            version = int(lib.hwloc_get_api_version())
            if not _API_MIN <= version < _API_END:
                result = f"{soname} has API version {version:#x}, need 2.x"
            else:
                for name in dir(lib):  # resolve every symbol now, not mid-discovery
                    getattr(lib, name)
                result = _Hwloc(ffi, lib, version)
        except (ImportError, OSError, AttributeError) as exc:
            # cffi missing, no library or hwloc.h, a symbol missing from the library
            result = f"cannot load {soname}: {exc}"
        _loaded[soname] = result
        return result


def hwloc_status() -> str:
    """Which hwloc pmrun discovers topologies with, or why none (``pmrun -info``)."""
    hw = _load(HWLOC_SONAME)
    if isinstance(hw, str):
        return f"{hw} (pmrun reads /sys instead)"
    v = hw.version
    return f"{HWLOC_SONAME} (API {v >> 16}.{(v >> 8) & 0xff}), through cffi"


def _bitmap(hw: _Hwloc, bitmap: Any) -> frozenset[int]:
    """The members of an hwloc bitmap (finite: object and allowed cpusets are)."""
    lib = hw.lib
    out: list[int] = []
    i = int(lib.hwloc_bitmap_first(bitmap))
    while i >= 0:  # -1 means "no more", not an error
        out.append(i)
        i = int(lib.hwloc_bitmap_next(bitmap, i))
    return frozenset(out)


def _level(hw: _Hwloc, topo: Any, obj_type: int) -> list[frozenset[int]] | None:
    """Cpusets of every object of one type in logical order, or None if the type is absent."""
    lib = hw.lib
    depth = int(lib.hwloc_get_type_depth(topo, obj_type))
    if depth in (lib.HWLOC_TYPE_DEPTH_UNKNOWN, lib.HWLOC_TYPE_DEPTH_MULTIPLE):
        return None
    n = int(lib.hwloc_get_nbobjs_by_depth(topo, depth))
    sets = []
    for idx in range(n):
        obj = hw.call("hwloc_get_obj_by_depth", topo, depth, idx)
        sets.append(_bitmap(hw, obj.cpuset))
    return sets


def _export_xml(hw: _Hwloc, topo: Any) -> bytes:
    ffi, lib = hw.ffi, hw.lib
    buf = ffi.new("char **")
    length = ffi.new("int *")
    hw.call("hwloc_topology_export_xmlbuffer", topo, buf, length, 0)
    try:
        # The length counts the terminating NUL.
        return bytes(ffi.buffer(buf[0], max(int(length[0]) - 1, 0)))
    finally:
        lib.hwloc_free_xmlbuffer(topo, buf[0])


def _discover_hwloc(hw: _Hwloc, xml: bytes | None = None) -> Topology:
    """The topology hwloc discovers, or (``xml``) reads from an export of it."""
    ffi, lib = hw.ffi, hw.lib
    topo_p = ffi.new("hwloc_topology_t *")
    hw.call("hwloc_topology_init", topo_p)
    topo = topo_p[0]
    try:
        # Keep I/O objects: MPICH asks for them when it discovers by itself,
        # and ranks reading our XML must see what they would have seen.
        hw.call("hwloc_topology_set_io_types_filter", topo, lib.HWLOC_TYPE_FILTER_KEEP_ALL)
        if xml is not None:
            hw.call("hwloc_topology_set_xmlbuffer", topo, ffi.new("char[]", xml), len(xml) + 1)
        hw.call("hwloc_topology_load", topo)
        usable = _usable(_bitmap(hw, hw.call("hwloc_topology_get_allowed_cpuset", topo)))
        root = hw.call("hwloc_get_obj_by_depth", topo, 0, 0)
        memory = int(root.total_memory)
        cores = _level(hw, topo, lib.HWLOC_OBJ_CORE)
        packages = _level(hw, topo, lib.HWLOC_OBJ_PACKAGE)
        l3 = _level(hw, topo, lib.HWLOC_OBJ_L3CACHE)
        numa = _level(hw, topo, lib.HWLOC_OBJ_NUMANODE)
        xml = xml if xml is not None else _export_xml(hw, topo)
    finally:
        lib.hwloc_topology_destroy(topo)
    return _assemble(
        "hwloc",
        usable,
        cores=cores,
        numa=numa,
        packages=packages,
        l3=l3 or [],
        memory=memory or _meminfo_total(),
        xml=xml,
    )


# --------------------------------------------------------------------------
# sysfs fallback


def _usable(allowed: Iterable[int]) -> frozenset[int]:
    """Allowed cpus the process may run on (its affinity can be narrower than its cgroup)."""
    allowed = frozenset(allowed)
    usable = allowed & frozenset(os.sched_getaffinity(0))
    return usable or allowed


def _read(path: Path | str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _meminfo_total() -> int:
    for line in (_read(PROC_MEMINFO) or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "MemTotal:" and words[1].isdigit():
            return int(words[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cpulist_file(path: Path | str) -> frozenset[int] | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return parse_cpulist(text)
    except ValueError:
        return None


def _discover_sysfs() -> Topology:
    from pathlib import Path

    sys_cpu = Path(SYS_CPU)
    online = _cpulist_file(sys_cpu / "online")
    usable = _usable(online if online else os.sched_getaffinity(0))
    cores: set[frozenset[int]] = set()
    by_core_id: dict[tuple[str, str], set[int]] = {}
    by_package: dict[str, set[int]] = {}
    l3: set[frozenset[int]] = set()
    for cpu in sorted(usable):
        topo_dir = sys_cpu / f"cpu{cpu}" / "topology"
        package = _read(topo_dir / "physical_package_id") or "0"
        by_package.setdefault(package, set()).add(cpu)
        siblings = _cpulist_file(topo_dir / "thread_siblings_list")
        if siblings and cpu in siblings:
            cores.add(siblings & usable)
        else:  # older kernels: (package, core_id) names the core
            core_id = _read(topo_dir / "core_id") or f"cpu{cpu}"
            by_core_id.setdefault((package, core_id), set()).add(cpu)
        l3set = _l3_of(cpu)
        if l3set:
            l3.add(l3set & usable)
    cores.update(frozenset(s) for s in by_core_id.values())
    numa: list[frozenset[int]] = []
    for node in Path(SYS_NODE).glob("node[0-9]*"):
        cpus = _cpulist_file(node / "cpulist")
        if cpus:
            numa.append(cpus)
    return _assemble(
        "sysfs",
        usable,
        cores=list(cores),
        numa=numa or None,
        packages=[frozenset(s) for s in by_package.values()],
        l3=list(l3),
        memory=_meminfo_total(),
        xml=None,
    )


def _l3_of(cpu: int) -> frozenset[int] | None:
    from pathlib import Path

    for index in (Path(SYS_CPU) / f"cpu{cpu}" / "cache").glob("index[0-9]*"):
        if _read(index / "level") == "3" and _read(index / "type") in ("Unified", "Data"):
            return _cpulist_file(index / "shared_cpu_list")
    return None


# --------------------------------------------------------------------------
# common


def _assemble(
    source: str,
    usable: frozenset[int],
    *,
    cores: list[frozenset[int]] | None,
    numa: list[frozenset[int]] | None,
    packages: list[frozenset[int]] | None,
    l3: list[frozenset[int]],
    memory: int,
    xml: bytes | None,
) -> Topology:
    """Restrict every level to the usable PUs, drop empty objects, fix the order.

    A level that the source does not know (None) becomes one object per PU
    (cores) or one object holding every PU (NUMA nodes, packages).
    """

    if not usable:
        raise TopologyError("no usable PU: the allowed cpus and the affinity do not meet")

    def clip(sets: Iterable[frozenset[int]]) -> list[frozenset[int]]:
        out: list[frozenset[int]] = []
        for s in sets:
            c = s & usable
            if c and c not in out:
                out.append(c)
        return out

    pkgs = clip(packages) if packages is not None else [usable]
    pkgs.sort(key=min)
    pkg_rank = {cpu: i for i, p in enumerate(pkgs) for cpu in p}
    core_list = clip(cores) if cores is not None else [frozenset({cpu}) for cpu in usable]
    # hwloc's logical order is tree order: package first, then position inside it.
    core_list.sort(key=lambda c: (pkg_rank.get(min(c), len(pkgs)), min(c)))
    numa_list = clip(numa) if numa is not None else [usable]
    if not numa_list:
        numa_list = [usable]
    numa_list.sort(key=min)
    l3_list = sorted(clip(l3), key=min)
    return Topology(
        source=source,
        pus=tuple(sorted(usable)),
        cores=tuple(core_list),
        numa_nodes=tuple(numa_list),
        packages=tuple(pkgs),
        l3caches=tuple(l3_list),
        memory_bytes=memory,
        xml=xml,
    )


def discover(*, use_hwloc: bool = True) -> Topology:
    """Discover this node's topology.  Blocking (hwloc can take seconds): run it in a thread.

    Uses libhwloc unless ``use_hwloc`` is False, ``PM_NO_HWLOC=1`` is set, or
    the library cannot be loaded; then reads sysfs, and logs once at INFO why.
    If hwloc loads but discovery fails, logs a WARNING and reads sysfs too.
    Raises :class:`TopologyError` only if no usable PU can be found at all.
    """
    reason: str
    if not use_hwloc:
        reason = "hwloc turned off by the caller"
    elif os.environ.get(NO_HWLOC_ENV, "") not in ("", "0"):
        reason = f"{NO_HWLOC_ENV}={os.environ[NO_HWLOC_ENV]}"
    else:
        hw = _load(HWLOC_SONAME)
        if isinstance(hw, _Hwloc):
            try:
                return _discover_hwloc(hw)
            except TopologyError as exc:
                _log().warning("hwloc discovery failed (%s); reading the topology from sysfs",
                               exc)
                return _discover_sysfs()
        reason = hw
    _log().info("hwloc unavailable (%s); reading the topology from sysfs", reason)
    return _discover_sysfs()


def from_xml(xml: bytes) -> Topology | None:
    """The topology an earlier discovery exported (a few ms, where discovering takes tens);
    None when hwloc cannot read it (then discover)."""
    if os.environ.get(NO_HWLOC_ENV, "") not in ("", "0"):
        return None
    hw = _load(HWLOC_SONAME)
    if not isinstance(hw, _Hwloc):
        return None
    try:
        return _discover_hwloc(hw, xml)
    except TopologyError:
        return None


async def discover_async(*, use_hwloc: bool = True) -> Topology:
    """:func:`discover` in a worker thread, so the event loop keeps running."""
    import asyncio  # here, not at the top: importing this module stays cheap

    return await asyncio.to_thread(discover, use_hwloc=use_hwloc)


def write_xml(topo: Topology, directory: str, job_id: str) -> str:
    """Write the hwloc XML to a new file in ``directory``; returns its path.

    The file is private (mode 0600, created exclusively) and its name holds
    ``job_id``, so concurrent jobs and agents never share or clobber one.  The
    caller removes it at the end of the job.  Raises :class:`TopologyError`
    when the topology has no XML (sysfs source) or the file cannot be written.
    """
    import tempfile

    if topo.xml is None:
        raise TopologyError(f"no hwloc XML to write (topology source: {topo.source})")
    if not job_id or "/" in job_id or "\0" in job_id:
        raise TopologyError(f"job id {job_id!r} cannot be part of a file name")
    try:
        fd, path = tempfile.mkstemp(prefix=f"pm-topo-{job_id}-", suffix=".xml", dir=directory)
    except OSError as exc:
        raise TopologyError(f"cannot create the topology file in {directory}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(topo.xml)
    except OSError as exc:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(path)
        raise TopologyError(f"cannot write the topology file {path}: {exc}") from exc
    return path


def summary(topo: Topology) -> str:
    """A multi-line human summary, as ``pmrun --topology`` prints it."""
    lines = [
        f"source:     {topo.source}",
        f"packages:   {len(topo.packages)}",
    ]
    lines += [f"  package {i}: cpus {format_cpuset(s)}" for i, s in enumerate(topo.packages)]
    lines.append(f"NUMA nodes: {len(topo.numa_nodes)}")
    lines += [f"  node {i}: cpus {format_cpuset(s)}" for i, s in enumerate(topo.numa_nodes)]
    if topo.l3caches:
        lines.append(f"L3 caches:  {len(topo.l3caches)}")
        lines += [f"  L3 {i}: cpus {format_cpuset(s)}" for i, s in enumerate(topo.l3caches)]
    else:
        lines.append("L3 caches:  unknown")
    sizes = sorted({len(c) for c in topo.cores})
    per_core = "/".join(str(n) for n in sizes)
    lines.append(
        f"cores:      {len(topo.cores)} ({per_core} {'PU' if sizes == [1] else 'PUs'} each)"
    )
    lines.append(f"PUs:        {len(topo.pus)} (cpus {format_cpuset(topo.pus)})")
    lines.append(f"memory:     {_human_bytes(topo.memory_bytes)} ({topo.memory_bytes} bytes)")
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    size, i = float(n), 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{n} B" if i == 0 else f"{size:.1f} {units[i]}"
