"""PMI-2 wire codec (sans-IO): length-prefixed ``cmd=...;k=v;`` frames.

Framing
=======
A frame is a 6-byte ASCII decimal length that does not count itself, then
that many bytes of ``cmd=<name>;key=value;...;``.  There is no newline.

* The length may be left-aligned and space-padded (Slurm's ``libpmi2`` and
  Slurm's server, MPICH <= 4.0) or right-aligned (MPICH >= 4.1, ``%6u``).
  The decoder accepts spaces on either side of the digits; :func:`encode`
  writes ``%6d`` (right-aligned), which every known client reads with
  ``atoi``.
* A pair is split at its **first** ``=``, so ``=`` may appear in values.
  The first pair must be ``cmd``.
* A value ends at ``;``.  Inside a value ``;;`` stands for one ``;``: the
  decoder reads pairs strictly left to right and treats **every** ``;;`` as
  an escaped ``;``, exactly like ``libpmi2``'s ``parse_keyval``.  So an
  empty value is written ``k=;`` and followed directly by the next key; a
  frame can never contain an empty "pair" (``;;`` between pairs).  A value
  made only of ``;`` encodes as ``k=;;;``.  :func:`encode` doubles every
  ``;`` in values, which is what ``libpmi2`` undoes when it parses replies.
  (MPICH >= 4.1 neither escapes nor unescapes; its values never contain
  ``;``.  Slurm's own server does not unescape either.)
* The last value of a request may lack its closing ``;`` (it then runs to
  the end of the frame); every client ends it with ``;`` anyway.  Replies
  made by :func:`encode` always end each value with ``;`` because
  ``libpmi2`` rejects a frame whose last value is unterminated.
* Duplicate keys: :attr:`Pmi2Command.args` keeps the **first** occurrence,
  as every reference parser does (``libpmi2``'s ``getval``, Slurm's
  ``_client_req_get_val``, MPICH's token search).  ``raw_pairs`` keeps all
  of them, in order: ``spawn`` repeats ``subcmd``/``maxprocs``/``argc`` once
  per command.
* ``thrid=<x>`` (sent only by threaded MPICH <= 4.0 builds; never by Slurm's
  ``libpmi2``) is taken out into :attr:`Pmi2Command.thrid` and must be
  copied into the reply: :func:`response` does that.
* Bytes are decoded as UTF-8 with ``surrogateescape``, and :func:`encode`
  reverses that, so any byte string round-trips.

Errors
======
Malformed input (a length field that is not digits and spaces, a frame over
``max_frame`` bytes, a pair without ``=``, an empty key, a frame without
``cmd`` first, a bad init line) raises :class:`pm.proto.errors.ProtocolError`.
After that the decoder is **unusable**: every later :meth:`Pmi2Decoder.feed`
raises again, because the stream position is lost.  The server replies with
an error and closes the connection.

The PMI-1 handshake
===================
Every PMI-2 client (``libpmi2``, MPICH's PMI-2 client) first sends one
PMI-1 line ``cmd=init pmi_version=2 pmi_subversion=0\\n`` and needs
``cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\\n`` back
(:func:`encode_init_response`).  ``libpmi2`` compares ``rc`` with ``"0"``:
without ``rc=0`` ``PMI2_Init`` fails.  So the first bytes of a PMI-2
connection look like PMI-1; only ``pmi_version=2`` tells them apart.  A
``Pmi2Decoder(init_line=True)`` parses that line itself and yields it as
``Pmi2Command(cmd="init", args={"pmi_version": "2", ...})``.  ``libpmi2``
reads the reply line through a 1 KiB buffered reader and then reads frames
with raw ``read()``: send nothing after ``response_to_init`` until the
``fullinit`` frame arrives (it never does otherwise).

What Slurm's libpmi2 (22.05) needs and sends
============================================
Environment read by the client (nothing else; ``PMI_SIZE``,
``PMI_SPAWNED``, ``MPI_LOCALRANKID`` are **not** read by ``libpmi2``):

``PMI_FD``
    fd of the connected stream socket.  Without it (and without
    ``PMI_PORT``) ``PMI2_Init`` is a singleton init: size 1, rank 0, and
    every later call writes to fd -1 and fails.
``PMI_PORT``
    ``host:port`` to connect to over TCP when ``PMI_FD`` is unset.
``PMI_RANK``
    sent as ``pmirank=``; also the value ``PMI2_Job_GetRank`` returns.
``PMI_ID``
    if set, sent as ``srcid=`` *instead of* ``pmirank=`` (and
    ``PMI2_Job_GetRank`` then returns 0).
``PMI_JOBID``
    if set, sent first as ``pmijobid=``.
``PMI2_DEBUG``
    non-zero makes the client print its traffic on stderr.

Requests (``Q``) and the replies (``R``) the client requires.  Every reply
must be ``<cmd>-response`` (the client compares the prefix) and carry an
integer ``rc``; ``rc != 0`` makes the call fail with ``errmsg`` (optional)
in its message.  Booleans are exactly ``TRUE``/``FALSE``; anything else in a
boolean the client reads is an error.  The client takes values of at most
1024 bytes and keys of at most 64 (longer ones fail the call).

``PMI2_Init``
    Q ``fullinit;[pmijobid=J;](pmirank=R;|srcid=I;)threaded=FALSE;``
    R ``fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank=R;size=N;
    appnum=A;[spawner-jobid=J;]debugged=FALSE;pmiverbose=FALSE;``.
    ``pmi-version``, ``pmi-subversion``, ``rank``, ``size``, ``appnum`` are
    required integers; ``spawner-jobid`` present means "spawned";
    ``debugged``/``pmiverbose`` are optional booleans.  ``rank`` and
    ``size`` returned by ``PMI2_Init`` come from this reply.
``PMI2_Job_GetId``
    Q ``job-getid;`` R ``job-getid-response;rc=0;jobid=<id>;`` (required).
``PMI2_KVS_Put``
    Q ``kvs-put;key=k;value=v;`` R ``kvs-put-response;rc=0;``.
``PMI2_KVS_Fence``
    Q ``kvs-fence;`` R ``kvs-fence-response;rc=0;``.  The client blocks
    until the reply comes; puts made before the fence by any rank must be
    visible to gets after it.
``PMI2_KVS_Get(jobid, src, key)``
    Q ``kvs-get;jobid=J;srcid=S;key=k;`` -- all three keys always, in this
    order.  ``jobid`` is the caller's string; a NULL job id goes out as an
    empty value (``jobid=;``), meaning the caller's own job.  ``srcid`` is
    the decimal rank that put the key, ``-1`` (``PMI2_ID_NULL``) if unknown.
    R ``kvs-get-response;rc=0;found=TRUE;value=v;``.  ``found`` is
    required; ``found=FALSE;`` makes the call return an error
    (``PMI2_ERR_OTHER``), as does ``rc != 0``.
``PMI2_Info_GetJobAttr(name)``
    Q ``info-getjobattr;key=name;``
    R ``info-getjobattr-response;rc=0;found=TRUE;value=v;`` or
    ``found=FALSE;`` (a normal "not set", the call succeeds with flag 0).
    ``found`` is required; ``value`` is required when ``found=TRUE``.
``PMI2_Info_PutNodeAttr``
    Q ``info-putnodeattr;key=k;value=v;`` R ``info-putnodeattr-response;rc=0;``.
``PMI2_Info_GetNodeAttr(name, wait)``
    Q ``info-getnodeattr;key=k;wait=TRUE|FALSE;`` -- ``wait`` always sent.
    R ``info-getnodeattr-response;rc=0;found=TRUE;value=v;`` or
    ``found=FALSE;``.  With ``wait=TRUE`` the reply must be held until the
    key is put on the node.
``PMI2_Nameserv_publish/unpublish/lookup``
    Q ``name-publish;name=s;port=p;infokeycount=0;``,
    ``name-unpublish;name=s;infokeycount=0;``,
    ``name-lookup;name=s;infokeycount=0;``.
    R ``name-<...>-response;rc=0;``; the lookup reply must carry the port
    in **``value``** (``libpmi2`` reads only that key; MPICH's own client
    reads ``port``), so send both: ``rc=0;port=p;value=p;``.  ``rc=1`` for
    an unknown name.
``PMIX_Ring(value)`` (exported by this ``libpmi2``)
    Q ``ring;ring-count=1;ring-left=v;ring-right=v;``
    R ``ring-response;rc=0;ring-count=<ring rank>;ring-left=<value of the
    left neighbour>;ring-right=<value of the right neighbour>;``; all three
    required; the ring size the caller sees is the ``size`` from fullinit.
``PMI2_Abort(flag, msg)``
    Q ``abort;isworld=TRUE|FALSE;msg=<msg>;`` (``msg`` empty for NULL),
    no reply is read; the process then calls ``exit(flag)``.
``PMI2_Finalize``
    Q ``finalize;`` R ``finalize-response;rc=0;``; the client then shuts
    down and closes the fd.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pm.proto.errors import ProtocolError

__all__ = [
    "HEADER_LEN",
    "MAX_FRAME",
    "MAX_INIT_LINE",
    "Pmi2Command",
    "Pmi2Decoder",
    "encode",
    "encode_init_response",
    "parse_bool",
    "pmi_bool",
    "response",
]

HEADER_LEN = 6
"""Size of the decimal length field in front of every frame."""

MAX_FRAME = 1 << 20
"""Default cap on a frame's body.  The 6-digit field cannot exceed 999999."""

