"""Hand the node's topology to a job's ranks without each of them probing the machine.

Discovery costs tens of milliseconds here and seconds on many-core nodes, so
an agent keeps hwloc's XML export in a per-user cache keyed by the boot and
the cpus it may use (a persistent agent discovers once per boot, an ad-hoc
one once per boot too), and gives each job a private copy (mode 0600,
removed with the job).  Ranks get ``HWLOC_XMLFILE``, ``HWLOC_THISSYSTEM=1``
and the PMI key ``PMI_hwloc_xmlfile``.

``PM_TOPOLOGY_SHARE=0`` in the job's environment (``pmrun -genv
PM_TOPOLOGY_SHARE 0``, or exported) turns the hand-over off: each rank's MPI
library then discovers the node itself (what ``bench/topology.py`` compares).
"""

from __future__ import annotations

import fcntl
import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pm.agent.topology import Topology


#: Job environment variable: "0", "no", "off" or "false" turns sharing the XML off.
SHARE_ENV = "PM_TOPOLOGY_SHARE"


def sharing_enabled(job_env: Mapping[str, str]) -> bool:
    """Whether the ranks get the node's XML (see the module docstring)."""
    return job_env.get(SHARE_ENV, "1").strip().lower() not in ("0", "no", "off", "false")


def _cache_path() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "noboot"
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    key = f"{boot[:8]}-{_crc32(f'{boot}/{cpus}'.encode()):08x}"
    base = os.path.join(temp_dir(), f"pmrun-{os.getuid()}")
    return os.path.join(base, f"topo-{key}.xml")


def _crc32(data: bytes) -> int:
    """zlib.crc32 of ``data``: a few dozen bytes without loading zlib (and libz) on
    pmrun's start, which costs more than this loop."""
    if len(data) > 96:  # many cpus
        import zlib

        return zlib.crc32(data)
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def temp_dir() -> str:
    """Where job copies, the cache and the PMIx server's directories go: $TMPDIR (or $TEMP,
    $TMP) if it is a directory we may write, else /tmp (tempfile.gettempdir's choice in
    practice, without importing tempfile)."""
    for var in ("TMPDIR", "TEMP", "TMP"):
        path = os.environ.get(var)
        if path and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
            return os.path.abspath(path)
    return "/tmp"


def _create(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file only we can read (mode 0600), opened for writing: (fd, path)."""
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        return fd, path
    raise FileExistsError(f"no free name for {prefix}*{suffix} in {directory}")


def cached_xml() -> bytes | None:
    """The node's XML if an earlier agent cached it for this boot and cpu set."""
    try:
        with open(_cache_path(), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data or None


def node_topology() -> Topology:
    """This node's topology: read from the cached XML when there is one (blocking, a few
    ms), else discovered (and cached)."""
    xml = cached_xml()
    if xml is not None:
        from pm.agent.topology import from_xml

        topo = from_xml(xml)
        if topo is not None:
            return topo
    return discover_and_cache()


def discover_and_cache() -> Topology:
    """Discover (blocking: run it in a thread) and refresh the cache."""
    from pm.agent.topology import discover  # hwloc and cffi only when the cache misses

    topo = discover()
    if topo.xml:
        path = _cache_path()
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd, tmp = _create(os.path.dirname(path), "topo-", ".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(topo.xml)
            os.replace(tmp, path)
        except OSError:
            pass  # no cache: the next agent discovers again
    return topo


#: Job copies: ``pm-topo-<job>-<random>.xml`` in the temporary directory.
_PREFIX, _SUFFIX = "pm-topo-", ".xml"
#: Open, flock'ed descriptor of each job copy this process holds (see write_job_xml).
_held: dict[str, int] = {}


def write_job_xml(xml: bytes, job_id: str, sweep: bool = True) -> str:
    """A copy private to the job (mode 0600); :func:`remove_job_xml` removes it.

    The writer holds ``flock(LOCK_EX)`` on the copy until then, so that an
    agent killed with SIGKILL leaves a file :func:`cleanup_stale` can tell is
    orphaned (the kernel drops the lock with the process).  The copy is built
    under a ``.tmp`` name and renamed once locked, so a sweep never sees an
    unlocked live one.  Stale copies of dead agents are swept first (``sweep``; else the
    caller runs :func:`cleanup_stale` itself, after its ranks started).
    """
    if sweep:
        cleanup_stale()
    fd, tmp = _create(temp_dir(), f"{_PREFIX}{job_id}-", ".tmp")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, xml)  # a few KiB to tmpfs or a local disk: one call
        path = tmp[: -len(".tmp")] + _SUFFIX
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    _held[path] = fd
    return path


def remove_job_xml(path: str) -> None:
    """Unlink a job copy, then drop its lock; idempotent."""
    _unlink(path)
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove job copies whose writer is gone (nobody holds their lock); their paths."""
    return sweep_unlocked(directory or temp_dir(),
                          lambda name: name.startswith(_PREFIX) and name.endswith(_SUFFIX),
                          lambda path: path, _unlink, _held)


def sweep_unlocked(base: str, ours: Callable[[str], bool], lock_of: Callable[[str], str],
                   remove: Callable[[str], bool], held: Mapping[str, int]) -> list[str]:
    """Remove the entries of ``base`` whose maker is gone; their paths.

    An entry is one ``ours(name)`` picks, not in ``held`` (this process's own), whose
    lock file ``lock_of(path)`` is a regular file of this user that nobody holds a
    flock on: its maker held one until it died.  ``remove(path)`` says whether it went.
    """
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not ours(name):
            continue  # most of a shared /tmp
        path = os.path.join(base, name)
        if path in held:
            continue
        try:
            fd = os.open(lock_of(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its maker is alive
            if remove(path):
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
