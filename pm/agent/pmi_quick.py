"""PMI served without an event loop: the first phase of a one-node job's agent.

pmrun's quick phase (:mod:`pm.quick`) starts a one-node job before asyncio
and the agent are imported.  :class:`QuickPmi` lets its poll loop serve the
ranks' PMI-1 and PMI-2 requests (and, under ``--kvs socket``, pm.client's native
ones) with the same sans-IO engine the agent uses
(:class:`pm.agent.pmi_engine.PmiEngine`), so that ``MPI_Init`` does not wait
for those imports.  It is the engines' store (the job's attributes and a
:class:`pm.agent.kvs.NodeKVS`), and it completes what one node can complete
alone: fences and barriers once every rank has entered, node attributes.

Whatever needs the full runtime -- a native client with the shared-memory
KVS, an allgather or ring, a get that waits, a reservation, the name
service, an abort, a broken stream, a rank that closes its connection
before ``finalize`` -- is not carried out here: :meth:`QuickPmi.serve`
returns False, and the caller hands the job over.  A spawn goes to
:attr:`QuickPmi.on_spawn` (:mod:`pm.agent.quick_spawns`), which starts the
children here when it can: each spawned job has a QuickPmi of its own.  The
hand-over carries the engines (with their partial input and pending calls),
the KVS, the node attributes, and per rank the actions not yet carried out
(:meth:`QuickPmi.todo`), which the agent's sessions run first
(:meth:`pm.agent.node.JobAgent.adopt_ranks`).

The hot path.  A get answered once is answered again from a cache of replies:
the request's exact bytes (a PMI-1 line, a PMI-2 frame, a native frame; or a
native frame without its request id) map to the reply's (the job's values are
the same whichever rank asks, and every put empties the caches).  A rank's
socket is in :attr:`QuickPmi.hot` while its engine could take such a reply
(nothing buffered, nothing waiting:
:meth:`~pm.agent.pmi_engine.PmiEngine.ready`), with the cache of its
protocol: the poll loop then reads, looks the bytes up and writes the reply
itself (:meth:`QuickPmi.hot_serve` is the same), and hands anything else to
:meth:`QuickPmi.missed`, which goes on as :meth:`QuickPmi.serve` would.

Like :mod:`pm.quick`, this module imports nothing heavy.
"""

from __future__ import annotations

import _socket
import os

from pm.agent import pmi_engine
from pm.agent.kvs import NodeKVS
from pm.agent.pmi_actions import (
    BARRIER,
    FENCE,
    Collective,
    Event,
    NodeAttrGet,
    Send,
    Spawn,
    Wire,
)
from pm.agent.pmi_engine import NATIVE_MAGIC, PmiEngine

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pm.agent.pmi_actions import Action
    from pm.agent.quick_spawns import Spawned
    from pm.agent.spawn_answer import SpawnAnswer
    from pm.agent.started import StartedRank, StartedRanks

#: The first fences after which the ranks' /dev/shm maps are noted (MPI_Init makes its
#: segments before them), as the agent does (pm.agent.node.EARLY_SAMPLES).
EARLY_SAMPLES = 3
#: Bytes of a rank's first read (more are read at once when it fills).
READ = 4096
#: Replies kept by the caches (all of them; past it they start again empty), and the
#: longest one kept.
CACHE_ENTRIES = 4096
CACHE_REPLY = 4096
_DONTWAIT = _socket.MSG_DONTWAIT
#: Bytes of a native request id, by its first byte (msgpack's integer formats, but for
#: the positive fixints 0x00-0x7f, one byte).
_ID_BYTES = {0xcc: 2, 0xcd: 3, 0xce: 5, 0xcf: 9, 0xd0: 2, 0xd1: 3, 0xd2: 5, 0xd3: 9,
             **dict.fromkeys(range(0xe0, 0x100), 1)}


def _id_bytes(first: int) -> int:
    """Bytes of a msgpack integer starting with ``first`` (0: not an integer)."""
    return 1 if first < 0x80 else _ID_BYTES.get(first, 0)


