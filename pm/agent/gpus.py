"""GPUs dealt to a node's ranks: ``--gpus-per-task N`` (srun's, Flux's ``-g``, Hydra's
``-gpus-per-proc``).

The GPUs a node's ranks could see are the ones their environment names
(``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES``,
``ZE_AFFINITY_MASK``: what a user, a batch system or pmrun's environment set), else
the node's own: NVIDIA's (``/proc/driver/nvidia/gpus``), then AMD's (the GPU nodes of
``/sys/class/kfd/kfd/topology``), numbered from 0 as their runtimes number them.  Local
rank *i* gets the *i*-th group of N of them in the same variable, so each sees its own
as device 0; more ranks than groups share them round robin, said in one line a node,
as is a node with no GPU (its ranks then get no variable).

Pure apart from :func:`node_gpus` reading ``/proc`` and ``/sys``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

#: The variables that name the GPUs a process may use, by vendor, in the order looked at.
VISIBLE = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
           "ZE_AFFINITY_MASK")
_NVIDIA = "/proc/driver/nvidia/gpus"
_KFD = "/sys/class/kfd/kfd/topology/nodes"


def node_gpus(env: Mapping[str, str], nvidia: str = _NVIDIA, kfd: str = _KFD
              ) -> tuple[str, list[str]] | None:
    """The variable that names the GPUs ranks with ``env`` could see, and those GPUs'
    names (None: none found).  A variable set but empty names none, as for CUDA."""
    for var in VISIBLE:
        if var in env:
            ids = [g.strip() for g in env[var].split(",") if g.strip()]
            return (var, ids) if ids else None
    return _devices(nvidia, kfd)


@functools.cache
def _devices(nvidia: str, kfd: str) -> tuple[str, list[str]] | None:
    """The node's own GPUs (read once: every rank of the node asks)."""
    try:
        count = len([d for d in os.listdir(nvidia) if not d.startswith(".")])
    except OSError:
        count = 0
    if count:
        return "CUDA_VISIBLE_DEVICES", [str(i) for i in range(count)]
    count = 0
    try:
        for node in sorted(os.listdir(kfd)):
            with open(os.path.join(kfd, node, "gpu_id")) as f:
                count += f.read().strip() not in ("", "0")  # (0: a CPU node)
    except (OSError, ValueError):
        pass
    if count:
        return "ROCR_VISIBLE_DEVICES", [str(i) for i in range(count)]
    return None


def deal(gpus: list[str], per: int, local_rank: int) -> list[str]:
    """The GPUs of local rank ``local_rank``: its group of ``per`` (round robin over the
    groups there are; fewer GPUs than ``per``: all of them)."""
    if len(gpus) <= per:
        return list(gpus)
    groups = len(gpus) // per
    first = (local_rank % groups) * per
    return gpus[first:first + per]


def shortage(gpus: int, per: int, local_size: int) -> str | None:
    """What a node with ``gpus`` GPUs says when its ``local_size`` ranks with ``per`` each
    do not fit (they share), or None."""
    groups = gpus // per if gpus >= per else 1
    if local_size <= groups and gpus >= per:
        return None
    return (f"{local_size} ranks with {per} GPU{'s' if per > 1 else ''} each, "
            f"{gpus} GPU{'s' if gpus != 1 else ''} here: ranks share them")
