"""Head/agent messages: the codec, the seal, and a real tree port refusing strangers."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable

import msgpack
import pytest
import zmq
import zmq.asyncio

from pm.agent import links
from pm.agent.child_port import ChildPort
from pm.agent.links import secure
from pm.agent.refusals import fd_peer
from pm.proto import tree_wire as t
from pm.proto.errors import AuthError, ProtocolError
from pm.proto.tree_frames import UP, seal, stamp, unseal

pytestmark = pytest.mark.timeout(20)

SECRET = b"s" * 32


def up(secret: bytes, link: int, seq: int, msg: t.Msg) -> list[bytes]:
    """The zmq parts a child on ``link`` sends as its frame ``seq``."""
    body = seal(secret, t.encode(msg))
    return [stamp(secret, body, link, UP, seq), body]

SAMPLES: list[t.Msg] = [
    t.Hello(3, "node07", 4242),
    t.CollIn(2, t.ALLGATHER, [[0, b"\x00addr"], [1, b"\xffaddr"]]),
    t.CollOut(2, t.FENCE, [b"k", 0, b"v=;\n"]),
    t.Output([t.RankOutput(0, 1, b"line\n")]),
    t.Stdin(0, b"\x00" * 10, True),
    t.Exits([t.RankExit(1, 0, 3, 0, "")]),
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
    assert t.decode(unseal(SECRET, seal(SECRET, wire))) == msg


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
    frame = seal(SECRET, t.encode(t.Signal(2)))
    with pytest.raises(AuthError, match="does not match"):
        unseal(b"x" * 32, frame)
    with pytest.raises(AuthError):
        unseal(SECRET, frame[:-1] + b"\x03")
    with pytest.raises(AuthError, match="shorter"):
        unseal(SECRET, b"abc")


async def until(pred: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


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
    stranger = ctx.socket(zmq.DEALER)  # knows nothing of the job: not even its CURVE keys
    insider = ctx.socket(zmq.DEALER)  # has the link keys but seals with another secret
    friend = ctx.socket(zmq.DEALER)
    secure(insider, SECRET, server=False)
    secure(friend, SECRET, server=False)
    try:
        with caplog.at_level(logging.WARNING):
            stranger.connect(port.address)
            await stranger.send_multipart(up(b"x" * 32, 1, 0, t.Hello(1, "evil", 1)))
            insider.connect(port.address)
            # Wrong secret, garbage, and a message before hello from a sealed peer.
            await insider.send_multipart(up(b"x" * 32, 1, 0, t.Hello(1, "evil", 1)))
            await insider.send_multipart([b"garbage", b"more garbage"])
            await insider.send(b"garbage")
            friend.connect(port.address)
            await friend.send_multipart(up(SECRET, 2, 0, t.Signal(9)))
            await friend.send_multipart(up(SECRET, 2, 1, t.Hello(2, "good", 2)))
            await friend.send_multipart(up(SECRET, 2, 2, t.Signal(10)))
            await asyncio.wait_for(got.wait(), 10)
            # The others came on other connections: maybe not handled yet.
            await until(lambda: "does not match the job secret" in caplog.text
                        and "malformed frame set" in caplog.text
                        and "refused a connection from" in caplog.text, "the refusals")
        assert hellos == [2]
        assert msgs == [t.Signal(10)]
        text = caplog.text
        own = port.address.rsplit(":", 1)[1]
        # Never by the port's own address (the stranger's when the kernel still knew it).
        assert "refused a connection from" in text
        assert all(p != own for p in re.findall(r"refused a connection from [\d.]+:(\d+)", text))
        assert "refused a message from 127.0.0.1:" in text
        assert "too short" in text or "does not match" in text
        assert re.search(r"refused Signal from 127\.0\.0\.1:\d+, which did not say hello", text)
    finally:
        stranger.close(0)
        insider.close(0)
        friend.close(0)
        ctx.term()
        port.close(0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_huge_frame_before_authentication_is_refused_unread(
        caplog: pytest.LogCaptureFixture) -> None:
    """A raw TCP stranger announcing a 400 MB frame in the handshake: the port drops it
    without storing it, names its address, and keeps serving."""
    port = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: None, lambda v, m: None)
    host, tcp = port.address.split("://")[1].rsplit(":", 1)
    before = _rss()
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING):
        reader, writer = await asyncio.open_connection(host, int(tcp))
        # ZMTP 3.0 greeting (signature, version, mechanism, as-server, filler) ...
        mech = b"CURVE" if links.CURVE else b"NULL"
        writer.write(b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mech.ljust(20, b"\x00")
                     + b"\x00" + bytes(31))
        # ... then a long command frame of 400 MB, sent in 1 MB pieces while we may.
        writer.write(b"\x06" + (400 << 20).to_bytes(8, "big"))
        sent = 0
        chunk = bytes(1 << 20)
        try:
            while sent < 400 << 20:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 10)
                sent += len(chunk)
        except (ConnectionError, OSError):
            pass
        writer.close()
        await until(lambda: "refused a connection from" in caplog.text, "the refusal")
    assert sent < 64 << 20, f"the port read {sent} bytes of a frame over its bound"
    assert _rss() - before < 64 << 20
    del reader, loop
    port.close(0)


async def test_a_refused_peer_is_named_by_its_address(caplog: pytest.LogCaptureFixture) -> None:
    port = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: None, lambda v, m: None)
    host, tcp = port.address.split("://")[1].rsplit(":", 1)
    try:
        with caplog.at_level(logging.WARNING):
            reader, writer = await asyncio.open_connection(host, int(tcp))
            me = "{}:{}".format(*writer.get_extra_info("sockname")[:2])
            await until(lambda: me in port.connections.values(), "the port to see us")
            # A greeting for another security mechanism than the port's.
            mech = b"PLAIN" if links.CURVE else b"CURVE"
            writer.write(b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mech.ljust(20, b"\x00")
                         + b"\x00" + bytes(31))
            await until(lambda: f"refused a connection from {me}: " in caplog.text,
                        "the refusal naming us")
            writer.close()
            del reader
        assert port.address.split("://")[1] not in caplog.text
    finally:
        port.close(0)


def test_a_reused_fd_is_not_taken_for_the_refused_peer() -> None:
    """The monitor's accept is read late: by then the refused connection's fd number may be a
    socket of ours connecting to the port, whose peer is the port itself.  Only a connection
    to the port's own number is named."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, peer = server.accept()
            with accepted:
                assert fd_peer(accepted.fileno(), port) == f"127.0.0.1:{peer[1]}"
                assert fd_peer(client.fileno()) == f"127.0.0.1:{port}"
                assert fd_peer(client.fileno(), port) == ""