MAX_INIT_LINE = 1024
"""Cap on the PMI-1 init line (``libpmi2`` writes about 40 bytes)."""

_HEADER_RE = re.compile(rb" *[0-9]+ *")
_ENC = "utf-8"
_ERRORS = "surrogateescape"


@dataclass(frozen=True, slots=True)
class Pmi2Command:
    """One decoded request.

    ``cmd`` is the command name (``"fullinit"``, ``"kvs-get"``, ...).  ``args``
    maps each key to its first value; ``raw_pairs`` lists every pair in wire
    order.  Neither holds ``cmd`` or ``thrid``; ``thrid`` is the thread id to
    echo in the reply, or None when the client sent none.
    """

    cmd: str
    args: dict[str, str]
    raw_pairs: tuple[tuple[str, str], ...]
    thrid: str | None = None

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of ``key``, or ``default``."""
        return self.args.get(key, default)

    def require(self, key: str) -> str:
        """The first value of ``key``; ProtocolError naming the command if absent."""
        try:
            return self.args[key]
        except KeyError:
            raise ProtocolError(f"PMI-2 {self.cmd}: missing key {key!r}") from None

    def flag(self, key: str, default: bool = False) -> bool:
        """A ``TRUE``/``FALSE`` value; ``default`` if absent, ProtocolError if neither."""
        value = self.args.get(key)
        return default if value is None else parse_bool(value, key)


def pmi_bool(value: bool) -> str:
    """``TRUE`` or ``FALSE``, the only booleans PMI clients accept."""
    return "TRUE" if value else "FALSE"


def parse_bool(value: str, key: str = "value") -> bool:
    """Parse ``TRUE``/``FALSE`` exactly; ProtocolError for anything else."""
    if value == "TRUE":
        return True
    if value == "FALSE":
        return False
    raise ProtocolError(f"PMI-2 boolean {key}={value!r} is neither TRUE nor FALSE")


class Pmi2Decoder:
    """Incremental PMI-2 frame decoder: feed bytes, get complete commands.

    Partial frames stay buffered until the rest arrives.  With
    ``init_line=True`` the stream must start with the PMI-1 line
    ``cmd=init pmi_version=2 ...\\n``, which comes out as a command named
    ``init``.  ``max_frame`` caps a frame body (bytes).

    After :meth:`feed` raised ProtocolError the decoder is unusable and every
    later call raises again.
    """

    __slots__ = ("_broken", "_buf", "_init_pending", "_max_frame")

    def __init__(self, *, init_line: bool = False, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._init_pending = init_line
        self._max_frame = max_frame
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Pmi2Command]:
        """Add ``data``; return every command completed by it, in order."""
        if self._broken is not None:
            raise ProtocolError(f"PMI-2 decoder unusable after an earlier error: {self._broken}")
        self._buf += data
        try:
            return self._drain()
        except ProtocolError as exc:
            self._broken = str(exc)
            self._buf.clear()
            raise

    def _drain(self) -> list[Pmi2Command]:
        out: list[Pmi2Command] = []
        pos = 0
        buf = self._buf
        if self._init_pending:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_INIT_LINE:
                    raise ProtocolError(f"PMI-2 init line longer than {MAX_INIT_LINE} bytes")
                return out
            out.append(_parse_init_line(bytes(buf[:nl])))
            self._init_pending = False
            pos = nl + 1
        while len(buf) - pos >= HEADER_LEN:
            header = bytes(buf[pos : pos + HEADER_LEN])
            if not _HEADER_RE.fullmatch(header):
                hint = " (a PMI-1 line?)" if header.startswith(b"cmd=") else ""
                raise ProtocolError(f"PMI-2 length field is not a number: {header!r}{hint}")
            length = int(header)
            if length > self._max_frame:
                raise ProtocolError(
                    f"PMI-2 frame of {length} bytes is over the limit of {self._max_frame}"
                )
            end = pos + HEADER_LEN + length
            if end > len(buf):
                break
            out.append(_parse_body(bytes(buf[pos + HEADER_LEN : end])))
            pos = end
        del buf[:pos]
        return out


def _parse_init_line(line: bytes) -> Pmi2Command:
    """Parse ``cmd=init pmi_version=2 pmi_subversion=0`` (PMI-1 framing)."""
    text = line.rstrip(b"\r").decode(_ENC, _ERRORS)
    pairs: list[tuple[str, str]] = []
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ProtocolError(f"PMI-2 init line: token without '=': {token!r}")
        pairs.append((key, value))
    if not pairs or pairs[0] != ("cmd", "init"):
        raise ProtocolError(f"PMI-2 connection must start with cmd=init, got {text[:80]!r}")
    rest = tuple(pairs[1:])
    args: dict[str, str] = {}
    for key, value in rest:
        args.setdefault(key, value)
    if "pmi_version" not in args:
        raise ProtocolError("PMI-2 init line without pmi_version")
    return Pmi2Command("init", args, rest, None)


def _parse_body(body: bytes) -> Pmi2Command:
    """Split one frame body into pairs (see the module doc for the rules)."""
    text = body.decode(_ENC, _ERRORS)
    n = len(text)
    pos = 0
    pairs: list[tuple[str, str]] = []
    while pos < n:
        eq = text.find("=", pos)
        semi = text.find(";", pos)
        if eq < 0 or (0 <= semi < eq):
            stop = n if semi < 0 else semi
            raise ProtocolError(f"PMI-2 pair without '=': {text[pos:stop][:64]!r}")
        key = text[pos:eq]
        if not key:
            raise ProtocolError(f"PMI-2 empty key at byte {pos}")
        chunks: list[str] = []
        i = eq + 1
        while True:
            semi = text.find(";", i)
            if semi < 0:  # unterminated last value: runs to the end of the frame
                chunks.append(text[i:])
                pos = n
                break
            chunks.append(text[i:semi])
            if semi + 1 < n and text[semi + 1] == ";":  # ';;' is an escaped ';'
                chunks.append(";")
                i = semi + 2
                continue
            pos = semi + 1
            break
        pairs.append((key, "".join(chunks)))
    if not pairs or pairs[0][0] != "cmd":
        first = repr(pairs[0][0]) if pairs else "nothing"
        raise ProtocolError(f"PMI-2 frame without cmd first (starts with {first})")
    cmd = pairs[0][1]
    if not cmd:
        raise ProtocolError("PMI-2 frame with an empty cmd")
    thrid: str | None = None
    rest: list[tuple[str, str]] = []
    for key, value in pairs[1:]:
        if key == "thrid":
            if thrid is None:
                thrid = value
        else:
            rest.append((key, value))
    args: dict[str, str] = {}
    for key, value in rest:
        args.setdefault(key, value)  # first occurrence wins, like the C parsers
    return Pmi2Command(cmd, args, tuple(rest), thrid)


def _escape(value: str) -> str:
    return value.replace(";", ";;")


def _check_key(key: str) -> None:
    if not key or "=" in key or ";" in key:
        raise ValueError(f"PMI-2 key {key!r} is empty or contains '=' or ';'")


def encode(
    cmd: str,
    pairs: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    *,
    thrid: str | None = None,
) -> bytes:
    """One frame: ``%6d`` length, ``cmd=<cmd>;``, ``thrid=`` if given, then the pairs.

    Every value ends with ``;`` and has its own ``;`` doubled.  ValueError for a
    key that is empty or holds ``=``/``;``, or a body too long for the 6-digit
    length field.
    """
    if not cmd:
        raise ValueError("PMI-2 command name is empty")
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    parts = [f"cmd={_escape(cmd)};"]
    if thrid is not None:
        parts.append(f"thrid={_escape(thrid)};")
    for key, value in items:
        _check_key(key)
        parts.append(f"{key}={_escape(value)};")
    body = "".join(parts).encode(_ENC, _ERRORS)
    if len(body) > 999_999:
        raise FrameTooLong(f"a reply of {len(body)} bytes does not fit PMI-2's 6-digit length "
                           "(999999 at most)")
    return b"%6d" % len(body) + body


class FrameTooLong(ProtocolError, ValueError):
    """A frame longer than PMI-2's length field can say: the request it answers fails."""


def response(
    request: Pmi2Command,
    pairs: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    *,
    rc: int = 0,
) -> bytes:
    """The reply to ``request``: ``<cmd>-response``, its ``thrid`` echoed, ``rc`` first."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return encode(f"{request.cmd}-response", [("rc", str(rc)), *items], thrid=request.thrid)


def encode_init_response(*, rc: int = 0, version: int = 2, subversion: int = 0) -> bytes:
    """The PMI-1 line that answers the PMI-2 client's ``cmd=init`` line."""
    return (
        f"cmd=response_to_init rc={rc} pmi_version={version} pmi_subversion={subversion}\n"
    ).encode()
