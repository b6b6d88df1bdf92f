"""One exception family for every layer of pmrun.

Lower-level errors (OSError, zmq errors, cffi return codes) are translated
into these at the edge where they happen and chained with ``from``.
"""

from __future__ import annotations


class UsageError(Exception):
    """A command line (or an environment variable) pmrun cannot run; the message is one line.

    Not a :class:`PMError`: nothing ran.  Here because the head's parsers, the quick
    phase and the ensemble front end all raise it."""


class PMError(Exception):
    """Base of every error pmrun raises on purpose."""


class ProtocolError(PMError):
    """A peer sent bytes that are not a valid message of the protocol in use."""


class TransportError(PMError):
    """A connection could not be made, or broke."""


class AuthError(TransportError):
    """A peer could not prove that it knows the job's secret or key."""


class Timeout(PMError):
    """A deadline passed."""


class RankFailed(PMError):
    """A rank exited badly, was killed, aborted, or dropped its PMI connection."""


class AgentLost(PMError):
    """A node agent died or its link went silent."""


class KeyNotFound(PMError, KeyError):
    """A KVS key that no rank has put (and none will)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "key not found"


class ResourceLimit(PMError):
    """A limit of the node was reached (shared memory, memory watermark, file descriptors)."""


def rank_at(rank: int, node: int, host: str) -> str:
    """How a one-line failure names a rank: ``rank 3 (node 1, host)``."""
    return f"rank {rank} (node {node}, {host})"


def too_many(what: str, value: object, most: int) -> str:
    """The words refusing a count above what pmrun runs (the command line's and the API's)."""
    return f"{what} {value}: more than pmrun can run (at most {most})"


#: pmrun's dependencies: the module each is imported as, and the distribution to install.
DEPENDENCIES = {"msgpack": "msgpack", "zmq": "pyzmq", "uvloop": "uvloop", "cffi": "cffi"}


def missing_dependency(exc: BaseException) -> str | None:
    """When ``exc`` is one of pmrun's dependencies not found by this interpreter (an
    install without them, another Python on a node): what to say, in one line."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    top = (exc.name or "").split(".")[0]
    if top not in DEPENDENCIES:
        return None
    import sys

    return (f"{DEPENDENCIES[top]}, which pmrun needs, is not installed for {sys.executable} "
            f"(No module named {top!r}): {sys.executable} -m pip install {DEPENDENCIES[top]} "
            "(or install pmrun with its dependencies)")


def defect(exc: BaseException) -> str:
    """``exc``, a defect of pmrun's, in one line: where (its innermost frame in pmrun) and
    what."""
    import os
    import traceback as tb

    where = ""
    for frame in reversed(tb.extract_tb(exc.__traceback__)):
        path = frame.filename.replace(os.sep, "/")
        if "/pm/" in path:
            where = f" at pm/{path.rsplit('/pm/', 1)[1]}:{frame.lineno}"
            break
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"internal error{where}: {what}"
