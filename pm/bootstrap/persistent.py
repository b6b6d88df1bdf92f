"""Use running ``pm-agent serve`` services (``--agents FILE``): no process to start per host.

The head asks each node's service, over a CURVE-secured ZeroMQ connection,
to start the agent of one vertex of the job (``pm.proto.service_wire``).  An agent
with children opens its tree port first and the service returns its
address; the head then asks the children's services to start their agents
with that address as parent.  So the tree of links is the same as with the
other bootstraps (each agent has its children's links, the head one link to
vertex 0), but the head itself talks to every service once to start the
job (``head_driven``): services do not reach each other.

The agents file, one entry per line (``#`` comments)::

    client-key = ~/.config/pmrun/client.key   # our key pair (default: $PM_CLIENT_KEY,
                                              # else ~/.config/pmrun/client.key)
    server-key = /etc/pmrun/agent.pub         # the services' public key (for the lines below)
    node1                                     # service at node1:7300
    node2:7301                                # service at node2:7301
    node3 10.0.0.3:7300 key=/etc/pmrun/node3.pub

The first word is the host name the job uses (``PMI_HOSTNAME``, messages);
an address, when given, is where its service listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from pm.agent.links import allow_ipv6
from pm.agent.owned import Owned
from pm.bootstrap.base import Bootstrap, join_timeout_of
from pm.common.kary_tree import Tree
from pm.proto import service_wire as sp
from pm.proto.errors import ProtocolError
from pm.proto.plan import AgentConfig

log = logging.getLogger("pm.bootstrap.persistent")

DEFAULT_PORT = 7300
DEFAULT_CLIENT_KEY = "~/.config/pmrun/client.key"


class AgentsFileError(ValueError):
    """An agents file that cannot be used."""


def _address(text: str) -> str:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or ``tcp://...`` -> ``tcp://HOST:PORT``;
    ValueError naming what is wrong with it."""
    scheme, sep, rest = text.rpartition("://")
    if sep and scheme != "tcp":
        raise ValueError(f"{text}: a service listens on tcp://, not {scheme}://")
    if "]:" in rest or (rest.count(":") == 1 and not rest.startswith("[")):
        host, _, port = rest.rpartition(":")
        if not (port.isascii() and port.isdecimal() and 0 < int(port) < 65536):
            raise ValueError(f"{text}: the port must be a number from 1 to 65535, "
                             f"not {port!r}")
    else:
        host, port = rest, str(DEFAULT_PORT)
    if host.strip("[]") == "":
        raise ValueError(f"{text}: no host")
    return f"tcp://{host}:{port}"


def _host_of(word: str) -> str:
    """The host name in ``HOST[:PORT]``."""
    if word.startswith("["):
        return word[1:].split("]", 1)[0]
    return word.rsplit(":", 1)[0] if word.count(":") == 1 else word


def parse_agents(text: str, base: Path | None = None) -> dict[str, Any]:
    """``{"services": {host: {"address", "key"}}, "client_key": path}`` of an agents file."""
    from pm.agent.service import KeyFileError, read_public

    services: dict[str, dict[str, str]] = {}
    client_key = os.environ.get("PM_CLIENT_KEY") or DEFAULT_CLIENT_KEY
    server_key: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            setting = line.split("=", 1)[0].strip()
            if "=" in line and setting not in ("client-key", "server-key") and (
                    " " not in setting and "key=" not in line.split()[0]):
                raise AgentsFileError(f"agents file line {n}: unknown setting {setting!r} "
                                      "(client-key or server-key)")
            if "=" in line and setting in ("client-key", "server-key"):
                name, value = (s.strip() for s in line.split("=", 1))
                if name == "client-key":
                    path = Path(value).expanduser()
                    client_key = str(path if path.is_absolute() or base is None
                                     else base / path)
                else:
                    server_key = read_public(value, base).decode()
                continue
            words = line.split()
            address, key = None, server_key
            for word in words[1:]:
                if word.startswith("key="):
                    key = read_public(word[4:], base).decode()
                elif address is None:
                    address = word
                else:
                    raise AgentsFileError(f"agents file line {n}: what is {word!r}?")
            host = words[0] if address is not None else _host_of(words[0])
            address = address or words[0]
        except KeyFileError as exc:
            raise AgentsFileError(f"agents file line {n}: {exc}") from None
        if key is None:
            raise AgentsFileError(f"agents file line {n}: no key for {host} "
                                  "(server-key = FILE before it, or key=... on the line)")
        if host in services:
            raise AgentsFileError(f"agents file line {n}: {host} listed twice")
        try:
            services[host] = {"address": _address(address), "key": key}
        except ValueError as exc:
            raise AgentsFileError(f"agents file line {n}: {exc}") from None
    if not services:
        raise AgentsFileError("agents file lists no services")
    return {"services": services, "client_key": client_key}