async def test_a_silent_child_is_not_lost_while_its_silence_is_explained(
        caplog: pytest.LogCaptureFixture) -> None:
    """The head inside a Slurm job (``ChildPort.vouch``): a silent child is named lost only
    once slurmctld no longer says the job is suspended, and not if it spoke meanwhile."""
    lost: list[int] = []
    got: list[t.Msg] = []
    asked: list[asyncio.Future[bool]] = []

    async def vouch(vertices: list[int]) -> bool:
        assert vertices == [2]
        asked.append(asyncio.get_running_loop().create_future())
        return await asked[-1]

    port = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: None,
                     lambda v, m: got.append(m), heartbeat=0.2,
                     on_lost=lambda v, why: lost.append(v))
    port.vouch = vouch
    ctx = zmq.asyncio.Context()
    child = ctx.socket(zmq.DEALER)
    secure(child, SECRET, server=False)
    try:
        with caplog.at_level(logging.INFO):
            child.connect(port.address)
            await child.send_multipart(up(SECRET, 2, 0, t.Hello(2, "n2", 2)))
            for n in (1, 2):  # silent, and the job suspended: watched on
                await until(lambda n=n: len(asked) == n, f"question {n}")
                asked[-1].set_result(True)
            await until(lambda: len(asked) == 3, "question 3")
            await child.send_multipart(up(SECRET, 2, 1, t.Signal(10)))  # it speaks
            await until(lambda: got == [t.Signal(10)], "its message")
            asked[-1].set_result(False)  # running: but it spoke since the question
            await until(lambda: len(asked) == 4, "question 4")  # (not lost: still watched)
            assert lost == []
            asked[-1].set_result(False)  # running, and silent since: lost
            await until(lambda: lost == [2], "the loss")
        assert "vertex 2: no sign of life for 0.2 s" in caplog.text
    finally:
        child.close(0)
        ctx.term()
        port.close(0)
