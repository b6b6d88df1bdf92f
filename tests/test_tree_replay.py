"""Tree frames cannot be replayed, reflected, or sent to another link.

The codec (``pm.proto.tree_frames`` envelopes and :class:`~pm.proto.tree_frames.LinkSeal`)
without sockets, then the real zmq links: a :class:`ChildPort` and a
:class:`ParentLink` facing a peer that replays what it captured.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import pytest
import zmq
import zmq.asyncio

from pm.agent.child_port import ChildPort
from pm.agent.links import ParentLink, secure
from pm.proto import tree_wire as t
from pm.proto.errors import AuthError
from pm.proto.tree_frames import (
    DOWN,
    ENVELOPE_LEN,
    MAC_LEN,
    UP,
    LinkSeal,
    open_envelope,
    seal,
    stamp,
)

pytestmark = pytest.mark.timeout(30)

SECRET = b"r" * 32


def body_of(msg: t.Msg, secret: bytes = SECRET) -> bytes:
    return seal(secret, t.encode(msg))


def take(end: LinkSeal, envelope: bytes, body: bytes, link: int | None) -> t.Msg:
    """What a receiver does with a frame: open, accept, decode."""
    got, seq, payload = end.open(envelope, body, link)
    end.accept(got, seq)
    return t.decode(payload)


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``cond`` until it holds (a warning is logged by another task) or fail."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- codec


def test_in_order_frames_pass_both_ways_and_gaps_are_allowed() -> None:
    child, parent = LinkSeal(SECRET, DOWN), LinkSeal(SECRET, UP)
    for n in range(3):
        body = body_of(t.Signal(n))
        assert take(parent, child.envelope(5, body), body, 5) == t.Signal(n)
        body = body_of(t.Kill("x", n))
        assert take(child, parent.envelope(5, body), body, 5) == t.Kill("x", n)
    # A frame lost on the way leaves a gap: the next one is still taken.
    body = body_of(t.Signal(9))
    assert take(parent, stamp(SECRET, body, 5, UP, 10), body, 5) == t.Signal(9)


def test_envelope_is_small_and_binds_seq_link_and_direction() -> None:
    body = body_of(t.Signal(1))
    env = stamp(SECRET, body, 7, UP, 3)
    assert len(env) == ENVELOPE_LEN == 29
    assert open_envelope(SECRET, env, body) == (7, UP, 3)
    for i in range(MAC_LEN, ENVELOPE_LEN):  # any header byte changed
        bad = bytearray(env)
        bad[i] ^= 1
        with pytest.raises(AuthError, match="does not match"):
            open_envelope(SECRET, bytes(bad), body)
    with pytest.raises(AuthError, match="does not match"):
        open_envelope(b"x" * 32, env, body)
    with pytest.raises(AuthError, match="does not match"):  # the envelope of another body
        open_envelope(SECRET, env, body_of(t.Signal(2)))
    with pytest.raises(AuthError, match="too short"):
        open_envelope(SECRET, env[:-1], body)


def test_a_replayed_frame_is_dropped() -> None:
    child, parent = LinkSeal(SECRET, DOWN), LinkSeal(SECRET, UP)
    first, second = body_of(t.Signal(1)), body_of(t.Signal(2))
    env1, env2 = child.envelope(4, first), child.envelope(4, second)
    take(parent, env1, first, 4)
    with pytest.raises(AuthError, match=r"replayed .*sequence 0, last accepted 0"):
        parent.open(env1, first, 4)
    take(parent, env2, second, 4)
    with pytest.raises(AuthError, match=r"replayed .*sequence 0, last accepted 1"):
        parent.open(env1, first, 4)
    with pytest.raises(AuthError, match="replayed"):  # from a connection not known yet
        parent.open(env2, second, None)


def test_a_reflected_frame_is_dropped() -> None:
    child, parent = LinkSeal(SECRET, DOWN), LinkSeal(SECRET, UP)
    down = body_of(t.Kill("stop", 1.0))
    env = parent.envelope(4, down)
    with pytest.raises(AuthError, match=r"parent-to-child direction .*reflected"):
        parent.open(env, down, 4)
    hello = body_of(t.Hello(4, "n", 1))
    env = child.envelope(4, hello)
    with pytest.raises(AuthError, match=r"child-to-parent direction .*reflected"):
        child.open(env, hello, 4)


def test_a_frame_for_another_link_is_dropped_and_one_body_serves_several() -> None:
    parent = LinkSeal(SECRET, UP)
    one = body_of(t.CollOut(1, t.ALLGATHER, [b"a" * 1000, b"b"]))
    env3, env4 = parent.envelope(3, one), parent.envelope(4, one)
    c3, c4 = LinkSeal(SECRET, DOWN), LinkSeal(SECRET, DOWN)
    with pytest.raises(AuthError, match="sealed for vertex 3's link, not vertex 4's"):
        c4.open(env3, one, 4)
    assert take(c3, env3, one, 3) == take(c4, env4, one, 4)


def test_a_forged_body_under_a_genuine_envelope_is_dropped_and_not_counted() -> None:
    child, parent = LinkSeal(SECRET, DOWN), LinkSeal(SECRET, UP)
    body = body_of(t.Signal(1))
    env = child.envelope(2, body)
    forged = body[: MAC_LEN] + t.encode(t.Signal(9))
    with pytest.raises(AuthError, match="does not match"):
        parent.open(env, forged, 2)
    assert take(parent, env, body, 2) == t.Signal(1)  # the genuine frame still goes through


# ---------------------------------------------------------------- real links


async def test_child_port_drops_replayed_reflected_and_misrouted_frames(
        caplog: pytest.LogCaptureFixture) -> None:
    """A child (raw DEALER, vertex 2) and a spy that replays its captured frames."""
    msgs: list[t.Msg] = []
    got = asyncio.Event()

    def on_msg(vertex: int, msg: t.Msg) -> None:
        assert vertex == 2
        msgs.append(msg)
        got.set()

    port = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: None, on_msg)
    ctx = zmq.asyncio.Context()
    child, spy = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    secure(child, SECRET, server=False)
    secure(spy, SECRET, server=False)  # a spy inside the job's encryption, at worst
    end = LinkSeal(SECRET, DOWN)  # the child's side of its link
    sent: list[list[bytes]] = []

    async def say(msg: t.Msg) -> None:
        body = body_of(msg)
        parts = [end.envelope(2, body), body]
        sent.append(parts)
        await child.send_multipart(parts)

    async def next_msg() -> t.Msg:
        await asyncio.wait_for(got.wait(), 10)
        got.clear()
        return msgs.pop(0)

    try:
        with caplog.at_level(logging.WARNING, logger="pm.agent.links"):
            child.connect(port.address)
            spy.connect(port.address)
            await say(t.Hello(2, "node2", 22))
            await say(t.Signal(1))
            assert await next_msg() == t.Signal(1)

            # Replays on the child's own connection: dropped, then it goes on.
            await child.send_multipart(sent[1])
            await child.send_multipart(sent[0])
            await say(t.Signal(2))
            assert await next_msg() == t.Signal(2)
            assert "refused a message from vertex 2: replayed or out-of-order frame " \
                   "(sequence 1, last accepted 1)" in caplog.text

            # What the port sent down, reflected back to it.
            port.send(2, t.Signal(3))
            reflected = await asyncio.wait_for(child.recv_multipart(), 10)
            assert take(end, reflected[0], reflected[1], 2) == t.Signal(3)
            await child.send_multipart(reflected)
            # A frame of vertex 5's link on the connection of vertex 2.
            body = body_of(t.Signal(4))
            await child.send_multipart([stamp(SECRET, body, 5, UP, 99), body])
            await say(t.Signal(5))
            assert await next_msg() == t.Signal(5)
            text = caplog.text
            assert "refused a message from vertex 2: frame sealed for the parent-to-child " \
                   "direction" in text
            assert "frame sealed for vertex 5's link, not vertex 2's" in text

            # A spy replaying the child's hello cannot take over its link.
            await spy.send_multipart(sent[0])
            await until(lambda: re.search(r"refused a message from 127\.0\.0\.1:\d+: replayed",
                                          caplog.text) is not None)
            port.send(2, t.Signal(6))
            again = await asyncio.wait_for(child.recv_multipart(), 10)
            assert take(end, again[0], again[1], 2) == t.Signal(6)
            assert await spy.poll(0) == 0
            assert msgs == []
    finally:
        child.close(0)
        spy.close(0)
        ctx.term()
        port.close(0)


async def test_parent_link_drops_replayed_and_reflected_frames(
        caplog: pytest.LogCaptureFixture) -> None:
    """A real ParentLink of vertex 3 under a raw ROUTER that replays and reflects."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    secure(router, SECRET, server=True)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    msgs: list[t.Msg] = []
    got = asyncio.Event()

    def on_msg(msg: t.Msg) -> None:
        msgs.append(msg)
        got.set()

    link = ParentLink(SECRET, f"tcp://127.0.0.1:{port}", 3, on_msg)
    end = LinkSeal(SECRET, UP)  # the parent's side of vertex 3's link
    try:
        with caplog.at_level(logging.WARNING, logger="pm.agent.links"):
            link.start()
            link.send(t.Hello(3, "node3", 33))
            ident, env, body = await asyncio.wait_for(router.recv_multipart(), 10)
            assert take(end, env, body, 3) == t.Hello(3, "node3", 33)

            first = body_of(t.Signal(1))
            down = [ident, end.envelope(3, first), first]
            await router.send_multipart(down)
            await asyncio.wait_for(got.wait(), 10)
            got.clear()
            await router.send_multipart(down)  # replayed
            await router.send_multipart([ident, env, body])  # its own hello, reflected
            other = body_of(t.Signal(7))
            await router.send_multipart([ident, stamp(SECRET, other, 4, DOWN, 50), other])
            second = body_of(t.Signal(2))
            await router.send_multipart([ident, end.envelope(3, second), second])
            await asyncio.wait_for(got.wait(), 10)
            assert msgs == [t.Signal(1), t.Signal(2)]
            text = caplog.text
            assert "agent 3: refused a message from the parent: replayed or out-of-order " \
                   "frame (sequence 0, last accepted 0)" in text
            assert "agent 3: refused a message from the parent: frame sealed for the " \
                   "child-to-parent direction" in text
            assert "frame sealed for vertex 4's link, not vertex 3's" in text
    finally:
        link.close(0)
        router.close(0)
        ctx.term()