class QuickPmi:
    """The PMI of a one-node job's ranks ``started`` holds, job ``kvsname`` of ``size``.

    With ``native`` (``--kvs socket``: no shared-memory KVS to make), ``pm.client`` ranks
    are served here too: init, put, get, fence, barrier and finalize; the rest (an
    allgather, a get that must wait...) hands the job over like anything else.
    """

    def __init__(self, started: StartedRanks, kvsname: str, size: int, *,
                 native: bool = False, host: str = "", spawned: Spawned | None = None,
                 universe: int = 0) -> None:
        self.started = started
        self.size = size
        #: The universe size the ranks are told (-usize, a host's slots; 0: the job's size).
        self.universe = universe
        self.kvsname = kvsname
        self.native = native
        self.host = host
        self.kvs = NodeKVS()
        self.node_attrs: dict[str, str] = {}
        self.job_attrs = {"PMI_process_mapping": f"(vector,(0,1,{size}))"}
        if started.xml_path:
            self.job_attrs["PMI_hwloc_xmlfile"] = started.xml_path
        #: What a spawned job is told of its origin (None: the launched job).
        self.spawned = spawned
        #: Called with (this, rank, the Spawn call) for a spawn: True if the quick phase
        #: started the children (pm.agent.quick_spawns), else the job is handed over.
        self.on_spawn: Callable[[QuickPmi, int, Spawn], bool] | None = None
        #: Called with (this, rank) when a rank initialized PMI: False if the job must be
        #: handed over.
        self.on_init: Callable[[QuickPmi, int], bool] | None = None
        #: Called with a rank's PMI fd before its socket is closed here (at its end).
        self.on_close: Callable[[int], None] | None = None
        #: A spawned job's: when its spawner is answered (pm.agent.spawn_answer), while
        #: that is to come.
        self.spawn_answer: SpawnAnswer | None = None
        #: rank -> its engine, made at its first PMI byte.
        self.engines: dict[int, PmiEngine] = {}
        #: kind (FENCE, BARRIER) -> rank -> the call it waits in (until every rank entered).
        self._colls: dict[int, dict[int, Collective]] = {FENCE: {}, BARRIER: {}}
        #: Ranks that ended well (finalized, or never spoke): a fence or barrier they did
        #: not enter can never complete (the agent names them: :meth:`ended`).
        self._ended: set[int] = set()
        #: A rank ended before PMI init (pm.quick): the next init hands the job over.
        self.hand_over_on_init = False
        self._colls_done = 0
        #: node attribute -> the (rank, call) waiting for it.
        self._attr_waits: dict[str, list[tuple[int, NodeAttrGet]]] = {}
        #: Calls completed, to carry out in order (rank, token, result): node attributes
        #: put, a spawn's answer (finish_call).
        self._done: list[tuple[int, int, Any]] = []
        #: rank -> actions the full runtime must carry out (in order).
        self._left: dict[int, list[Action]] = {}
        #: The reply caches (see the module doc), emptied (never replaced) at every put.
        #: PMI-1 get line / PMI-2 kvs-get frame -> its reply.
        self._replies1: dict[bytes, bytes] = {}
        self._replies2: dict[bytes, bytes] = {}
        #: Native get frame -> its reply, and the frame without its request id -> the
        #: reply's length field and array head, and what follows the id (values found
        #: only: a miss may be answered differently to another rank).
        self._replies_native: dict[bytes, bytes] = {}
        self._replies_any_id: dict[bytes, tuple[bytes, bytes]] = {}
        #: A ready rank's PMI fd -> the reply cache of its protocol (see the module doc);
        #: one table for the launched job's ranks and those of the jobs it spawned.
        self.hot: dict[int, dict[bytes, bytes]] = {}
        #: fd -> its rank, engine and job's QuickPmi, for the ranks in :attr:`hot`.
        self._hot_ranks: dict[int, tuple[StartedRank, PmiEngine, QuickPmi]] = {}
        if spawned is not None:
            self.hot, self._hot_ranks = spawned.launched.hot, spawned.launched._hot_ranks
            self.job_attrs["spawner-jobid"] = spawned.spawner
            # The node's topology file serves every job on it, as the agent gives it to a
            # spawned job (the ranks' environment names it too).
            xml = spawned.launched.job_attrs.get("PMI_hwloc_xmlfile")
            if xml:
                self.job_attrs["PMI_hwloc_xmlfile"] = xml
            for key, value in spawned.preput.items():
                self.kvs.cache(key.encode(), value.encode())
        pmi_engine.log_setup = _log_setup

    # ------------------------------------------------------------------ Store
    def appnum(self, rank: int) -> int:
        return self.spawned.appnums[rank] if self.spawned is not None else 0  # one program

    def universe_size(self) -> int:
        # The head's (pm.head.JobRun): -usize, else the slots given, at least the job's size;
        # a spawned job's is its launched job's.
        if self.spawned is not None:
            return self.spawned.launched.universe_size()
        return self.universe or self.size

    def native_info(self, rank: int) -> dict[str, Any]:
        # What the agent says (pm.agent.node.JobAgent.native_info) of a one-node job.
        if self.spawn_answer is not None:
            self.spawn_answer.want()  # (the pre-put keys come with it)
        spawned = self.spawned
        return {"rank": rank, "size": self.size, "local_rank": rank, "local_size": self.size,
                "appnum": self.appnum(rank), "kvsname": self.kvsname, "node": 0, "nnodes": 1,
                "host": self.host, "job_id": self.started.job_id, "shm": None,
                "spawned": spawned.job if spawned is not None else 0,
                "preput": dict(spawned.preput) if spawned is not None else {}}

    def job_attr(self, key: str) -> str | None:
        if key == "universeSize":
            return str(self.universe_size())
        return self.job_attrs.get(key)

    def put(self, rank: int, key: bytes, value: bytes) -> None:
        self.kvs.put(rank, key, value)
        self._replies1.clear()
        self._replies2.clear()
        self._replies_native.clear()
        self._replies_any_id.clear()

    def get_now(self, key: bytes) -> bytes | None:
        if self.spawn_answer is not None:
            self.spawn_answer.looked_up(key)
        return self.kvs.values.get(key)  # NodeKVS.get, one call less on the hot path

    def node_attr_put(self, key: str, value: str) -> None:
        self.node_attrs[key] = value
        for rank, call in self._attr_waits.pop(key, ()):
            self._done.append((rank, call.token, value))

    def release(self, rank: int, ident: int) -> None:
        pass  # nothing is reserved here (a reserve hands the job over): as the agent

    # ------------------------------------------------------------------ serving
    def serve(self, r: StartedRank) -> bool | None:
        """Rank ``r``'s PMI socket is readable: serve what it sent.  True: go on; None: the
        socket reached its end cleanly (never spoke, or after finalize), stop watching
        it; False: the full runtime must take over (nothing is lost: see :meth:`todo`).
        A poll loop does what :meth:`hot_serve` does instead where it can: the same."""
        sock = r.pmi
        assert sock is not None
        fd = sock.fileno()
        if fd in self.hot:
            return self.hot_serve(fd)
        engine = self.engines.get(r.rank)
        if engine is None:
            try:
                head = sock.recv(1, _socket.MSG_PEEK | _DONTWAIT)
            except BlockingIOError:
                return True
            if not head:
                return None  # closed without a word: not an MPI program (pm.quick's
                # _init_waits hands the job over if another rank's MPI_Init waits for it)
            if head == NATIVE_MAGIC[:1] and not self.native:
                return False  # pm.client with shared memory: the agent serves it
            engine = self.engines[r.rank] = PmiEngine(self, r.rank)
        try:
            # A small read: a request fits, and malloc serves it from its free lists.
            data = sock.recv(READ, _DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False  # a broken stream: the agent names it
        return self._serve(r, engine, data)

    def _serve(self, r: StartedRank, engine: PmiEngine, data: bytes) -> bool | None:
        """What :meth:`serve` read (a first read of :data:`READ` bytes), served by the
        engine; the rank's hot entry follows its engine's state."""
        sock = r.pmi
        assert sock is not None
        if len(data) == READ:
            data = _read_more(sock, data)
        if not data:
            self.hot.pop(sock.fileno(), None)
            self._hot_ranks.pop(sock.fileno(), None)
            if not engine.finalized:
                return False  # closed before finalize: the agent names it
            # Served to the end (the engine says how many bad requests it had).
            engine.eof()
            if self.on_close is not None:
                self.on_close(sock.fileno())
            r.pmi = None
            sock.close()
            return None
        reply = engine.answer(data)  # a get or a put, nothing else
        if reply is not None:
            if not self._send(r.rank, sock, reply):
                return False
            self._keep(engine, data, reply)
            self._rehot(r, engine)
            return True
        ready = engine.protocol is Wire.PMI2 and engine.ready()
        acts = engine.feed(data, fast=False)
        if ready and len(acts) == 1 and type(acts[0]) is Send:
            self._keep(engine, data, acts[0].data)  # (a PMI-2 get answered at once?)
        ok = self._run(r.rank, acts)
        ok = self._settle() and ok
        if ok:
            self._rehot(r, engine)
        return ok

    # ------------------------------------------------------------------ the hot path
    def _keep(self, engine: PmiEngine, data: bytes, reply: bytes) -> None:
        """Cache ``reply`` if it answered ``data``, one get, with what the job holds."""
        if len(reply) > CACHE_REPLY:
            return
        proto = engine.protocol
        if proto is Wire.PMI1:
            if not reply.startswith(b"cmd=get_result "):
                return
            cache = self._replies1
        elif proto is Wire.PMI2:
            # One frame, a kvs-get (no thrid: its reply would echo it), answered rc=0.
            head = data[:6].lstrip()
            if not (data[6:18] == b"cmd=kvs-get;" and head.isdigit()
                    and int(head) + 6 == len(data)
                    and reply[6:].startswith(b"cmd=kvs-get-response;rc=0;")):
                return
            cache = self._replies2
        elif proto is Wire.NATIVE:
            # [id, "get", key, rank] -> [id, True, value], a value found.
            n, m = _id_bytes(data[5]), _id_bytes(reply[5])
            if not (data[4] == 0x94 and n and data[5 + n:5 + n + 4] == b"\xa3get"
                    and reply[4] == 0x93 and m and reply[5 + m] == 0xc3
                    and reply[6 + m] != 0xc0):
                return
            body = reply[5 + m:]
            any_id = self._replies_any_id
            if len(any_id) >= CACHE_ENTRIES:
                any_id.clear()
            # The same request with another id of as many bytes (the length field says).
            any_id[data[:5] + data[5 + n:]] = ((1 + n + len(body)).to_bytes(4, "big")
                                               + b"\x93", body)
            cache = self._replies_native
        else:
            return
        if len(cache) >= CACHE_ENTRIES:
            cache.clear()
        cache[data] = reply

    def _rehot(self, r: StartedRank, engine: PmiEngine) -> None:
        """Rank ``r``'s hot entry: there while its engine may take a cached reply."""
        sock = r.pmi
        if sock is None:
            return
        fd = sock.fileno()
        if not engine.ready():
            self.hot.pop(fd, None)
            return
        proto = engine.protocol
        self.hot[fd] = (self._replies1 if proto is Wire.PMI1 else
                        self._replies2 if proto is Wire.PMI2 else self._replies_native)
        self._hot_ranks[fd] = (r, engine, self)

    def hot_serve(self, fd: int) -> bool | None:
        """Serve the request on ``fd``, a socket in :attr:`hot`, as the poll loop does:
        one read, one look-up, one write, or :meth:`missed`."""
        rest = None
        try:
            data = os.read(fd, READ)  # (the socket is readable: this does not wait)
            reply = self.hot[fd].get(data)
            if reply is not None:
                try:
                    n = os.write(fd, reply)
                except BlockingIOError:  # (its socket never waits: the agent writes it)
                    n = 0
                if n == len(reply):
                    return True
                rest = reply[n:]
        except OSError:
            return False  # a broken stream, or the rank went away: the agent names it
        return self.missed(fd, data, rest)

    def missed(self, fd: int, data: bytes, rest: bytes | None) -> bool | None:
        """What the hot path read from ``fd`` and did not answer (``rest``: or the part of
        its reply a signal kept it from writing), served as :meth:`serve` serves it."""
        r, engine, owner = self._hot_ranks[fd]
        if owner is not self:
            return owner.missed(fd, data, rest)  # a rank of another job of the run
        sock = r.pmi
        assert sock is not None
        if rest is None and engine.protocol is Wire.NATIVE and len(data) > 9:
            # The same get with another request id, which the reply takes.
            n = _id_bytes(data[5])
            hit = self._replies_any_id.get(data[:5] + data[5 + n:]) if n else None
            if hit is not None:
                return self._send(r.rank, sock, hit[0] + data[5:5 + n] + hit[1])
        if rest is None:
            return self._serve(r, engine, data)
        return self._send(r.rank, sock, rest)

    def _send(self, rank: int, sock: _socket.socket, data: bytes) -> bool:
        """Write ``data`` to ``rank`` without waiting; False (the agent takes over) when
        the rank went away, or did not read its replies so far: what did not fit is the
        first thing the agent writes (:meth:`todo`), while serving the others meanwhile."""
        sent = 0
        try:
            while sent < len(data):
                sent += sock.send(data[sent:] if sent else data, _DONTWAIT)
        except BlockingIOError:
            self._left.setdefault(rank, []).append(Send(data[sent:]))
            return False
        except OSError:
            return False  # the rank went away meanwhile: the agent names it
        return True

    def _run(self, rank: int, acts: list[Action]) -> bool:
        """Carry out ``acts`` of ``rank``; False (the rest kept for the agent) at the first
        that needs the full runtime."""
        for i, act in enumerate(acts):
            if isinstance(act, Send):
                sock = self.started.ranks[rank].pmi
                assert sock is not None
                if not self._send(rank, sock, act.data):
                    self._left.setdefault(rank, []).extend(acts[i + 1:])
                    return False
            elif isinstance(act, Event) and act.name in ("init", "finalize"):
                if act.name == "finalize":
                    self.kvs.settle(rank)
                elif self.hand_over_on_init and self.engines[rank].protocol != "native":
                    # A rank ended before its init: this one's MPI_Init would wait for it
                    # in vain (the agent names that).
                    self._left.setdefault(rank, []).extend(acts[i:])
                    return False
                elif self.on_init is not None and not self.on_init(self, rank):
                    self._left.setdefault(rank, []).extend(acts[i + 1:])
                    return False
            elif (isinstance(act, Spawn) and self.on_spawn is not None
                  and self.on_spawn(self, rank, act)):
                pass  # its answer comes with finish_call
            elif isinstance(act, Collective) and act.kind in self._colls and (
                    rank not in self._colls[act.kind]):
                self._colls[act.kind][rank] = act
                if self.spawn_answer is not None:
                    self.spawn_answer.want()
                if not self._ended <= self._colls[act.kind].keys():
                    # A rank that ended cannot join it: the agent names it.
                    self._left.setdefault(rank, []).extend(acts[i + 1:])
                    return False
            elif isinstance(act, NodeAttrGet):
                value = self.node_attrs.get(act.key)
                if value is not None or not act.wait:
                    self._done.append((rank, act.token, value))
                else:
                    self._attr_waits.setdefault(act.key, []).append((rank, act))
            else:
                self._left.setdefault(rank, []).extend(acts[i:])
                return False
        return True

    def _settle(self) -> bool:
        """Complete what became complete: node-attribute gets, a fence or barrier every
        rank entered."""
        ok = True
        while True:
            if self._done:
                rank, token, result = self._done.pop(0)
                ok = self._completed(rank, self.engines[rank].complete(token, result)) and ok
                continue
            kind = next((k for k, calls in self._colls.items() if len(calls) == self.size),
                        None)
            if kind is None:
                return ok
            # Every rank entered: for a fence, their puts are in (NodeKVS counts it).
            done, self._colls[kind] = self._colls[kind], {}
            if kind == FENCE:
                for rank in sorted(done):
                    self.kvs.take_pending(rank)
            for rank in sorted(done):
                ok = self._completed(rank, self.engines[rank].complete(done[rank].token, None)
                                     ) and ok
            self._colls_done += 1
            if self._colls_done <= EARLY_SAMPLES:
                self._sample_shm()

    def ended(self, rank: int) -> bool:
        """Rank ``rank`` ended well (it finalized, or never spoke): False if a fence or
        barrier it did not enter is under way, which can never complete then (the agent,
        handed the job, names the rank)."""
        self._ended.add(rank)
        return not any(calls and rank not in calls for calls in self._colls.values())

    def finish_call(self, rank: int, token: int, result: Any, now: bool = True) -> bool:
        """Complete rank ``rank``'s call ``token`` with ``result`` (a spawn's answer);
        ``now``: carry out what follows at once, else at the next settling.  False if the
        job must be handed over."""
        self._done.append((rank, token, result))
        return self._settle() if now else True

    def _completed(self, rank: int, acts: list[Action]) -> bool:
        """Carry out what a completed call of ``rank`` led to; its hot entry follows."""
        ok = self._run(rank, acts)
        if ok:
            self._rehot(self.started.ranks[rank], self.engines[rank])
        return ok

    def _sample_shm(self) -> None:
        """Note the /dev/shm files the ranks map now (they go with the job)."""
        reaper, guardian = self.started.shm_reaper, self.started.guardian
        if reaper is None:
            return
        fresh = reaper.sample([r.pid for r in self.started.ranks if r.pid])
        if fresh and guardian is not None:
            guardian.note(fresh)

    # ------------------------------------------------------------------ hand-over
    def todo(self, rank: int) -> list[Action]:
        """What the full runtime must carry out for ``rank`` first: the calls the quick
        phase still held (a collective others had not entered, a node attribute not put
        yet), then the actions it left (those came later: a native rank's collectives of
        one kind keep their order)."""
        held = [calls.pop(rank) for calls in self._colls.values() if rank in calls]
        held.sort(key=lambda call: call.token)  # in the order they were started
        acts: list[Action] = [*held]
        for key in list(self._attr_waits):
            waits = self._attr_waits[key]
            acts.extend(call for r, call in waits if r == rank)
            self._attr_waits[key] = [(r, c) for r, c in waits if r != rank]
        acts.extend(self._left.pop(rank, ()))
        return acts


def _read_more(sock: _socket.socket, data: bytes) -> bytes:
    """A full first read: the rest of what is there, in larger reads (64 KiB, not more: a
    larger buffer is mmapped and unmapped by malloc at every read).  An end of stream met
    here is met again at the next read."""
    parts = [data]
    while True:
        try:
            more = sock.recv(65536, _socket.MSG_DONTWAIT)
        except OSError:  # nothing more now (or a broken stream, seen at the next read)
            break
        if not more:
            break
        parts.append(more)
        if len(more) < 65536:
            break
    return b"".join(parts)


def _log_setup() -> None:
    """The engine's first log line in the quick phase: pmrun's format (pm.cli_run's, which a
    command line the quick phase runs configures no differently)."""
    import logging

    if not logging.root.handlers:
        logging.basicConfig(format="pmrun: %(message)s", level=logging.WARNING)
