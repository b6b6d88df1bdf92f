"""PMI-2 codec: golden frames, incremental decoding, escaping, errors.

What the engine answers is in tests/test_pmi_engine.py; Slurm's libpmi2 client
(tests/c/pmi2_client.c) runs against pmrun itself in tests/test_pmi2_e2e.py."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="6-digit length"):
        encode("x", {"k": filler + "v"})


def test_encode_rejects_bad_keys() -> None:
    for key in ("", "a=b", "a;b"):
        with pytest.raises(ValueError):
            encode("x", [(key, "v")])
    with pytest.raises(ValueError):
        encode("", {})
