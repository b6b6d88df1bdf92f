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

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    key = hashlib.sha1(f"{boot}/{cpus}".encode()).hexdigest()[:16]
    base = os.path.join(tempfile.gettempdir(), f"pmrun-{os.getuid()}")
    return os.path.join(base, f"topo-{key}.xml")


def cached_xml() -> bytes | None:
    """The node's XML if an earlier agent cached it for this boot and cpu set."""
    try:
        with open(_cache_path(), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data or None


def discover_and_cache() -> Topology:
    """Discover (blocking: run it in a thread) and refresh the cache."""
    from pm.agent.topology import discover  # hwloc and cffi only when the cache misses

    topo = discover()
    if topo.xml:
        path = _cache_path()
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(topo.xml)
            os.replace(tmp, path)
    return topo


#: Job copies: ``pm-topo-<job>-<random>.xml`` in the temporary directory.
_PREFIX, _SUFFIX = "pm-topo-", ".xml"
#: Open, flock'ed descriptor of each job copy this process holds (see write_job_xml).
_held: dict[str, int] = {}


def write_job_xml(xml: bytes, job_id: str) -> str:
    """A copy private to the job (mode 0600); :func:`remove_job_xml` removes it.

    The writer holds ``flock(LOCK_EX)`` on the copy until then, so that an
    agent killed with SIGKILL leaves a file :func:`cleanup_stale` can tell is
    orphaned (the kernel drops the lock with the process).  The copy is built
    under a ``.tmp`` name and renamed once locked, so a sweep never sees an
    unlocked live one.  Stale copies of dead agents are swept first.
    """
    cleanup_stale()
    fd, tmp = tempfile.mkstemp(prefix=f"{_PREFIX}{job_id}-", suffix=".tmp")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, xml)  # a few KiB to tmpfs or a local disk: one call
        path = tmp[: -len(".tmp")] + _SUFFIX
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _held[path] = fd
    return path


def remove_job_xml(path: str) -> None:
    """Unlink a job copy, then drop its lock; idempotent."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove job copies whose writer is gone (nobody holds their lock); their paths."""
    base = directory or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        path = os.path.join(base, name)
        if path in _held:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its agent is alive
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed
