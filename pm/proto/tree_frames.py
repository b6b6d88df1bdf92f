"""How a tree message crosses a link: sealed, stamped for its link, in parts (sans-IO).

The message itself (:mod:`pm.proto.tree_wire`) is a msgpack payload.  On a tree link
it travels as two zmq parts, an *envelope* and a *body*:

* body = ``mac(16) || payload``, mac the keyed BLAKE2b (RFC 7693, 16 bytes) of
  the payload under the job's secret (:func:`seal`/:func:`unseal`).  It says nothing about
  where it goes, so one body serves every child a message goes to, and an
  agent forwards its parent's body to its children as it came.
* envelope = ``tag(16) || seq(8) || link(4) || direction(1)``, tag the
  same MAC of ``0xc1 || seq || link || direction || mac``
  (:func:`stamp`/:func:`open_envelope`).  ``link`` is the child's vertex (each
  vertex has one parent in a job, so it names the link), ``direction``
  :data:`UP` (child to parent) or :data:`DOWN`, and ``seq`` counts the frames
  of that direction of that link from 0.

The tag covers the body's MAC, not its payload: binding a body to another
child costs one MAC of 46 bytes, however large the body.  A receiver
(:class:`LinkSeal`) takes a frame only if both MACs match, the direction is the
one it receives, the link is the one the frame came on, and ``seq`` is above
the last it accepted on that link: a captured frame cannot be replayed, sent
back to its sender, or sent to another agent.  A new job has a new secret, so
the counters start again at 0 with every job.  The tag's input starts with
0xc1, which msgpack never uses, so it is never a payload: a body's MAC cannot
pass for an envelope's tag.

A body over :data:`PART_MAX` crosses as several parts (:func:`split`).  The job's
CURVE keys, which encrypt the links, come from the same secret (:func:`curve_keys`).

Keyed BLAKE2b is a MAC by design (no HMAC construction needed); it comes from
CPython's own module behind ``hashlib.blake2b``, and MACs are compared with the
constant-time comparison behind ``hmac.compare_digest``: importing ``hashlib`` or
``hmac`` loads OpenSSL, 3 ms of CPU at the start of every agent of a launch.
"""

from __future__ import annotations

import struct

try:
    from _blake2 import blake2b
    from _operator import _compare_digest as compare_digest
except ImportError:  # a Python without them: the same functions, through OpenSSL's modules
    from hashlib import blake2b
    from hmac import compare_digest  # type: ignore[no-redef]

from pm.proto.errors import AuthError

#: Bytes of a MAC (of a body, and of an envelope's tag).
MAC_LEN = 16

#: Directions of a tree link (bound under an envelope's tag).
UP = 1  # child to parent
DOWN = 2  # parent to child
_WAYS = {UP: "child-to-parent", DOWN: "parent-to-child"}
_HEAD = struct.Struct(">QiB")  # seq, link (the child's vertex), direction
ENVELOPE_LEN = MAC_LEN + _HEAD.size
#: First byte of what a tag covers: unused by msgpack, so never a payload's.
_TAGGED = b"\xc1"


#: Largest zmq frame a tree socket takes (ZMQ_MAXMSGSIZE): a peer's frame above it is refused
#: by libzmq before any of it is stored, authenticated or not.  A body larger than this
#: crosses a link as several parts (:func:`split`), joined again on arrival.
PART_MAX = 4 << 20


def split(body: bytes | memoryview) -> list[bytes | memoryview]:
    """``body`` as parts of at most :data:`PART_MAX` bytes (one part, itself, if it fits)."""
    if len(body) <= PART_MAX:
        return [body]
    view = memoryview(body)
    return [view[i:i + PART_MAX] for i in range(0, len(view), PART_MAX)]


