"""Addresses of tree ports: IP literals, an interface's address, ours on the route to a host.

What an agent (or the head) needs to choose the address it listens on for its children
(:mod:`pm.agent.listen_port`) and to read the address of its parent; plain sockets, no
zmq.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from pm.proto.errors import TransportError

#: The address a port listens on when it listens on all of them.
ANY_ADDRESS = "0.0.0.0"


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (an IPv6 one may name its zone, ``%eth0``).

    (What ``ipaddress.ip_address`` takes, without importing it: 1 ms of CPU at the start
    of every agent with children.)"""
    for family, address in ((socket.AF_INET, text), (socket.AF_INET6, text.partition("%")[0])):
        try:
            socket.inet_pton(family, address)
        except (OSError, ValueError):
            continue
        return True
    return False


def iface_address(name_or_addr: str) -> str:
    """The IPv4 address of interface ``name_or_addr``, or the address itself if it is one."""
    if is_ip(name_or_addr):
        return name_or_addr
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = struct.pack("256s", name_or_addr.encode()[:15])
            res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
        except OSError as exc:
            raise TransportError(f"interface {name_or_addr!r}: {exc.strerror}") from None
    return socket.inet_ntoa(res[20:24])


def route_source(host: str) -> str | None:
    """Our address on the route to ``host`` (``None`` if it does not resolve).

    A UDP ``connect`` only looks the route up: nothing is sent.
    """
    # An ASCII name as bytes: a str goes through the idna codec (1 ms of CPU to import).
    name = host.encode() if host.isascii() else host
    try:
        infos = socket.getaddrinfo(name, 9, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    for *_, addr in infos:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect(addr)
                return str(s.getsockname()[0])
            except OSError:
                continue
    return None


def endpoint_host(address: str) -> str:
    """``tcp://10.0.0.1:4000`` -> ``10.0.0.1``."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")