def read_agents_file(path: str) -> dict[str, Any]:
    """:func:`parse_agents` of the file at ``path`` (relative key paths: from its folder)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise AgentsFileError(f"--agents {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise AgentsFileError(f"--agents {path}: not text ({exc})") from None
    return parse_agents(text, file.resolve().parent)


class _Service:
    """Our connection to one service: requests out, replies routed to futures."""

    def __init__(self, ctx: zmq.asyncio.Context, host: str, address: str, server_key: bytes,
                 keys: tuple[bytes, bytes], on_exit: Callable[[sp.Exited], None]) -> None:
        self.address = address
        self.host = host
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 1000
        self.sock.curve_serverkey = server_key
        self.sock.curve_publickey, self.sock.curve_secretkey = keys
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        self.pending: dict[tuple[str, int], asyncio.Future[str]] = {}
        self.on_exit = on_exit
        self.refused: str | None = None
        loop = asyncio.get_running_loop()
        events = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self._mon = self.sock.get_monitor_socket(events)
        allow_ipv6(self.sock, address)
        self.sock.connect(address)
        #: Receiving replies, watching handshakes: ended by close()/aclose().
        self.owned = Owned(loop)
        self.owned.spawn(self._recv())
        self.owned.spawn(self._watch())

    async def _watch(self) -> None:
        """A failed handshake (our key refused, a wrong server key) fails our requests at once."""
        from zmq.utils.monitor import parse_monitor_message

        frames = await self._mon.recv_multipart()
        event = int(parse_monitor_message(frames)["event"])
        self.refused = ("the service refused our key" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                        else "the CURVE handshake failed (wrong server key, or not a pm-agent "
                             "service)")
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionRefusedError(self.refused))

    async def _recv(self) -> None:
        while True:
            data = await self.sock.recv()
            try:
                msg = sp.decode(data)
            except ProtocolError as exc:
                log.warning("service %s: %s", self.address, exc)
                continue
            if isinstance(msg, sp.Error):
                log.error("service %s refused a request: %s", self.address, msg.why)
                continue
            if isinstance(msg, sp.Exited):
                self.on_exit(msg)
                continue
            if not isinstance(msg, sp.Started | sp.Failed):
                log.warning("service %s: unexpected %s", self.address, type(msg).__name__)
                continue
            fut = self.pending.pop((msg.job, msg.vertex), None)
            if fut is None or fut.done():
                continue
            if isinstance(msg, sp.Started):
                fut.set_result(msg.address)
            else:
                fut.set_exception(RuntimeError(msg.why))

    async def start(self, cfg: AgentConfig, listen: bool, deadline: float) -> str:
        """Ask for one vertex's agent; its port address ("" for a leaf) by ``deadline``."""
        if self.refused:
            raise ConnectionRefusedError(self.refused)
        key = (cfg.job_id, cfg.vertex)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[key] = fut
        await self.sock.send(sp.encode(sp.Start(cfg, listen)))
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise TimeoutError("no answer in time (service not running or not "
                               "reachable)") from None
        finally:
            self.pending.pop(key, None)

    def end(self, job: str) -> None:
        with contextlib.suppress(zmq.ZMQError):
            fut = self.sock.send(sp.encode(sp.End(job)), flags=zmq.NOBLOCK)
            if isinstance(fut, asyncio.Future):
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self) -> None:
        self.owned.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self._mon.close(linger=0)
        self.sock.close(linger=1000)


