"""Value records: plain classes compared by value and shown as constructed.

For what the quick phase makes (PMI engine actions, spawn requests): lighter
than :mod:`pm.proto.record` (no msgpack) and than ``dataclasses`` (whose import,
with ``inspect``, costs milliseconds on the way of the first request that
needs it).  A subclass lists its fields in ``__slots__``, in its constructor's
order.
"""

from __future__ import annotations

__all__ = ["Value"]


class Value:
    """Compared by value, shown as constructed (``__slots__`` in the constructor's order)."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({args})"
