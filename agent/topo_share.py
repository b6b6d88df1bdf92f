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
import hashlib
import os
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


def write_job_xml(xml: bytes, job_id: str) -> str:
    """A copy private to the job (mode 0600); the caller removes it with the job."""
    fd, path = tempfile.mkstemp(prefix=f"pm-topo-{job_id}-", suffix=".xml")
    with os.fdopen(fd, "wb") as f:
        f.write(xml)
    return path
