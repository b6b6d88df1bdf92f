"""Head/agent messages: the codec, the seal, and a real tree port refusing strangers."""

from __future__ import annotations

import asyncio
import logging

import msgpack
import pytest
import zmq
import zmq.asyncio
from pm.agent.links import ChildPort
from pm.proto import tree as t
from pm.proto.errors import AuthError, ProtocolError

pytestmark = pytest.mark.timeout(20)

SECRET = b"s" * 32


def up(secret: bytes, link: int, seq: int, msg: t.Msg) -> list[bytes]:
    """The zmq parts a child on ``link`` sends as its frame ``seq``."""
    body = t.seal(secret, t.encode(msg))
    return [t.stamp(secret, body, link, t.UP, seq), body]

SAMPLES: list[t.Msg] = [
    t.Hello(3, "node07", 4242),
    t.CollIn(2, t.ALLGATHER, [[0, b"\x00addr"], [1, b"\xffaddr"]]),
    t.CollOut(2, t.FENCE, [b"k", 0, b"v=;\n"]),
    t.Output([[0, 1, b"line\n"]]),
    t.Stdin(0, b"\x00" * 10, True),
    t.Exits([[1, 0, 3, 0, ""]]),
    t.Abort(1, 0, 7, "MPI_Abort"),
    t.Signal(2),
    t.GetReq(5, 1, 2, b"\x001\x00key", 1, 2),
    t.GetResp(5, 1, False, b""),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: t.Msg) -> None:
    wire = t.encode(msg)
    assert msgpack.unpackb(wire)[0] == msg.op
    assert t.decode(wire) == msg
    assert t.decode(t.unseal(SECRET, t.seal(SECRET, wire))) == msg


def test_wire_layout_is_op_then_fields() -> None:
    assert t.encode(t.Signal(15)) == bytes([0x92, t.Signal.op, 15])


@pytest.mark.parametrize(("frame", "why"), [
    (msgpack.packb({"op": 1}), "not \\[op"),
    (msgpack.packb([]), "not \\[op"),
    (msgpack.packb([999, 1]), "unknown tree op 999"),
    (msgpack.packb([t.Signal.op, 1, 2, 3]), "bad fields for Signal"),
    (b"\xc1", "undecodable"),
])
def test_bad_messages_are_protocol_errors(frame: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        t.decode(frame)


def test_seal_rejects_another_secret_and_tampering() -> None:
    frame = t.seal(SECRET, t.encode(t.Signal(2)))
    with pytest.raises(AuthError, match="does not match"):
        t.unseal(b"x" * 32, frame)
    with pytest.raises(AuthError):
        t.unseal(SECRET, frame[:-1] + b"\x03")
    with pytest.raises(AuthError, match="shorter"):
        t.unseal(SECRET, b"abc")


async def test_a_peer_without_the_secret_is_refused_and_the_port_keeps_serving(
        caplog: pytest.LogCaptureFixture) -> None:
    hellos: list[int] = []
    msgs: list[t.Msg] = []
    got = asyncio.Event()

    def on_msg(vertex: int, msg: t.Msg) -> None:
        msgs.append(msg)
        got.set()

    port = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: hellos.append(v), on_msg)
    ctx = zmq.asyncio.Context()
    stranger = ctx.socket(zmq.DEALER)
    friend = ctx.socket(zmq.DEALER)
    try:
        with caplog.at_level(logging.WARNING):
            stranger.connect(port.address)
            # Wrong secret, garbage, and a message before hello from a sealed peer.
            await stranger.send_multipart(up(b"x" * 32, 1, 0, t.Hello(1, "evil", 1)))
            await stranger.send_multipart([b"garbage", b"more garbage"])
            await stranger.send(b"garbage")
            friend.connect(port.address)
            await friend.send_multipart(up(SECRET, 2, 0, t.Signal(9)))
            await friend.send_multipart(up(SECRET, 2, 1, t.Hello(2, "good", 2)))
            await friend.send_multipart(up(SECRET, 2, 2, t.Signal(10)))
            await asyncio.wait_for(got.wait(), 10)
            # The stranger's frames came on another connection: maybe not handled yet.
            deadline = asyncio.get_running_loop().time() + 10
            while "does not match the job secret" not in caplog.text \
                    or "malformed frame set" not in caplog.text:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
        assert hellos == [2]
        assert msgs == [t.Signal(10)]
        text = caplog.text
        assert "refused a message from" in text and "does not match the job secret" in text
        assert "too short" in text or "does not match" in text
        assert "refused Signal from a peer that did not say hello" in text
    finally:
        stranger.close(0)
        friend.close(0)
        ctx.term()
        port.close(0)
