"""What the PMI engine (:mod:`pm.agent.pmi_engine`) says: its actions, in one place.

:class:`Send`, :class:`Event` and :class:`Close` are carried out at once by
the shell; the *calls* wait on other ranks or nodes and come back to the
engine with their ``token``.  A new kind of request that waits is a new call
here, handled by the shell (:mod:`pm.agent.pmi_shell`) and completed
through ``PmiEngine.complete``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pm.proto import spawn


class Wire(enum.StrEnum):
    """The protocol a connection speaks (UNKNOWN until its first bytes)."""

    UNKNOWN = ""
    PMI1 = "pmi1"
    PMI2 = "pmi2"
    NATIVE = "native"


class Phase(enum.Enum):
    """Where the rank is in its PMI life."""

    NEW = 0
    INITIALIZED = 1
    FINALIZED = 2
    CLOSED = 3  # the stream was refused or the rank closed it: nothing more is served


# --------------------------------------------------------------------- actions
@dataclass(slots=True)
class Send:
    data: bytes


@dataclass(slots=True)
class Event:
    name: str
    detail: Any = None


@dataclass(slots=True)
class Close:
    why: str


@dataclass(slots=True)
class Collective:
    """The rank's contribution to its next collective of ``kind`` (pm.proto.tree_wire)."""

    token: int
    kind: int
    value: Any


@dataclass(slots=True)
class GetFrom:
    """A key rank ``src`` puts, not on this node yet: bytes, or None if never put."""

    token: int
    src: int
    key: bytes


@dataclass(slots=True)
class NodeAttrGet:
    """A node attribute (PMI-2); with ``wait``, once some rank of the node puts it."""

    token: int
    key: str
    wait: bool


@dataclass(slots=True)
class NameService:
    """publish/unpublish/lookup: ``(ok, port)``."""

    token: int
    action: str
    service: str
    port: str


@dataclass(slots=True)
class Reserve:
    """A memory reservation of ``nbytes``: its id once admitted."""

    token: int
    nbytes: int


@dataclass(slots=True)
class Spawn:
    """A new job (MPI_Comm_spawn): a :class:`pm.proto.spawn.SpawnResult` once its ranks
    are started, or why they could not be."""

    token: int
    request: spawn.SpawnRequest


#: Everything that waits.
Call = Collective | GetFrom | NodeAttrGet | NameService | Reserve | Spawn
Action = Send | Event | Close | Call