async def test_one_body_forwarded_to_several_children_over_real_links() -> None:
    """Head port -> agent 0 (ParentLink + ChildPort) -> agents 1 and 2, as a collective's
    result goes down: agent 0 forwards its parent's body as it came, the port stamps it
    for each child, and both children take it."""
    out = t.CollOut(4, t.ALLGATHER, [b"x" * 200_000, b"y"])
    hellos: dict[int, asyncio.Event] = {v: asyncio.Event() for v in (0, 1, 2)}
    results: dict[int, asyncio.Future[t.Msg]] = {
        v: asyncio.get_running_loop().create_future() for v in (1, 2)}
    head = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: hellos[v].set(), None)
    mid_port = ChildPort(SECRET, "tcp://127.0.0.1", lambda v, h: hellos[v].set(), None)

    def forward(msg: t.Msg) -> None:
        assert msg == out and mid.frame is not None
        for child in (1, 2):
            mid_port.send_raw(child, mid.frame)

    mid = ParentLink(SECRET, head.address, 0, forward)
    leaves = [ParentLink(SECRET, mid_port.address, v, results[v].set_result) for v in (1, 2)]
    try:
        for link in (mid, *leaves):
            link.start()
            link.send(t.Hello(link.vertex, "n", link.vertex))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in hellos.values())), 10)
        head.send(0, out)
        got = await asyncio.wait_for(asyncio.gather(results[1], results[2]), 10)
        assert got == [out, out]  # each ParentLink takes only frames of its own link
    finally:
        for link in (mid, *leaves):
            link.close(0)
        head.close(0)
        mid_port.close(0)


