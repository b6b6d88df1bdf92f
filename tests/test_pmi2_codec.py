"""PMI-2 codec: golden frames, incremental decoding, escaping, errors, and an
end-to-end run of Slurm's libpmi2 client (tests/c/pmi2_client.c) against a
small asyncio server built on the codec."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pm.proto.errors import ProtocolError
from pm.proto.pmi2 import (
    Pmi2Command,
    Pmi2Decoder,
    encode,
    encode_init_response,
    parse_bool,
    pmi_bool,
    response,
)

pytestmark = pytest.mark.timeout(60)

# Golden frames from the wire notes (pmi-wire.md §3.2), length prefixes exact.
GOLDEN_REQUESTS = [
    (b"    23cmd=fullinit;pmirank=0;", "fullinit", {"pmirank": "0"}),
    (b"    14cmd=job-getid;", "job-getid", {}),
    (
        b"    44cmd=info-getjobattr;key=PMI_process_mapping;",
        "info-getjobattr",
        {"key": "PMI_process_mapping"},
    ),
    (
        b"    46cmd=info-getnodeattr;key=-bcast-1-0;wait=TRUE;",
        "info-getnodeattr",
        {"key": "-bcast-1-0", "wait": "TRUE"},
    ),
    (b"    14cmd=kvs-fence;", "kvs-fence", {}),
    (
        b"    45cmd=kvs-get;jobid=kvs_42_0;key=-NONEXIST-KEY;",
        "kvs-get",
        {"jobid": "kvs_42_0", "key": "-NONEXIST-KEY"},
    ),
]

GOLDEN_REPLIES = [
    (
        b"   113cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank=0;size=2;"
        b"appnum=0;debugged=FALSE;pmiverbose=FALSE;",
        "fullinit",
        [
            ("pmi-version", "2"),
            ("pmi-subversion", "0"),
            ("rank", "0"),
            ("size", "2"),
            ("appnum", "0"),
            ("debugged", "FALSE"),
            ("pmiverbose", "FALSE"),
        ],
    ),
    (b"    43cmd=job-getid-response;rc=0;jobid=kvs_42_0;", "job-getid", [("jobid", "kvs_42_0")]),
    (
        b"    68cmd=info-getjobattr-response;rc=0;found=TRUE;value=(vector,(0,1,2));",
        "info-getjobattr",
        [("found", "TRUE"), ("value", "(vector,(0,1,2))")],
    ),
    (b"    28cmd=kvs-fence-response;rc=0;", "kvs-fence", []),
    (b"    38cmd=kvs-get-response;rc=0;found=FALSE;", "kvs-get", [("found", "FALSE")]),
]


def framed(body: bytes) -> bytes:
    """A hand-written body with its right length in front."""
    return b"%6d" % len(body) + body


def left_aligned(frame: bytes) -> bytes:
    """The same frame with the length written like libpmi2 and Slurm do (%-6d)."""
    return b"%-6d" % int(frame[:6]) + frame[6:]


# ---------------------------------------------------------------- codec units


@pytest.mark.parametrize(("frame", "cmd", "args"), GOLDEN_REQUESTS)
def test_golden_requests_both_alignments(frame: bytes, cmd: str, args: dict[str, str]) -> None:
    for wire in (frame, left_aligned(frame)):
        (got,) = Pmi2Decoder().feed(wire)
        assert got.cmd == cmd
        assert got.args == args
        assert got.raw_pairs == tuple(args.items())
        assert got.thrid is None
    assert encode(cmd, args) == frame


@pytest.mark.parametrize(("frame", "request_cmd", "pairs"), GOLDEN_REPLIES)
def test_golden_replies(frame: bytes, request_cmd: str, pairs: list[tuple[str, str]]) -> None:
    request = Pmi2Command(request_cmd, {}, ())
    assert response(request, pairs) == frame
    (back,) = Pmi2Decoder().feed(frame)
    assert back.cmd == f"{request_cmd}-response"
    assert back.raw_pairs == (("rc", "0"), *pairs)


def test_thrid_is_split_out_and_echoed() -> None:
    (req,) = Pmi2Decoder().feed(encode("kvs-put", [("key", "k"), ("value", "v")], thrid="0x7f12"))
    assert req.thrid == "0x7f12"
    assert "thrid" not in req.args
    assert req.raw_pairs == (("key", "k"), ("value", "v"))
    reply = response(req)
    assert reply == b"    39cmd=kvs-put-response;thrid=0x7f12;rc=0;"
    (back,) = Pmi2Decoder().feed(reply)
    assert back.thrid == "0x7f12"
    assert back.args == {"rc": "0"}
    # No thrid in the request: none in the reply.
    (plain,) = Pmi2Decoder().feed(encode("kvs-fence"))
    assert b"thrid" not in response(plain)


def test_one_byte_at_a_time() -> None:
    wire = b"".join(f for f, _, _ in GOLDEN_REQUESTS) + left_aligned(GOLDEN_REQUESTS[0][0])
    dec = Pmi2Decoder()
    got: list[Pmi2Command] = []
    boundaries: list[int] = []
    for i in range(len(wire)):
        out = dec.feed(wire[i : i + 1])
        if out:
            boundaries.append(i + 1)
        got += out
    assert [c.cmd for c in got] == [c for _, c, _ in GOLDEN_REQUESTS] + ["fullinit"]
    # Each command comes out exactly when its last byte arrives, and nothing is left over.
    ends, total = [], 0
    for frame, _, _ in [*GOLDEN_REQUESTS, GOLDEN_REQUESTS[0]]:
        total += len(frame)
        ends.append(total)
    assert boundaries == ends
    assert dec.buffered == 0


def test_several_frames_in_one_feed_and_a_partial_tail() -> None:
    a = encode("kvs-put", {"key": "a", "value": "1"})
    b = encode("kvs-put", {"key": "b", "value": "2"})
    c = encode("kvs-fence")
    dec = Pmi2Decoder()
    out = dec.feed(a + b + c[:9])
    assert [x.args.get("key") for x in out] == ["a", "b"]
    assert dec.buffered == 9
    assert dec.feed(b"") == []
    (fence,) = dec.feed(c[9:])
    assert fence.cmd == "kvs-fence"
    assert dec.buffered == 0


def test_init_line_then_frames() -> None:
    line = b"cmd=init pmi_version=2 pmi_subversion=0\n"
    frame = GOLDEN_REQUESTS[0][0]
    dec = Pmi2Decoder(init_line=True)
    assert dec.feed(line[:10]) == []
    init, full = dec.feed(line[10:] + frame)
    assert init.cmd == "init"
    assert init.args == {"pmi_version": "2", "pmi_subversion": "0"}
    assert full.cmd == "fullinit"
    assert encode_init_response() == b"cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n"
    with pytest.raises(ProtocolError, match="cmd=init"):
        Pmi2Decoder(init_line=True).feed(b"cmd=get_maxes\n")
    with pytest.raises(ProtocolError, match="longer than"):
        Pmi2Decoder(init_line=True).feed(b"cmd=init " + b"x" * 2000)


@pytest.mark.parametrize(
    "value",
    ["", ";", ";;", "a;b", "a;;b", ";x;", "x=y;z=w", "k=;", "=;=", "end;", "é;\u00ff"],
)
def test_escaping_round_trip(value: str) -> None:
    frame = encode("kvs-put", [("key", "k"), ("value", value), ("after", "z")])
    assert frame.count(b";") == 4 + 2 * value.count(";")
    (got,) = Pmi2Decoder().feed(frame)
    assert got.raw_pairs == (("key", "k"), ("value", value), ("after", "z"))


def test_raw_bytes_round_trip() -> None:
    raw = bytes(range(0x80, 0x100)).decode("utf-8", "surrogateescape")
    (got,) = Pmi2Decoder().feed(encode("kvs-put", [("value", raw)]))
    assert got.args["value"].encode("utf-8", "surrogateescape") == bytes(range(0x80, 0x100))


def test_double_semicolon_is_always_an_escape() -> None:
    # What libpmi2 writes for value "a;" followed by another pair: a;;;n=v;
    (got,) = Pmi2Decoder().feed(framed(b"cmd=x;k=a;;;n=v;"))
    assert got.raw_pairs == (("k", "a;"), ("n", "v"))
    # Empty values are "k=;" directly followed by the next key.
    (got,) = Pmi2Decoder().feed(framed(b"cmd=x;k=;n=;"))
    assert got.raw_pairs == (("k", ""), ("n", ""))
    # A ';;' right after cmd's value belongs to that value.
    (got,) = Pmi2Decoder().feed(framed(b"cmd=x;;k=v;"))
    assert got.cmd == "x;k=v"


def test_equals_inside_values_and_unterminated_last_value() -> None:
    (got,) = Pmi2Decoder().feed(framed(b"cmd=x;value=segments=3;"))
    assert got.args == {"value": "segments=3"}
    (got,) = Pmi2Decoder().feed(framed(b"cmd=x;k=v=w"))
    assert got.args == {"k": "v=w"}


def test_duplicates_first_wins_raw_pairs_keep_all() -> None:
    pairs = [
        ("ncmds", "2"),
        ("preputcount", "0"),
        ("subcmd", "a.out"),
        ("maxprocs", "1"),
        ("argc", "0"),
        ("subcmd", "b.out"),
        ("maxprocs", "3"),
        ("argc", "1"),
        ("argv0", "-v"),
    ]
    (got,) = Pmi2Decoder().feed(encode("spawn", pairs))
    assert got.args["subcmd"] == "a.out"
    assert got.args["maxprocs"] == "1"
    assert got.raw_pairs == tuple(pairs)


def test_command_helpers() -> None:
    (got,) = Pmi2Decoder().feed(encode("info-getnodeattr", {"key": "k", "wait": "TRUE"}))
    assert got.flag("wait") is True
    assert got.flag("absent", default=True) is True
    assert got.require("key") == "k"
    assert got.get("absent") is None
    with pytest.raises(ProtocolError, match="missing key 'value'"):
        got.require("value")
    (bad,) = Pmi2Decoder().feed(encode("x", {"wait": "1"}))
    with pytest.raises(ProtocolError, match="neither TRUE nor FALSE"):
        bad.flag("wait")
    assert (pmi_bool(True), pmi_bool(False)) == ("TRUE", "FALSE")
    assert parse_bool("FALSE") is False


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"  x 12cmd=x;", "not a number"),
        (b"-00012cmd=kvs-fence;", "not a number"),
        (b"1_0000cmd=x;", "not a number"),
        (b"cmd=init pmi_version=2\n", r"not a number.*PMI-1 line"),
        (framed(b"cmd=x;abc;"), "pair without '=': 'abc'"),
        (framed(b"cmd=x;k=v;zz"), "pair without '=': 'zz'"),
        (framed(b"cmd=x;k;=v;"), "pair without '=': 'k'"),
        (framed(b"key=v;cmd=x;"), "without cmd first .*'key'"),
        (framed(b""), "without cmd first .*nothing"),
        (framed(b"cmd"), "pair without '='"),
        (framed(b"cmd=;k=v;"), "empty cmd"),
        (framed(b"cmd=x;=v;"), "empty key"),
    ],
)
def test_malformed_input(wire: bytes, message: str) -> None:
    dec = Pmi2Decoder()
    with pytest.raises(ProtocolError, match=message):
        dec.feed(wire)
    # The stream position is lost: the decoder refuses anything further.
    with pytest.raises(ProtocolError, match="unusable"):
        dec.feed(encode("kvs-fence"))


def test_length_limit() -> None:
    big = encode("kvs-put", {"value": "v" * 5000})
    with pytest.raises(ProtocolError, match="over the limit of 4096"):
        Pmi2Decoder(max_frame=4096).feed(big[:6])  # refused from the header alone
    (ok,) = Pmi2Decoder().feed(big)
    assert len(ok.args["value"]) == 5000
    # The largest frame the 6-digit field can describe decodes with the default limit.
    body_len = 999_999
    filler = "v" * (body_len - len("cmd=x;k=;"))
    frame = encode("x", {"k": filler})
    assert frame[:6] == b"999999"
    (huge,) = Pmi2Decoder().feed(frame)
    assert len(huge.args["k"]) == len(filler)
    with pytest.raises(ValueError, match="6-digit"):
        encode("x", {"k": filler + "v"})


def test_encode_rejects_bad_keys() -> None:
    for key in ("", "a=b", "a;b"):
        with pytest.raises(ValueError):
            encode("x", [(key, "v")])
    with pytest.raises(ValueError):
        encode("", {})


# ------------------------------------------------- end to end against libpmi2

def mapping_for(size: int) -> str:
    return f"(vector,(0,1,{size}))"


@dataclass
class MiniServer:
    """Just enough PMI-2 server for one node: KVS, fence, node attributes, names, ring."""

    size: int
    jobid: str
    trace: list[tuple[int, str, bytes]] = field(default_factory=list)
    aborts: list[tuple[int, Pmi2Command]] = field(default_factory=list)
    finalized: set[int] = field(default_factory=set)
    kvs: dict[str, str] = field(default_factory=dict)
    node_attrs: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fence_count = 0
        self._fence_done = asyncio.Event()
        self._node_changed = asyncio.Condition()
        self._ring: dict[int, str] = {}
        self._ring_done = asyncio.Event()

    async def serve(self, rank: int, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        dec = Pmi2Decoder(init_line=True)
        try:
            while data := await reader.read(65536):
                self.trace.append((rank, "C", data))
                for cmd in dec.feed(data):
                    reply = await self.handle(rank, cmd)
                    if reply is not None:
                        self.trace.append((rank, "S", reply))
                        writer.write(reply)
                        await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def handle(self, rank: int, cmd: Pmi2Command) -> bytes | None:
        n = str(self.size)
        match cmd.cmd:
            case "init":
                assert cmd.args["pmi_version"] == "2"
                return encode_init_response()
            case "fullinit":
                assert cmd.require("pmirank") == str(rank)
                pairs = [("pmi-version", "2"), ("pmi-subversion", "0"), ("rank", str(rank))]
                pairs += [("size", n), ("appnum", "0"), ("debugged", "FALSE")]
                return response(cmd, [*pairs, ("pmiverbose", "FALSE")])
            case "job-getid":
                return response(cmd, {"jobid": self.jobid})
            case "kvs-put":
                self.kvs[cmd.require("key")] = cmd.require("value")
                return response(cmd)
            case "kvs-fence":
                done = self._fence_done
                self._fence_count += 1
                if self._fence_count == self.size:  # last one in releases everyone
                    self._fence_count = 0
                    self._fence_done = asyncio.Event()
                    done.set()
                await done.wait()
                return response(cmd)
            case "kvs-get":
                value = self.kvs.get(cmd.require("key"))
                if value is None:
                    return response(cmd, {"found": "FALSE"})
                return response(cmd, {"found": "TRUE", "value": value})
            case "info-getjobattr":
                attrs = {"PMI_process_mapping": mapping_for(self.size), "universeSize": n}
                value = attrs.get(cmd.require("key"))
                if value is None:
                    return response(cmd, {"found": "FALSE"})
                return response(cmd, {"found": "TRUE", "value": value})
            case "info-putnodeattr":
                async with self._node_changed:
                    self.node_attrs[cmd.require("key")] = cmd.require("value")
                    self._node_changed.notify_all()
                return response(cmd)
            case "info-getnodeattr":
                key = cmd.require("key")
                if cmd.flag("wait"):
                    async with self._node_changed:
                        await self._node_changed.wait_for(lambda: key in self.node_attrs)
                value = self.node_attrs.get(key)
                if value is None:
                    return response(cmd, {"found": "FALSE"})
                return response(cmd, {"found": "TRUE", "value": value})
            case "ring":
                assert cmd.require("ring-count") == "1"
                self._ring[rank] = cmd.require("ring-left")
                if len(self._ring) == self.size:
                    self._ring_done.set()
                await self._ring_done.wait()
                left, right = self._ring[(rank - 1) % self.size], self._ring[(rank + 1) % self.size]
                return response(
                    cmd, [("ring-count", str(rank)), ("ring-left", left), ("ring-right", right)]
                )
            case "name-publish":
                self.names[cmd.require("name")] = cmd.require("port")
                return response(cmd)
            case "name-unpublish":
                found = self.names.pop(cmd.require("name"), None) is not None
                return response(cmd, rc=0 if found else 1)
            case "name-lookup":
                port = self.names.get(cmd.require("name"))
                if port is None:
                    return response(cmd, {"errmsg": "not_found"}, rc=1)
                # libpmi2 reads the port from "value"; MPICH's own client from "port".
                return response(cmd, [("port", port), ("value", port)])
            case "abort":
                self.aborts.append((rank, cmd))
                return None
            case "finalize":
                self.finalized.add(rank)
                return response(cmd)
            case _:
                return response(cmd, {"errmsg": f"unknown command {cmd.cmd}"}, rc=1)


def rank_env(rank: int, size: int, fd: int, jobid: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PMI", "SLURM_", "PMIX_", "MPI_", "EXPECT_"))
    }
    env.update(
        PMI_FD=str(fd),
        PMI_RANK=str(rank),
        PMI_SIZE=str(size),
        MPI_LOCALRANKID=str(rank),
        MPI_LOCALNRANKS=str(size),
        EXPECT_APPNUM="0",
        EXPECT_JOBID=jobid,
        EXPECT_PROCESS_MAPPING=mapping_for(size),
        EXPECT_UNIVERSE_SIZE=str(size),
    )
    return env


@dataclass
class RankResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str


async def run_job(
    binary: Path, size: int, *args: str, expect_ok: bool = True, deadline: float = 30.0
) -> tuple[MiniServer, list[RankResult]]:
    """Start ``size`` copies of the client, each on its own socketpair, and serve them.

    With ``expect_ok`` the first rank that exits non-zero fails the run at once
    (the others would wait in the fence until the deadline otherwise).
    """
    server = MiniServer(size=size, jobid=f"kvs_test_{os.getpid()}_{size}")
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.timeout(deadline), asyncio.TaskGroup() as tg:
            for rank in range(size):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                with theirs:
                    proc = await asyncio.create_subprocess_exec(
                        str(binary),
                        *args,
                        pass_fds=(theirs.fileno(),),
                        env=rank_env(rank, size, theirs.fileno(), server.jobid),
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                    )
                procs.append(proc)
                tg.create_task(server.serve(rank, ours))
            results = [
                tg.create_task(_collect(rank, proc, expect_ok)) for rank, proc in enumerate(procs)
            ]
        return server, [r.result() for r in results]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _collect(rank: int, proc: asyncio.subprocess.Process, expect_ok: bool) -> RankResult:
    out, err = await proc.communicate()
    assert proc.returncode is not None
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"rank {rank} exited {proc.returncode}: {err.decode()}{out.decode()}")
    return RankResult(rank, proc.returncode, out.decode(), err.decode())


def sent_by(server: MiniServer, rank: int) -> list[Pmi2Command]:
    """Every request ``rank`` sent, decoded again from the recorded bytes."""
    data = b"".join(d for r, side, d in server.trace if r == rank and side == "C")
    return Pmi2Decoder(init_line=True).feed(data)


@pytest.mark.parametrize("size", [1, 3])
async def test_libpmi2_client_end_to_end(pmi2_client: Path, size: int) -> None:
    server, results = await run_job(pmi2_client, size)
    for res in results:
        assert res.returncode == 0, f"rank {res.rank}: {res.stderr}{res.stdout}"
        assert res.stdout.splitlines()[-1] == f"OK rank={res.rank}"
        assert f"init rank={res.rank} size={size} appnum=0 spawned=0" in res.stdout
        assert f"ring rank={res.rank} ranks={size}" in res.stdout
    assert server.finalized == set(range(size))
    assert server.aborts == []

    # What the real client sent, decoded back with the codec.
    for rank in range(size):
        sent = sent_by(server, rank)
        assert sent[0].args == {"pmi_version": "2", "pmi_subversion": "0"}
        assert sent[1].cmd == "fullinit"
        assert sent[1].raw_pairs == (("pmirank", str(rank)), ("threaded", "FALSE"))
        assert all(c.thrid is None for c in sent)
        put = next(c for c in sent if c.cmd == "kvs-put")
        assert put.args == {"key": f"key-{rank}", "value": f"value-{rank}-a=b;c;;d={rank * 7};"}
        gets = [c for c in sent if c.cmd == "kvs-get"]
        # jobid, srcid and key always, in this order; srcid names the putter.
        assert [tuple(k for k, _ in c.raw_pairs) for c in gets] == [("jobid", "srcid", "key")] * (
            size + 1
        )
        others = [{"jobid": server.jobid, "srcid": str(i), "key": f"key-{i}"} for i in range(size)]
        del others[rank]
        assert [c.args for c in gets[:-2]] == others
        # A NULL job id goes out as an empty value, PMI2_ID_NULL as -1.
        assert gets[-2].args == {"jobid": "", "srcid": "-1", "key": f"key-{rank}"}
        assert gets[-1].args == {"jobid": server.jobid, "srcid": "-1", "key": "no-such-key"}
        assert sent[-1].cmd == "finalize"
    names = [c for c in sent_by(server, 0) if c.cmd.startswith("name-")]
    assert [(c.cmd, c.raw_pairs) for c in names] == [
        (
            "name-publish",
            (("name", "svc-pmi2-test"), ("port", "tag#0$port;x=1"), ("infokeycount", "0")),
        ),
        ("name-lookup", (("name", "svc-pmi2-test"), ("infokeycount", "0"))),
        ("name-lookup", (("name", "no-such-service"), ("infokeycount", "0"))),
        ("name-unpublish", (("name", "svc-pmi2-test"), ("infokeycount", "0"))),
    ]
    assert server.names == {}
    # libpmi2 doubled the ';' of the put values on the wire.
    raw = b"".join(d for r, s, d in server.trace if r == 0 and s == "C")
    assert b"value=value-0-a=b;;c;;;;d=0;;;" in raw


async def test_libpmi2_abort(pmi2_client: Path) -> None:
    server, results = await run_job(pmi2_client, 2, "abort", expect_ok=False)
    assert [r.returncode for r in results] == [1, 1]  # PMI2_Abort(1, ...) exits with 1
    assert sorted(r for r, _ in server.aborts) == [0, 1]
    for rank, cmd in server.aborts:
        assert cmd.raw_pairs == (("isworld", "TRUE"), ("msg", f"abort; from {rank}"))
