"""PMI-1 wire protocol (sans-IO): newline-framed ``cmd=<name> key=value ...`` lines.

Facts this relies on (see the PMI wire reference):

* A token splits at its *first* ``=`` (MPICH sends values such as ``segments=3``).
* Lines may be of any length (MPICH 4.1+ exceeds 1024 characters).
* ``mcmd=spawn`` requests span several ``key=value`` lines and end at ``endcmd``
  once ``spawnssofar == totspawns``; in them a value runs to the end of its line.
* Every reply carries ``rc``; ``response_to_init`` without ``rc=0`` makes old
  clients abort.
"""

from __future__ import annotations

from pm.proto.errors import ProtocolError

#: Advertised limits: Hydra's and Slurm's (old clients assert on larger ones).
KVSNAME_MAX = 256
KEYLEN_MAX = 64
VALLEN_MAX = 1024

#: A single request line longer than this is refused (a runaway or hostile peer).
MAX_LINE = 4 << 20


class Pmi1Command:
    """One request: ``cmd`` and its arguments (later duplicates win).

    ``pairs`` keeps the arguments in wire order, which spawn's numbered
    ``argN``/``preput_key_N`` keys need.  (A plain class: pmrun's quick phase
    loads this module when a rank first speaks, and dataclasses cost a few ms.)
    """

    __slots__ = ("args", "cmd", "pairs")

    def __init__(self, cmd: str, args: dict[str, str],
                 pairs: list[tuple[str, str]] | None = None) -> None:
        self.cmd = cmd
        self.args = args
        self.pairs = [] if pairs is None else pairs

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Pmi1Command) and self.cmd == other.cmd
                and self.args == other.args and self.pairs == other.pairs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Pmi1Command(cmd={self.cmd!r}, args={self.args!r}, pairs={self.pairs!r})"


def parse_line(line: bytes) -> Pmi1Command:
    """Parse one ``cmd=...`` line (without its newline)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"non-ASCII byte in PMI-1 line {line[:80]!r}") from exc
    tokens = text.split()
    if not tokens:
        raise ProtocolError("empty PMI-1 line")
    pairs: list[tuple[str, str]] = []
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep or not key:
            raise ProtocolError(f"PMI-1 token without key=value: {tok[:80]!r}")
        pairs.append((key, value))
    first_key, cmd = pairs[0]
    if first_key != "cmd":
        raise ProtocolError(f"PMI-1 line does not start with cmd=: {text[:80]!r}")
    return Pmi1Command(cmd, dict(pairs[1:]), pairs[1:])


def _parse_mcmd(lines: list[bytes]) -> Pmi1Command:
    pairs: list[tuple[str, str]] = []
    for raw in lines:
        text = raw.decode("ascii", "replace")
        if text == "endcmd":
            continue
        key, sep, value = text.partition("=")
        if not sep:
            after = (f" (after {pairs[-1][0]}: a new line inside its value? PMI-1 cannot "
                     "carry one)") if len(pairs) > 1 else ""  # (pairs[0] is mcmd=spawn)
            raise ProtocolError(f"spawn line without key=value: {text[:80]!r}{after}")
        pairs.append((key, value))
    return Pmi1Command("spawn", dict(pairs), pairs)


class Pmi1Decoder:
    """Incremental decoder: feed bytes, get complete commands.

    After a :class:`ProtocolError` the decoder is unusable: the caller replies
    with an error and closes the connection.
    """

    __slots__ = ("_buf", "_mcmd", "_mcmd_bytes")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._mcmd: list[bytes] | None = None
        self._mcmd_bytes = 0

    def feed(self, data: bytes) -> list[Pmi1Command | ProtocolError]:
        """Complete commands; a malformed line comes out as its ProtocolError
        (line framing survives it, so the session answers it and goes on).
        Raises ProtocolError only for a line, or a whole ``mcmd=`` spawn
        request, over :data:`MAX_LINE`."""
        self._buf += data
        out: list[Pmi1Command | ProtocolError] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    raise ProtocolError(f"PMI-1 line longer than {MAX_LINE} bytes")
                return out
            line = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            if self._mcmd is not None:
                # A spawn block is one request: the line bound holds for all of it.
                self._mcmd_bytes += nl + 1
                if self._mcmd_bytes > MAX_LINE:
                    self._mcmd = None
                    raise ProtocolError(f"PMI-1 spawn request longer than {MAX_LINE} bytes")
                self._mcmd.append(line)
                if line == b"endcmd":
                    try:
                        done = _parse_mcmd(self._mcmd)
                    except ProtocolError as exc:
                        self._mcmd = None
                        out.append(exc)
                        continue
                    # A multi-command spawn is one request: complete at the last block.
                    if done.args.get("spawnssofar") == done.args.get("totspawns"):
                        self._mcmd = None
                        out.append(done)
                continue
            if line.startswith(b"mcmd="):
                self._mcmd = [line[1:]]  # keep "cmd=spawn" as a plain pair
                self._mcmd_bytes = nl + 1
                continue
            if not line.strip():
                continue
            try:
                out.append(parse_line(line))
            except ProtocolError as exc:
                out.append(exc)

    @property
    def idle(self) -> bool:
        """No partial line and no spawn block under way: a complete line may skip the buffer."""
        return not self._buf and self._mcmd is None

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete line."""
        return bytes(self._buf)


def encode(cmd: str, *pairs: tuple[str, object]) -> bytes:
    """Format one reply line. Values must not contain spaces or newlines."""
    parts = [f"cmd={cmd}"]
    for key, value in pairs:
        parts.append(f"{key}={value}")
    return (" ".join(parts) + "\n").encode()


def reply_error(cmd: str, msg: str) -> bytes:
    """An ``rc=1`` reply whose message is one word (PMI-1 values cannot hold spaces)."""
    return encode(cmd, ("rc", 1), ("msg", msg.replace(" ", "_").replace("\n", "_")))


#: The reply command for each request command.
REPLY_OF = {
    "init": "response_to_init",
    "get_maxes": "maxes",
    "get_appnum": "appnum",
    "get_my_kvsname": "my_kvsname",
    "get_universe_size": "universe_size",
    "put": "put_result",
    "get": "get_result",
    "barrier_in": "barrier_out",
    "finalize": "finalize_ack",
    "publish_name": "publish_result",
    "unpublish_name": "unpublish_result",
    "lookup_name": "lookup_result",
    "spawn": "spawn_result",
}