class PersistentBootstrap(Bootstrap):
    """``options``: ``services`` and ``client_key`` (from the agents file), ``limit``."""

    name = "persistent"
    head_driven = True

    def __init__(self, options: dict[str, Any]) -> None:
        # Agents build this object too (tree spawn) but never start anything with it:
        # nothing here may need the client key.
        self.options = options
        self.services: dict[str, dict[str, str]] = dict(options.get("services") or {})
        self.limit = self._limit = int(options.get("limit", 64))
        self.timeout = join_timeout_of(options)
        self.tree: Tree | None = None
        self.hosts: list[str] = []
        self._conns: dict[str, _Service] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._owned: Owned | None = None  # the start's task, made with it (in the loop)
        #: Connections closed, whose tasks aclose() still awaits.
        self._closed_conns: list[_Service] = []
        self._job = ""
        self._gate: asyncio.Semaphore | None = None
        self._ended: set[int] = set()
        self._deadline = 0.0
        self.closed = False

    def prepare(self, hosts: list[str], fanout: int) -> None:
        self.hosts = list(hosts)
        self.tree = Tree(len(hosts), fanout)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        """Start the whole tree (we are asked for vertex 0 only): services in the background."""
        if self.tree is None:
            self.prepare([host], 1)
        self._job = config.job_id
        self._gate = asyncio.Semaphore(self._limit)
        self._deadline = time.monotonic() + self.timeout
        self._owned = Owned()
        self._owned.spawn(self._start_vertex(config.vertex, config))
        return 0, -1

    def _conn(self, host: str) -> _Service:
        conn = self._conns.get(host)
        if conn is not None:
            return conn
        entry = self.services.get(host)
        if entry is None:
            raise LookupError(f"no pm-agent service for {host} in the agents file")
        from pm.agent.links import context
        from pm.agent.service import read_keypair

        keys = read_keypair(str(self.options.get("client_key") or DEFAULT_CLIENT_KEY))
        self._ctx = context()
        conn = _Service(self._ctx, host, entry["address"], entry["key"].encode(), keys,
                        self._exited)
        self._conns[host] = conn
        return conn

    async def _start_vertex(self, vertex: int, cfg: AgentConfig) -> None:
        assert self.tree is not None and self._gate is not None
        kids = self.tree.children(vertex)
        host = self.hosts[vertex] if vertex < len(self.hosts) else cfg.host
        try:
            async with self._gate:
                conn = self._conn(host)
                address = await conn.start(cfg, bool(kids), self._deadline)
        except Exception as exc:  # every way a start fails names the node
            if not self.closed:
                where = self.services.get(host, {}).get("address", "?")
                self._fail(vertex, host, f"pm-agent service at {where}: {exc}")
            return
        if kids:
            await asyncio.gather(*(self._start_vertex(
                c, AgentConfig(c, address, cfg.secret, cfg.job_id, self.hosts[c], cfg.log_level,
                               cfg.heartbeat)) for c in kids))

    def late(self, vertex: int) -> str:
        host = self.hosts[vertex] if 0 <= vertex < len(self.hosts) else ""
        conn = self._conns.get(host)
        if conn is None or not any(v == vertex for _, v in conn.pending):
            return ""  # asked and answered (its agent started), or never asked
        return (f"pm-agent service at {conn.address.removeprefix('tcp://')}: no answer within "
                f"{self.timeout:g} s (not running, or not reachable)")

    def _fail(self, vertex: int, host: str, why: str) -> None:
        if vertex in self._ended:
            return
        self._ended.add(vertex)
        if self.on_failure is not None:
            self.on_failure(vertex, host, why)
        else:
            log.error("node %d (%s): %s", vertex, host, why)

    def _exited(self, msg: sp.Exited) -> None:
        """A job agent ended: early (not after ``close``) and badly, that loses the node."""
        if self.closed or msg.job != self._job:
            return
        code, sig = msg.code, msg.signal
        if code == 0 and sig == 0:
            return
        from pm.agent.watch import ExitStatus

        vertex = msg.vertex
        host = self.hosts[vertex] if 0 <= vertex < len(self.hosts) else "?"
        self._fail(vertex, host, f"agent {ExitStatus(code, sig).describe()}")

    def close(self) -> None:
        """Tell every service we used that the job is over, and drop the connections."""
        if self.closed:
            return
        self.closed = True
        if self._owned is not None:
            self._owned.cancel()
        for conn in self._conns.values():
            conn.end(self._job)
            conn.close()
        self._closed_conns += self._conns.values()
        self._conns.clear()

    async def aclose(self) -> None:
        self.close()
        if self._owned is not None:
            await self._owned.aclose()
        conns, self._closed_conns = self._closed_conns, []
        for conn in conns:
            await conn.owned.aclose()