def curve_keys(secret: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """The job's CURVE keys, derived from its secret: (server public, server secret,
    client public, client secret), Z85-encoded as zmq takes them.

    Every agent of a job got the secret over its bootstrap channel (stdin of
    ssh, srun or the service's CURVE link), so every agent can make them and
    nobody else can: a peer without the job's server public key cannot
    complete the handshake of a tree port, and nobody on the network reads
    the links.  A new job has new keys.
    """
    import zmq
    from zmq.utils import z85

    keys = []
    for role in (b"curve-server", b"curve-client"):
        sec = z85.encode(blake2b(role, key=secret, digest_size=32).digest())
        keys += [zmq.curve_public(sec), sec]
    return keys[0], keys[1], keys[2], keys[3]


def mac(secret: bytes, data: bytes | memoryview) -> bytes:
    """The MAC of ``data`` under ``secret`` (keyed BLAKE2b, :data:`MAC_LEN` bytes; a key
    is at most 64 bytes: a job's secret has 32)."""
    return blake2b(data, key=secret, digest_size=MAC_LEN).digest()


def seal(secret: bytes, payload: bytes) -> bytes:
    """Prefix ``payload`` with its MAC under ``secret``."""
    return mac(secret, payload) + payload


def unseal(secret: bytes, frame: bytes | memoryview) -> bytes | memoryview:
    """Check a frame's MAC and return the payload; :class:`AuthError` if it does not match.

    A memoryview frame gives a memoryview payload: a multi-MiB allgather result
    is then never copied before it is decoded (fresh pages cost more than the MAC).
    """
    if len(frame) < MAC_LEN:
        raise AuthError("frame shorter than its MAC")
    payload = frame[MAC_LEN:]
    if not compare_digest(mac(secret, payload), frame[:MAC_LEN]):
        raise AuthError("frame MAC does not match the job secret")
    return payload


def _tag(secret: bytes, head: bytes | memoryview, body: bytes | memoryview) -> bytes:
    return mac(secret, b"".join((_TAGGED, head, body[:MAC_LEN])))


def stamp(secret: bytes, body: bytes | memoryview, link: int, direction: int,
          seq: int) -> bytes:
    """The envelope that sends sealed ``body`` as frame ``seq`` of ``direction`` on ``link``."""
    head = _HEAD.pack(seq, link, direction)
    return _tag(secret, head, body) + head


def open_envelope(secret: bytes, envelope: bytes | memoryview,
                  body: bytes | memoryview) -> tuple[int, int, int]:
    """``(link, direction, seq)`` of an envelope; :class:`AuthError` if its tag does not match.

    Only the envelope is checked (cheap): :func:`unseal` checks the body.
    """
    if len(envelope) != ENVELOPE_LEN or len(body) < MAC_LEN:
        raise AuthError("frame envelope or body too short")
    head = envelope[MAC_LEN:]
    if not compare_digest(_tag(secret, head, body), envelope[:MAC_LEN]):
        raise AuthError("frame MAC does not match the job secret")
    seq, link, direction = _HEAD.unpack(head)
    return link, direction, seq


class LinkSeal:
    """Envelopes at one end of tree links: the next ``seq`` to send, the last one accepted.

    Pure (no sockets).  An agent's parent link is one end of one link, its
    child port one end of each child's link; ``inbound`` is the direction this
    end receives.  Counters are per link (the child's vertex) and start at 0.
    """

    def __init__(self, secret: bytes, inbound: int) -> None:
        self.secret = secret
        self.inbound = inbound
        self.outbound = UP if inbound == DOWN else DOWN
        self._next: dict[int, int] = {}
        self._last: dict[int, int] = {}

    def envelope(self, link: int, body: bytes | memoryview) -> bytes:
        """The envelope of the next frame this end sends on ``link`` (it takes a ``seq``)."""
        seq = self._next.get(link, 0)
        self._next[link] = seq + 1
        return stamp(self.secret, body, link, self.outbound, seq)

    def open(self, envelope: bytes | memoryview, body: bytes | memoryview,
             link: int | None) -> tuple[int, int, bytes | memoryview]:
        """Check a frame that came on ``link``: its ``(link, seq, payload)``.

        ``link`` is ``None`` for a peer not known yet (its :class:`Hello` names
        its link).  :class:`AuthError` says what is wrong: a MAC, a frame
        sealed for the other direction or another link, or a ``seq`` not above
        the last accepted (a replay).  Nothing is recorded: :meth:`accept` does.
        """
        got, direction, seq = open_envelope(self.secret, envelope, body)
        if direction != self.inbound:
            raise AuthError(f"frame sealed for the {_WAYS.get(direction, 'unknown')} direction "
                            "(reflected back to its sender?)")
        if link is not None and got != link:
            raise AuthError(f"frame sealed for vertex {got}'s link, not vertex {link}'s")
        last = self._last.get(got, -1)
        if seq <= last:
            raise AuthError(f"replayed or out-of-order frame (sequence {seq}, last accepted "
                            f"{last})")
        return got, seq, unseal(self.secret, body)

    def accept(self, link: int, seq: int) -> None:
        """Frame ``seq`` of ``link`` was taken: no frame up to it is taken again."""
        self._last[link] = seq
