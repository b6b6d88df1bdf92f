"""What the PMI engine (:mod:`pm.agent.pmi_engine`) says: its actions, in one place.

:class:`Send`, :class:`Event` and :class:`Close` are carried out at once by
the shell; the *calls* wait on other ranks or nodes and come back to the
engine with their ``token``.  A new kind of request that waits is a new call
here, handled by the shell (:mod:`pm.agent.pmi_shell`) and completed
through ``PmiEngine.complete``.
"""

from __future__ import annotations

import enum

from pm.proto.value import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
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
# Plain records, not dataclasses: pmrun's quick phase imports this module when a
# rank first speaks PMI, and the dataclasses machinery costs milliseconds to load.
class Send(Value):
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Event(Value):
    __slots__ = ("name", "detail")  # noqa: RUF023  # the constructor's order

    def __init__(self, name: str, detail: Any = None) -> None:
        self.name = name
        self.detail = detail


class Close(Value):
    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class Collective(Value):
    """The rank's contribution to its next collective of ``kind`` (pm.proto.tree_wire)."""

    __slots__ = ("token", "kind", "value")  # noqa: RUF023  # the constructor's order

    def __init__(self, token: int, kind: int, value: Any) -> None:
        self.token = token
        self.kind = kind
        self.value = value


class GetFrom(Value):
    """A key rank ``src`` puts, not on this node yet: bytes, or None if never put."""

    __slots__ = ("token", "src", "key")  # noqa: RUF023  # the constructor's order

    def __init__(self, token: int, src: int, key: bytes) -> None:
        self.token = token
        self.src = src
        self.key = key


class NodeAttrGet(Value):
    """A node attribute (PMI-2); with ``wait``, once some rank of the node puts it."""

    __slots__ = ("token", "key", "wait")  # noqa: RUF023  # the constructor's order

    def __init__(self, token: int, key: str, wait: bool) -> None:
        self.token = token
        self.key = key
        self.wait = wait


class NameService(Value):
    """publish/unpublish/lookup: ``(ok, port)``."""

    __slots__ = ("token", "action", "service", "port")  # noqa: RUF023  # the constructor's order

    def __init__(self, token: int, action: str, service: str, port: str) -> None:
        self.token = token
        self.action = action
        self.service = service
        self.port = port


class Reserve(Value):
    """A memory reservation of ``nbytes``: its id once admitted."""

    __slots__ = ("token", "nbytes")  # noqa: RUF023  # the constructor's order

    def __init__(self, token: int, nbytes: int) -> None:
        self.token = token
        self.nbytes = nbytes


class Spawn(Value):
    """A new job (MPI_Comm_spawn): a :class:`pm.proto.spawn.SpawnResult` once its ranks
    are started, or why they could not be."""

    __slots__ = ("token", "request")  # noqa: RUF023  # the constructor's order

    def __init__(self, token: int, request: spawn.SpawnRequest) -> None:
        self.token = token
        self.request = request


#: Everything that waits.
Call = Collective | GetFrom | NodeAttrGet | NameService | Reserve | Spawn
Action = Send | Event | Close | Call

#: Collective kinds, as :mod:`pm.proto.tree_wire` numbers them (tests hold them equal; the
#: quick phase does not load the tree's codec).
FENCE, BARRIER, ALLGATHER, RING = 1, 2, 3, 4
