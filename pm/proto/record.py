"""Typed records: the one way pmrun's own wire formats are declared.

A record's fields are its class's annotations, in order; on the wire it is the
msgpack array of their values (:meth:`Record.to_wire`), and a field that holds
records (``_nested``) holds their arrays.  A *message* is a record with a small
integer ``op`` in a family of its own (:class:`Message`: the tree's
:class:`pm.proto.tree_wire.Msg`, the service's
:class:`pm.proto.service_wire.ServiceMsg`); it travels as ``[op, *fields]``.

Built without ``dataclasses``: generating a few dozen dataclasses costs
several milliseconds of every launch, and these classes are made at import.
"""

from __future__ import annotations

from typing import Any, ClassVar, dataclass_transform

import msgpack

from pm.proto.errors import ProtocolError

__all__ = ["Message", "Record", "pack_default", "packb"]


@dataclass_transform()
class Record:
    """Fields are the class's annotations, in order; ``_nested`` names the fields that hold
    records: ``{"plan": JobPlan}`` one, ``{"items": [RankExit]}`` a list of them."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}
    #: Field -> the class of the record it holds, or [class] for a list of them (a class
    #: with ``from_wire`` and ``many``: a Record, or a NamedTuple for items sent by the
    #: thousand).
    _nested: ClassVar[dict[str, Any]] = {}
    #: Extra trailing values on the wire are ignored (a record later versions may extend).
    _open: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        # Not inspect.get_annotations: importing inspect costs every launch.
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        names = tuple(n for n in own if n != "op" and not n.startswith("_"))
        cls._fields = names
        cls._defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
        for name, value in zip(fields, args, strict=False):
            setattr(self, name, value)
        for name in fields[len(args):]:
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))
            elif name in self._defaults:
                value = self._defaults[name]
                # A fresh list or map per record, as a dataclass's default_factory.
                setattr(self, name, value.copy() if isinstance(value, (list, dict)) else value)
            else:
                raise TypeError(f"{type(self).__name__} missing field {name!r}")
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(kwargs))!r}")

    def fields(self) -> list[Any]:
        return [getattr(self, n) for n in self._fields]

    def to_wire(self) -> list[Any]:
        """The field values, records among them as their own arrays."""
        if not self._nested:
            return self.fields()
        out = self.fields()
        for i, name in enumerate(self._fields):
            if name in self._nested:
                out[i] = _wire_of(out[i])
        return out

    @classmethod
    def from_wire(cls, values: Any) -> Any:
        """The record whose fields are ``values`` (what :meth:`to_wire` made, after msgpack).

        :class:`ProtocolError` names a value that is not an array or does not fit the
        record; a nested value that is already a record (a message handed over in
        process) is taken as it is.
        """
        if isinstance(values, cls):
            return values
        if not isinstance(values, list | tuple):
            raise ProtocolError(f"{cls.__name__} is not an array")
        if cls._open:
            values = values[:len(cls._fields)]
        try:
            rec = cls(*values)
        except TypeError as exc:
            raise ProtocolError(f"bad fields for {cls.__name__}: {exc}") from exc
        for name, kind in cls._nested.items():
            value = getattr(rec, name)
            if isinstance(kind, list):
                if not isinstance(value, list):
                    raise ProtocolError(f"{cls.__name__}.{name} is not a list")
                setattr(rec, name, kind[0].many(value))
            elif value is not None:
                setattr(rec, name, kind.from_wire(value))
        return rec

    @classmethod
    def many(cls, values: list[Any]) -> list[Any]:
        """The records of a list of arrays."""
        return [cls.from_wire(v) for v in values]

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.fields() == other.fields()  # type: ignore[attr-defined,unused-ignore]

    __hash__ = None  # type: ignore[assignment]


def _wire_of(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_wire()
    if isinstance(value, list):
        return [v.to_wire() if isinstance(v, Record) else v for v in value]
    return value


class Message(Record):
    """A record with an ``op``, in a family whose root declares its own ``_by_op`` map."""

    op: ClassVar[int]
    _by_op: ClassVar[dict[int, type[Message]]]

    def __init_subclass__(cls, op: int = -1, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if op >= 0:
            cls.op = op
            if op in cls._by_op:
                raise TypeError(f"op {op} of {cls.__name__} used twice in its family")
            cls._by_op[op] = cls

    def to_wire(self) -> list[Any]:
        return [self.op, *Record.to_wire(self)]

    @classmethod
    def decode_list(cls, obj: Any, what: str) -> Message:
        """The message of this family that ``[op, *fields]`` is; :class:`ProtocolError` if none."""
        if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
            raise ProtocolError(f"{what} is not [op, ...]")
        kind = cls._by_op.get(obj[0])
        if kind is None:
            raise ProtocolError(f"unknown {what} op {obj[0]}")
        msg: Message = kind.from_wire(obj[1:])
        return msg


def pack_default(obj: Any) -> Any:
    """msgpack's ``default`` hook: it is called only for what msgpack cannot pack itself,
    records inside messages (so messages without records pay nothing)."""
    if isinstance(obj, Record):
        return obj.to_wire()
    raise TypeError(f"cannot pack {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """``obj`` as msgpack; records anywhere in it go as their arrays."""
    return msgpack.packb(obj, use_bin_type=True, default=pack_default)  # type: ignore[no-any-return]
