"""Where a job runs: one entry per node agent (the head, the API and the ensembles share it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

__all__ = ["Nodes"]


@dataclass(slots=True)
class Nodes:
    """Where the job runs: one entry per node agent."""

    hosts: list[str]
    slots: list[int | None]
    fanout: int = 32
    bootstrap: dict[str, object] = field(default_factory=dict)
    #: Programs with hosts of their own (``-host`` after the first program): each
    #: program's nodes (indices into :attr:`hosts`) and their slots there; None: every
    #: program on every node.
    app_nodes: list[tuple[list[int], list[int | None]]] | None = None
    #: Hydra's host list (``-hosts``, ``-f``): its entries in order, each (node index,
    #: its count, 1 when none was given), a host named again after another a further
    #: entry; the ranks are dealt to them (:func:`pm.common.mapping.deal`).  None: placed
    #: by :attr:`slots` (an allocation, local nodes, the API's hosts, -ppn, -m).
    deal: list[tuple[int, int]] | None = None

    @classmethod
    def local(cls, count: int = 1, fanout: int = 32) -> Nodes:
        host = socket.gethostname()
        return cls([host] * count, [None] * count, fanout, {"name": "local"})
