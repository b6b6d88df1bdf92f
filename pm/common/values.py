"""Small value classes without ``dataclasses``.

Importing ``dataclasses`` (and ``inspect`` with it) costs about 11 ms of CPU, more
than all of pmrun's quick path imports together; the few value classes that path
needs (the node's topology, a binding) take equality, hashing and a readable repr
from their ``__slots__`` instead, as a frozen dataclass would give them.
"""

from __future__ import annotations


class Value:
    """Equality, hash and repr over the fields a subclass names in ``__slots__``, in order.
    Fields are set once, in ``__init__``; nothing stops a later assignment, nothing does
    one."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"