async def test_a_refused_hello_leaves_the_peer_unknown(caplog: pytest.LogCaptureFixture) -> None:
    """An owner that refuses a hello (not its child) drops the vertex: the peer's later
    frames, sealed for its real parent's port, are not taken either."""
    msgs: list[t.Msg] = []
    refused = asyncio.Event()
    port: ChildPort

    def on_hello(vertex: int, hello: t.Hello) -> None:
        port.drop(vertex)
        refused.set()

    port = ChildPort(SECRET, "tcp://127.0.0.1", on_hello, lambda v, m: msgs.append(m))
    ctx = zmq.asyncio.Context()
    peer = ctx.socket(zmq.DEALER)
    secure(peer, SECRET, server=False)
    end = LinkSeal(SECRET, DOWN)
    try:
        with caplog.at_level(logging.WARNING, logger="pm.agent.links"):
            peer.connect(port.address)
            for msg in (t.Hello(9, "n", 9), t.Signal(1)):
                body = body_of(msg)
                await peer.send_multipart([end.envelope(9, body), body])
            await asyncio.wait_for(refused.wait(), 10)
            await until(lambda: re.search(r"refused Signal from 127\.0\.0\.1:\d+, which did "
                                          r"not say hello", caplog.text) is not None)
        assert msgs == []
    finally:
        peer.close(0)
        ctx.term()
        port.close(0)
