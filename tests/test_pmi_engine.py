"""The sans-IO PMI engine (pm.agent.pmi_engine): golden request/reply tables, no processes.

Each row is what a rank writes and what it must read back.  Requests that
wait (a barrier, a fence, a node attribute, the name service, a direct get)
come out of the engine as a *call*; the row names the call it expects and the
result the test feeds back with ``complete``, and the reply the rank then
reads.  The store behind the engine is a dictionary: what the job knows,
nothing of how a job serves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pm.agent.pmi_engine import (
    Action,
    Close,
    Collective,
    Event,
    GetFrom,
    NameService,
    NodeAttrGet,
    PmiEngine,
    Reserve,
    Send,
    Spawn,
    Wire,
)
from pm.proto import native, pmi1
from pm.proto.errors import RankFailed
from pm.proto.spawn import SpawnCommand, SpawnRequest, SpawnResult
from pm.proto.tree_wire import ALLGATHER, BARRIER, FENCE, RING

pytestmark = pytest.mark.timeout(30)

KVS = "kvs_golden_1"
MAPPING = "(vector,(0,1,2))"


@dataclass
class Store:
    """The job as the engine sees it: two ranks, one node, a mapping."""

    size: int = 2
    kvsname: str = KVS
    kvs: dict[bytes, bytes] = field(default_factory=dict)
    node_attrs: dict[str, str] = field(default_factory=dict)
    released: list[tuple[int, int]] = field(default_factory=list)

    def appnum(self, rank: int) -> int:
        return 0

    def universe_size(self) -> int:
        return self.size

    def native_info(self, rank: int) -> dict[str, Any]:
        return {"rank": rank, "size": self.size}

    def job_attr(self, key: str) -> str | None:
        return {"PMI_process_mapping": MAPPING, "universeSize": str(self.size)}.get(key)

    def put(self, rank: int, key: bytes, value: bytes) -> None:
        self.kvs[key] = value

    def get_now(self, key: bytes) -> bytes | None:
        return self.kvs.get(key)

    def node_attr_put(self, key: str, value: str) -> None:
        self.node_attrs[key] = value

    def release(self, rank: int, ident: int) -> None:
        self.released.append((rank, ident))


def untoken(call: Any) -> Any:
    """A call with its token zeroed, to compare with a table's."""
    return type(call)(0, *[getattr(call, f) for f in call.__slots__[1:]])


@dataclass
class Driver:
    """Feeds an engine and keeps what it said."""

    engine: PmiEngine
    events: list[Event] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)

    def take(self, acts: list[Action]) -> bytes:
        out = b""
        for a in acts:
            if isinstance(a, Send):
                assert not self.closed, "nothing is written after Close"
                out += a.data
            elif isinstance(a, Event):
                self.events.append(a)
            elif isinstance(a, Close):
                self.closed.append(a.why)
            else:
                self.calls.append(a)
        return out

    def feed(self, data: bytes) -> bytes:
        return self.take(self.engine.feed(data))

    def complete(self, result: Any) -> bytes:
        call = self.calls.pop(0)
        return self.take(self.engine.complete(call.token, result))


def driver(rank: int = 0, store: Store | None = None) -> Driver:
    return Driver(PmiEngine(store or Store(), rank))


@dataclass
class Row:
    """``wire`` in; ``reply`` out at once, or after ``call`` completed with ``result``."""

    wire: bytes
    reply: bytes
    call: Any = None
    result: Any = None


def run_table(d: Driver, table: list[Row]) -> None:
    for row in table:
        got = d.feed(row.wire)
        if row.call is None:
            assert not d.calls, (row.wire, d.calls)
        else:
            assert got == b"", (row.wire, got)
            assert [untoken(c) for c in d.calls] == [row.call], row.wire
            got = d.complete(row.result)
        assert got == row.reply, (row.wire, got, row.reply)


# --------------------------------------------------------------------- PMI-1
PMI1 = [
    Row(b"cmd=init pmi_version=1 pmi_subversion=1\n",
        b"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1\n"),
    Row(b"cmd=get_maxes\n", b"cmd=maxes rc=0 kvsname_max=256 keylen_max=64 vallen_max=1024\n"),
    Row(b"cmd=get_appnum\n", b"cmd=appnum rc=0 appnum=0\n"),
    Row(b"cmd=get_my_kvsname\n", b"cmd=my_kvsname rc=0 kvsname=kvs_golden_1\n"),
    Row(b"cmd=get_universe_size\n", b"cmd=universe_size rc=0 size=2\n"),
    Row(b"cmd=get kvsname=kvs_golden_1 key=PMI_process_mapping\n",
        b"cmd=get_result rc=0 value=(vector,(0,1,2))\n"),
    # Missing keys are answered at once (MPICH probes optional ones).
    Row(b"cmd=get kvsname=kvs_golden_1 key=PMI_hwloc_xmlfile\n",
        b"cmd=get_result rc=1 msg=key_not_found\n"),
    Row(b"cmd=get kvsname=kvs_golden_1 key=nobody\n", b"cmd=get_result rc=1 msg=key_not_found\n"),
    Row(b"cmd=put kvsname=kvs_golden_1 key=PMI_x value=1\n",
        b"cmd=put_result rc=1 msg=key_PMI_x_is_reserved\n"),
    # Values split at the first "=" only; keys in any order.
    Row(b"cmd=put key=-allgather-1-0 value=segments=3 kvsname=kvs_golden_1\n",
        b"cmd=put_result rc=0\n"),
    Row(b"cmd=get kvsname=kvs_golden_1 key=-allgather-1-0\n",
        b"cmd=get_result rc=0 value=segments=3\n"),
    Row(b"cmd=get key=-allgather-1-0\r\n", b"cmd=get_result rc=0 value=segments=3\n"),
    # Another job's kvsname is refused, naming it.
    Row(b"cmd=put kvsname=kvs_other key=k value=v\n",
        b"cmd=put_result rc=1 msg=kvsname_'kvs_other'_is_not_this_job's_(kvs_golden_1)\n"),
    Row(b"cmd=get kvsname=kvs_other key=-allgather-1-0\n",
        b"cmd=get_result rc=1 msg=kvsname_'kvs_other'_is_not_this_job's_(kvs_golden_1)\n"),
    Row(b"cmd=barrier_in\n", b"cmd=barrier_out rc=0\n", Collective(0, FENCE, None)),
    Row(b"cmd=publish_name service=svc port=tcp://x:1\n", b"cmd=publish_result rc=0\n",
        NameService(0, "publish", "svc", "tcp://x:1"), (True, "")),
    Row(b"cmd=publish_name service=svc port=again\n",
        b"cmd=publish_result rc=1 msg=publish_failed_for_svc\n",
        NameService(0, "publish", "svc", "again"), (False, "")),
    Row(b"cmd=lookup_name service=svc\n", b"cmd=lookup_result rc=0 port=tcp://x:1\n",
        NameService(0, "lookup", "svc", ""), (True, "tcp://x:1")),
    Row(b"cmd=unpublish_name service=svc\n", b"cmd=unpublish_result rc=0\n",
        NameService(0, "unpublish", "svc", ""), (True, "")),
    # Malformed lines: an error reply, and the stream goes on.
    Row(b"put key=x\n", b"cmd=error rc=1 msg=PMI-1_token_without_key=value:_'put'\n"),
    Row(b"key=x cmd=put\n",
        b"cmd=error rc=1 msg=PMI-1_line_does_not_start_with_cmd=:_'key=x_cmd=put'\n"),
    Row(b"cmd=get key=\xff\n",
        b"cmd=error rc=1 msg=non-ASCII_byte_in_PMI-1_line_b'cmd=get_key=\\xff'\n"),
    Row(b"cmd=no_such\n", b"cmd=no_such rc=1 msg=unknown_PMI-1_command_'no_such'\n"),
    Row(b"cmd=get kvsname=kvs_golden_1\n", b"cmd=get_result rc=1 msg=get_without_key=\n"),
    Row(b"cmd=initack pmiid=0\n", b"cmd=initack rc=1 msg=initack_is_only_the_first_line_of_a_"
        b"PMI_PORT_client,_naming_its_PMI_ID\n"),
    # MPI_Comm_spawn_multiple as MPICH 4.1+ writes it: answered once the children started,
    # one error code per process.
    Row(b"mcmd=spawn\nnprocs=2\nexecname=./a b\ntotspawns=2\nspawnssofar=1\nargcnt=1\n"
        b"arg1=x y\npreput_num=1\npreput_key_0=PARENT_ROOT_PORT_NAME\npreput_val_0=tag#0$\n"
        b"info_num=1\ninfo_key_0=wdir\ninfo_val_0=/tmp\nendcmd\n"
        b"mcmd=spawn\nnprocs=1\nexecname=other\ntotspawns=2\nspawnssofar=2\nargcnt=0\n"
        b"info_num=0\nendcmd\n",
        b"cmd=spawn_result rc=0 errcodes=0,0,0\n",
        Spawn(0, SpawnRequest([SpawnCommand(["./a b", "x y"], 2, {"wdir": "/tmp"}),
                               SpawnCommand(["other"], 1, {})],
                              {"PARENT_ROOT_PORT_NAME": "tag#0$"}, after_init=True)),
        SpawnResult(True, 1, "kvs_golden_1_s1", errcodes=[0, 0, 0])),
    Row(b"mcmd=spawn\nnprocs=1\nexecname=x\ntotspawns=1\nspawnssofar=1\nargcnt=0\n"
        b"preput_num=0\ninfo_num=0\nendcmd\n",
        b"cmd=spawn_result rc=1 errcodes=1 msg=cannot_spawn_x:_command_not_found\n",
        Spawn(0, SpawnRequest([SpawnCommand(["x"], 1, {})], {}, after_init=True)),
        SpawnResult(False, error="cannot spawn x: command not found", errcodes=[1])),
    Row(b"mcmd=spawn\nnprocs=0\nexecname=x\ntotspawns=1\nspawnssofar=1\nargcnt=0\n"
        b"preput_num=0\ninfo_num=0\nendcmd\n",
        b"cmd=spawn_result rc=1 msg=spawn_of_x:_maxprocs_0_is_below_1\n"),
    Row(b"\n", b""),
    Row(b"cmd=finalize\n", b"cmd=finalize_ack rc=0\n"),
]


def test_pmi1_golden_table() -> None:
    d = driver()
    run_table(d, PMI1)
    assert [e.name for e in d.events] == ["init", "finalize"]
    assert d.engine.finalized and not d.closed
    assert d.take(d.engine.eof()) == b""
    assert d.events[-1] == Event("eof", True)


def test_pmi1_replies_of_one_read_go_in_one_write() -> None:
    d = driver()
    d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\n")
    acts = d.engine.feed(b"cmd=put kvsname=kvs_golden_1 key=a value=1\ncmd=get key=a\n"
                         b"cmd=get_appnum\n")
    assert acts == [Send(b"cmd=put_result rc=0\ncmd=get_result rc=0 value=1\n"
                         b"cmd=appnum rc=0 appnum=0\n")]


def test_pmi1_requests_behind_a_barrier_wait_for_it() -> None:
    d = driver()
    d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\n")
    # The client would not send these before barrier_out, but order must hold anyway.
    assert d.feed(b"cmd=barrier_in\ncmd=get key=late\ncmd=get_appnum\n") == b""
    d.engine.store.put(1, b"late", b"x")  # type: ignore[attr-defined]  # arrived with the fence
    assert d.complete(None) == (b"cmd=barrier_out rc=0\ncmd=get_result rc=0 value=x\n"
                                b"cmd=appnum rc=0 appnum=0\n")


def test_pmi1_one_byte_at_a_time() -> None:
    d = driver()
    wire = b"cmd=init pmi_version=1 pmi_subversion=1\ncmd=put key=k value=" + b"ab" * 800 + \
        b"\ncmd=get key=k\n"
    out = b"".join(d.feed(wire[i:i + 1]) for i in range(len(wire)))
    assert out == (b"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1\n"
                   b"cmd=put_result rc=0\ncmd=get_result rc=0 value=" + b"ab" * 800 + b"\n")


def test_pmi1_abort_is_an_event_without_reply() -> None:
    d = driver()
    d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\n")
    assert d.feed(b"cmd=abort exitcode=300 message=bye\n") == b""
    assert d.events[-1] == Event("abort", (300, "bye"))
    assert d.feed(b"cmd=abort exitcode=99999999999999999999999\n") == b""
    assert d.events[-1] == Event("abort", ((1 << 63) - 1, ""))


def test_pmi1_runaway_spawn_block_fails_the_stream() -> None:
    d = driver()
    d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\nmcmd=spawn\n")
    line = b"k=" + b"v" * 4000 + b"\n"
    for _ in range(pmi1.MAX_LINE // len(line) + 1):
        assert d.feed(line * 1) == b""
        if d.closed:
            break
    assert d.closed and "spawn request longer than" in d.closed[0]
    assert d.events[-1].name == "error"
    assert d.engine.feed(b"cmd=get_appnum\n") == []  # nothing more is served


def test_barrier_failing_with_the_job_is_not_the_ranks_fault(
        caplog: pytest.LogCaptureFixture) -> None:
    d = driver(rank=0)
    d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\ncmd=barrier_in\n")
    call = d.calls.pop()
    with caplog.at_level(logging.WARNING, logger="pm.agent.pmi"):
        out = d.take(d.engine.fail(call.token, RankFailed("rank 3 exited with code 15")))
    assert out == b"cmd=barrier_out rc=1 msg=rank_3_exited_with_code_15\n"
    assert caplog.records == []


def test_bad_requests_are_logged_once_per_cause(caplog: pytest.LogCaptureFixture) -> None:
    d = driver()
    with caplog.at_level(logging.WARNING, logger="pm.agent.pmi"):
        d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\n")
        for i in range(300):
            d.feed(b"garbage%d\n" % i)
            d.feed(b"cmd=nosuch%d\n" % i)
        d.take(d.engine.eof())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "600 bad PMI requests in all, 2 logged" in lines[-1]


def test_a_bad_requests_control_bytes_are_escaped_in_its_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    d = driver()
    with caplog.at_level(logging.WARNING, logger="pm.agent.pmi"):
        d.feed(b"cmd=init pmi_version=1 pmi_subversion=1\n")
        d.feed(b"cmd=get kvsname=\x00a\x1b[2J key=k\n")
        d.feed(b"cmd=get kvsname=other\x00 key=k\n")  # the same cause: not logged again
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["rank 0: bad PMI request: kvsname '\\x00a\\x1b[2J' is not this "
                     "job's (kvs_golden_1)"], lines

# --------------------------------------------------------------------- PMI-2
def f2(body: bytes) -> bytes:
    return b"%6d" % len(body) + body


PMI2 = [
    Row(b"cmd=init pmi_version=2 pmi_subversion=0\n",
        b"cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n"),
    Row(f2(b"cmd=fullinit;pmirank=1;threaded=FALSE;"),
        f2(b"cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank=1;size=2;"
           b"appnum=0;debugged=FALSE;pmiverbose=FALSE;")),
    Row(f2(b"cmd=job-getid;"), f2(b"cmd=job-getid-response;rc=0;jobid=kvs_golden_1;")),
    Row(f2(b"cmd=info-getjobattr;key=PMI_process_mapping;"),
        f2(b"cmd=info-getjobattr-response;rc=0;found=TRUE;value=(vector,(0,1,2));")),
    Row(f2(b"cmd=info-getjobattr;key=PMI_hwloc_xmlfile;"),
        f2(b"cmd=info-getjobattr-response;rc=0;found=FALSE;")),
    # libpmi2 doubles ';' in values; the reply doubles it again.
    Row(f2(b"cmd=kvs-put;key=key-1;value=v-1-a=b;;c;;;;d=7;;;"), f2(b"cmd=kvs-put-response;rc=0;")),
    # jobid, srcid and key always, in that order (libpmi2); an empty jobid is this job.
    Row(f2(b"cmd=kvs-get;jobid=;srcid=-1;key=key-1;"),
        f2(b"cmd=kvs-get-response;rc=0;found=TRUE;value=v-1-a=b;;c;;;;d=7;;;")),
    Row(f2(b"cmd=kvs-get;jobid=kvs_golden_1;srcid=0;key=no-such-key;"),
        f2(b"cmd=kvs-get-response;rc=0;found=FALSE;")),
    Row(f2(b"cmd=kvs-get;jobid=kvs_other;srcid=0;key=key-1;"),
        f2(b"cmd=kvs-get-response;rc=1;errmsg=jobid 'kvs_other' is not this job's "
           b"(kvs_golden_1);")),
    Row(f2(b"cmd=kvs-fence;"), f2(b"cmd=kvs-fence-response;rc=0;"), Collective(0, FENCE, None)),
    Row(f2(b"cmd=info-putnodeattr;key=-bcast-1-0;value=2F6465;"),
        f2(b"cmd=info-putnodeattr-response;rc=0;")),
    Row(f2(b"cmd=info-getnodeattr;key=-bcast-1-0;wait=TRUE;"),
        f2(b"cmd=info-getnodeattr-response;rc=0;found=TRUE;value=2F6465;"),
        NodeAttrGet(0, "-bcast-1-0", True), "2F6465"),
    Row(f2(b"cmd=info-getnodeattr;key=none;wait=FALSE;"),
        f2(b"cmd=info-getnodeattr-response;rc=0;found=FALSE;"),
        NodeAttrGet(0, "none", False), None),
    Row(f2(b"cmd=ring;ring-count=1;ring-left=me;ring-right=me;"),
        f2(b"cmd=ring-response;rc=0;ring-count=1;ring-left=L;ring-right=R;"),
        Collective(0, RING, b"me"), (b"L", b"R")),
    Row(f2(b"cmd=name-publish;name=svc;port=tag#0$port;;x=1;infokeycount=0;"),
        f2(b"cmd=name-publish-response;rc=0;"),
        NameService(0, "publish", "svc", "tag#0$port;x=1"), (True, "")),
    # libpmi2 reads the port from value=, MPICH from port=.
    Row(f2(b"cmd=name-lookup;name=svc;infokeycount=0;"),
        f2(b"cmd=name-lookup-response;rc=0;port=p;value=p;"),
        NameService(0, "lookup", "svc", ""), (True, "p")),
    Row(f2(b"cmd=name-lookup;name=nobody;infokeycount=0;"),
        f2(b"cmd=name-lookup-response;rc=1;"), NameService(0, "lookup", "nobody", ""),
        (False, "")),
    # thrid is echoed (threaded MPICH <= 4.0).
    Row(f2(b"cmd=kvs-put;thrid=0x7f;key=a;value=b;"),
        f2(b"cmd=kvs-put-response;thrid=0x7f;rc=0;")),
    Row(f2(b"cmd=kvs-put;value=b;"),
        f2(b"cmd=kvs-put-response;rc=1;errmsg=PMI-2 kvs-put: missing key 'key';")),
    Row(f2(b"cmd=bogus;"),
        f2(b"cmd=bogus-response;rc=1;errmsg=unknown PMI-2 command 'bogus';")),
    Row(f2(b"cmd=spawn;ncmds=2;preputcount=1;ppkey0=PARENT_ROOT_PORT_NAME;ppval0=tag#0$;"
           b"subcmd=/bin/prog;maxprocs=2;argc=1;argv0=z;infokeycount=1;infokey0=path;"
           b"infoval0=/opt;subcmd=other;maxprocs=1;argc=0;infokeycount=0;"),
        f2(b"cmd=spawn-response;rc=0;jobid=kvs_golden_1_s1;"),
        Spawn(0, SpawnRequest([SpawnCommand(["/bin/prog", "z"], 2, {"path": "/opt"}),
                               SpawnCommand(["other"], 1, {})],
                              {"PARENT_ROOT_PORT_NAME": "tag#0$"}, after_init=True)),
        SpawnResult(True, 1, "kvs_golden_1_s1", errcodes=[0, 0, 0])),
    Row(f2(b"cmd=spawn;ncmds=1;preputcount=0;subcmd=x;maxprocs=1;argc=0;infokeycount=0;"),
        f2(b"cmd=spawn-response;rc=1;jobid=;errmsg=cannot spawn x: command not found;"),
        Spawn(0, SpawnRequest([SpawnCommand(["x"], 1, {})], {}, after_init=True)),
        SpawnResult(False, error="cannot spawn x: command not found", errcodes=[1])),
    Row(f2(b"cmd=spawn;ncmds=2;preputcount=0;subcmd=x;maxprocs=1;argc=0;infokeycount=0;"),
        f2(b"cmd=spawn-response;rc=1;errmsg=spawn announced 2 commands and sent 1;")),
    Row(f2(b"cmd=abort;isworld=TRUE;msg=abort;; from 1;"), b""),
    Row(f2(b"cmd=finalize;"), f2(b"cmd=finalize-response;rc=0;")),
]


def test_pmi2_golden_table() -> None:
    d = driver(rank=1)
    run_table(d, PMI2)
    assert [e.name for e in d.events] == ["init", "init", "abort", "finalize"]
    assert d.events[2].detail == (1, "abort; from 1")
    assert d.engine.protocol is Wire.PMI2


def test_pmi2_frames_after_the_init_line_in_one_read() -> None:
    d = driver()
    out = d.feed(b"cmd=init pmi_version=2 pmi_subversion=0\n" + f2(b"cmd=job-getid;"))
    assert out == (b"cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n"
                   + f2(b"cmd=job-getid-response;rc=0;jobid=kvs_golden_1;"))


def test_pmi2_broken_frame_closes() -> None:
    d = driver()
    d.feed(b"cmd=init pmi_version=2 pmi_subversion=0\n")
    assert d.feed(b"abcdefcmd=x;") == b""
    assert d.closed and "length field is not a number" in d.closed[0]
    assert d.events[-1].name == "error"


# --------------------------------------------------------------------- native
def fr(*obj: Any) -> bytes:
    return native.pack(list(obj))


NATIVE = [
    Row(native.MAGIC + fr(1, "init"), fr(1, True, {"rank": 0, "size": 2})),
    Row(fr(2, "put", b"k", b"v0"), fr(2, True, None)),
    Row(fr(3, "get", b"k", 0), fr(3, True, b"v0")),
    Row(fr(4, "get", "k", 0), fr(4, True, b"v0")),
    Row(fr(5, "get", b"nobody", 0), fr(5, True, None)),  # own key: a miss is final
    # Another rank's key, not here yet: fetched.
    Row(fr(6, "get", b"k", 1), fr(6, True, b"v1"), GetFrom(0, 1, native.rank_key(1, b"k")),
        b"v1"),
    Row(fr(7, "get", b"PMI_process_mapping", None), fr(7, True, None)),
    Row(fr(8, "fence"), fr(8, True, None), Collective(0, FENCE, None)),
    Row(fr(9, "barrier"), fr(9, True, None), Collective(0, BARRIER, None)),
    Row(fr(10, "allgather", b"a0"), fr(10, True, [b"a0", b"a1"]),
        Collective(0, ALLGATHER, b"a0"), [b"a0", b"a1"]),
    Row(fr(11, "ring", b"r"), fr(11, True, [b"l", b"r"]), Collective(0, RING, b"r"),
        [b"l", b"r"]),
    Row(fr(12, "reserve", 1000), fr(12, True, 7), Reserve(0, 1000), 7),
    Row(fr(13, "release", 7), fr(13, True, None)),
    Row(fr(14, "get", b"k", 2), fr(14, False, "get from rank 2: ranks are 0..1")),
    Row(fr(15, "put", b"k", 5), fr(15, False, "value must be bytes or str, not int")),
    Row(fr(16, "put", b"x" * 2000, b"v"),
        fr(16, False, "key of 2000 bytes exceeds the limit of 1024")),
    Row(fr(17, "put", b"k"), fr(17, False, "put takes 2 argument(s), got 1")),
    Row(fr([18], "barrier"), fr([18], False, "request id must be an integer, not list")),
    Row(fr(19, "nosuch"), fr(19, False, "unknown native op 'nosuch'")),
    Row(fr(20, "reserve", -1), fr(20, False, "reserve needs a byte count of at least 1, not -1")),
    Row(fr(21, "reserve", 0), fr(21, False, "reserve needs a byte count of at least 1, not 0")),
    Row(fr(21, "spawn", [[["prog", "a"], 2, {"env": "X=1"}]], {"k": "v"}),
        fr(21, True, {"job": 2, "kvsname": "kvs_golden_1_s2", "ok": True, "error": "",
                      "errcodes": [0, 0]}),
        Spawn(0, SpawnRequest([SpawnCommand(["prog", "a"], 2, {"env": "X=1"})], {"k": "v"})),
        SpawnResult(True, 2, "kvs_golden_1_s2", errcodes=[0, 0])),
    Row(fr(23, "spawn", "prog", {}),
        fr(23, False, "spawn takes [[argv, n, info], ...] and {key: value}")),
    Row(fr(24, "spawn", [[["prog"], float("inf"), {}]], {}),
        fr(24, False, "spawn: bad command list: cannot convert float infinity to integer")),
    Row(fr(21, "abort", 256, "bye"), b""),
    Row(fr(22, "finalize"), fr(22, True, None)),
]


def test_native_golden_table() -> None:
    store = Store()
    d = driver(store=store)
    run_table(d, NATIVE)
    assert store.kvs[native.rank_key(0, b"k")] == b"v0"
    assert store.released == [(0, 7)]
    assert [e.name for e in d.events] == ["init", "abort", "finalize"]
    assert d.events[1].detail == (256, "bye")


def test_native_requests_before_init_are_refused() -> None:
    d = driver()
    assert d.feed(native.MAGIC + fr(1, "get", b"k", 0)) == fr(1, False, "get before init")


def test_native_collectives_answer_in_the_order_started() -> None:
    d = driver()
    d.feed(native.MAGIC + fr(1, "init"))
    assert d.feed(fr(2, "allgather", b"a") + fr(3, "allgather", b"b") + fr(4, "put", b"k", b"v")
                  ) == fr(4, True, None)
    first, second = d.calls
    assert d.take(d.engine.complete(second.token, ["B"])) == b""  # waits for the first
    assert d.take(d.engine.complete(first.token, ["A"])) == fr(2, True, ["A"]) + fr(3, True,
                                                                                   ["B"])


def test_native_broken_frame_closes() -> None:
    d = driver()
    d.feed(native.MAGIC + fr(1, "init"))
    d.feed(b"\x00\x00\x00\x02\xc1\xc1")
    assert d.closed and "undecodable native frame" in d.closed[0]


def test_unknown_protocol_closes() -> None:
    d = driver()
    assert d.feed(b"hello world\n") == b""
    assert d.closed and "unknown protocol" in d.closed[0]
    assert d.take(d.engine.eof()) == b""
    assert d.events[-1] == Event("eof", True)  # never initialized: not a PMI failure


def test_engine_constants_match_the_wire_modules() -> None:
    """The engine names the collective kinds and the native magic without loading the
    tree's codec or msgpack: its copies must equal the wire modules'."""
    from pm.agent import pmi_actions, pmi_engine
    from pm.proto import native
    from pm.proto import tree_wire as t

    assert (pmi_actions.FENCE, pmi_actions.BARRIER, pmi_actions.ALLGATHER,
            pmi_actions.RING) == (t.FENCE, t.BARRIER, t.ALLGATHER, t.RING)
    assert pmi_engine.NATIVE_MAGIC == native.MAGIC


def test_pmi1_engine_loads_nothing_heavy() -> None:
    """pmrun's quick phase serves PMI-1 with this engine before asyncio is imported:
    serving a rank's MPI_Init must not load asyncio, logging, dataclasses or msgpack."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import pm.quick\n"
        "from pm.agent.pmi_engine import PmiEngine\n"
        "class S:\n"
        "    size = 1; kvsname = 'kvs_x'\n"
        "    def appnum(self, r): return 0\n"
        "    def universe_size(self): return 1\n"
        "    def job_attr(self, k): return None\n"
        "    def put(self, r, k, v): pass\n"
        "    def get_now(self, k): return None\n"
        "e = PmiEngine(S(), 0)\n"
        "for line in (b'cmd=init pmi_version=1 pmi_subversion=1\\n', b'cmd=get_maxes\\n',\n"
        "             b'cmd=get_my_kvsname\\n', b'cmd=get kvsname=kvs_x key=k\\n',\n"
        "             b'cmd=put kvsname=kvs_x key=k value=v\\n', b'cmd=barrier_in\\n'):\n"
        "    e.feed(line)\n"
        "print(' '.join(m for m in ('asyncio', 'logging', 'dataclasses', 'msgpack')\n"
        "               if m in sys.modules and m not in before))\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=str(root))
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------- the hot path
@dataclass
class AnsweringDriver(Driver):
    """Drives the engine as the shells do: :meth:`PmiEngine.answer` first, then
    ``feed(data, fast=False)`` when it declines."""

    answered: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> bytes:
        reply = self.engine.answer(data)
        if reply is not None:
            self.answered.append(data)
            return reply
        return self.take(self.engine.feed(data, fast=False))


@pytest.mark.parametrize(("table", "rank"), [(PMI1, 0), (PMI2, 1), (NATIVE, 0)],
                         ids=["pmi1", "pmi2", "native"])
def test_answer_then_feed_gives_the_golden_replies(table: list[Row], rank: int) -> None:
    """Every golden row reads the same reply when the hot path is tried first; the hot
    path answers only gets (and PMI-1 puts) the store has an answer for now."""
    d = AnsweringDriver(PmiEngine(Store(), rank))
    run_table(d, table)
    if table is PMI2:
        assert d.answered == []  # PMI-2 takes the general path
        return
    assert d.answered, "the hot path answered nothing"
    for wire in d.answered:
        assert b"get" in wire or b"cmd=put" in wire, wire


def test_answer_declines_without_doing_anything() -> None:
    """None from answer() means nothing was consumed or changed: feed takes the bytes."""
    store = Store()
    e = PmiEngine(store, 0)
    put = b"cmd=put kvsname=kvs_golden_1 key=a value=1\n"
    assert e.answer(put) is None  # protocol not known yet
    e.feed(b"cmd=init pmi_version=1 pmi_subversion=1\n")
    assert e.answer(put) == b"cmd=put_result rc=0\n" and store.kvs == {b"a": b"1"}
    get = b"cmd=get kvsname=kvs_golden_1 key=a\n"
    assert e.answer(get) == b"cmd=get_result rc=0 value=1\n"
    for declined in (b"cmd=get kvsname=kvs_golden_1 key=a extra\n",  # a bad token
                     b"cmd=get kvsname=kvs_golden_1 key=PMI_process_mapping\n",  # job attribute
                     b"cmd=get kvsname=kvs_other key=a\n",  # another job: an error reply
                     b"cmd=put kvsname=kvs_golden_1 key=PMI_x value=1\n",  # reserved
                     get + get,  # two lines: one write for both, from feed
                     get[:-1],  # a partial line
                     b"cmd=barrier_in\n"):
        assert e.answer(declined) is None, declined
    assert store.kvs == {b"a": b"1"}
    assert e.feed(b"cmd=get kvsname=kvs_golden_1 ") == []  # a partial line is buffered
    assert e.answer(b"key=a\n") is None  # ... so the rest is not a line of its own
    assert e.feed(b"key=a\n", fast=False) == [Send(b"cmd=get_result rc=0 value=1\n")]
    assert e.feed(b"cmd=barrier_in\n") and e.answer(get) is None  # behind a pending call


def test_native_answer_declines_what_may_wait() -> None:
    store = Store()
    e = PmiEngine(store, 0)
    assert e.answer(native.MAGIC + fr(1, "init")) is None
    e.feed(native.MAGIC)
    assert e.answer(fr(2, "get", b"k", 0)) is None  # before init: feed refuses it
    e.feed(fr(1, "init"))
    assert e.answer(fr(3, "get", b"k", 0)) == fr(3, True, None)  # own key: a final miss
    assert e.answer(fr(4, "get", b"k", 1)) is None  # another rank's: may come (a call)
    store.kvs[native.rank_key(1, b"k")] = b"v1"
    assert e.answer(fr(5, "get", b"k", 1)) == fr(5, True, b"v1")
    assert e.answer(fr(6, "get", b"k", 1) + fr(7, "get", b"k", 1)) is None  # two frames
    assert e.answer(fr(8, "put", b"k", b"v")) is None  # puts take the general path
    assert e.answer(fr(9, "get", b"k", 5)) is None  # a bad rank: feed names it
    assert e.feed(fr(10, "get", b"k", 1)[:3]) == []
    assert e.answer(fr(11, "get", b"k", 1)) is None  # a frame under way


# --------------------------------------------------------------------- any bytes
#: Each call kind -> the results the golden tables complete it with (any of them may come).
RESULTS: dict[tuple[str, Any], list[Any]] = {}
for _row in PMI1 + PMI2 + NATIVE:
    if _row.call is not None:
        RESULTS.setdefault((type(_row.call).__name__, getattr(_row.call, "kind", None)),
                           []).append(_row.result)
#: Bytes a broken or hostile client might slip in.
JUNK = [b"=", b";", b"\n", b" ", b"\0", b"cmd=", b"mcmd=", b"endcmd\n", b"-1", b"9" * 30,
        b"\xff\xfe", b"    99", b"%", b"kvsname=", b"key=", b"value="]


@st.composite
def broken_sessions(draw: st.DrawFn) -> tuple[bytes, list[int], list[int]]:
    """A golden session with some requests damaged, cut into arbitrary reads, and the
    order (and fate) of the calls it makes."""
    table = draw(st.sampled_from([PMI1, PMI2, NATIVE]))
    wires = [row.wire for row in table]
    first = draw(st.integers(0, len(wires) - 1))
    parts = wires[:1] if first else []  # (the init, so that most requests are served)
    for wire in wires[first:first + draw(st.integers(1, 8))]:
        if draw(st.booleans()):
            at = draw(st.integers(0, len(wire)))
            cut = draw(st.integers(0, 6))
            junk = draw(st.sampled_from(JUNK) | st.binary(max_size=8))
            wire = wire[:at] + junk + wire[at + cut:]
        parts.append(wire)
    cuts = draw(st.lists(st.integers(1, 64), max_size=12))
    fates = draw(st.lists(st.integers(0, 9), max_size=40))
    return b"".join(parts), cuts, fates


@given(broken_sessions(), st.integers(0, 1))
@settings(max_examples=300, deadline=None)
def test_whatever_a_rank_sends_the_engine_answers_without_raising(
        session: tuple[bytes, list[int], list[int]], rank: int) -> None:
    """A damaged request gets an error reply or closes the stream; it never raises out
    of feed, complete or fail (the agent would lose every other rank's service too), and
    nothing is written to a stream after it was closed."""
    data, cuts, fates = session
    e = PmiEngine(Store(), rank)
    pending: list[Any] = []
    closed = False
    fate = iter(fates)

    def take(acts: list[Action]) -> None:
        nonlocal closed
        for a in acts:
            if isinstance(a, Send):
                assert not closed and isinstance(a.data, bytes) and a.data
            elif isinstance(a, Close):
                closed = True
            elif not isinstance(a, Event):
                pending.append(a)

    logging.disable(logging.CRITICAL)
    try:
        pos = 0
        for n in [*cuts, len(data)]:
            if pos >= len(data) or closed:
                break
            take(e.feed(data[pos:pos + n]))
            pos += n
            while pending:  # the calls end, in any order, each done or failed
                f = next(fate, 0)
                call = pending.pop(f % len(pending))
                results = RESULTS.get((type(call).__name__, getattr(call, "kind", None)))
                if f >= 8 or not results:
                    take(e.fail(call.token, RankFailed(1, "rank 1 failed")))
                else:
                    take(e.complete(call.token, results[f % len(results)]))
    finally:
        logging.disable(logging.NOTSET)


def test_a_port_clients_initack_is_answered_then_its_protocol_is_told_anew() -> None:
    """-pmi-port: the initack names the rank the port gave the connection to; it is
    answered as MPICH's PMII_Set_from_port reads it, and the next bytes may be any
    protocol (here pm.client's native one)."""
    d = driver()
    d.engine.by_port = True
    assert d.feed(b"cmd=initack pmiid=0\n") == (
        b"cmd=initack rc=0 rank=0 size=2 appnum=0 debug=0\ncmd=set size=2\ncmd=set rank=0\n"
        b"cmd=set debug=0\n")
    import msgpack

    assert msgpack.unpackb(d.feed(native.MAGIC + fr(1, "init"))[4:])[:2] == [1, True]
    other = driver()
    other.engine.by_port = True
    assert other.feed(b"cmd=initack pmiid=3\n") == (
        b"cmd=initack rc=1 msg=initack_is_only_the_first_line_of_a_PMI_PORT_client,_naming_"
        b"its_PMI_ID\n")


def test_a_pmi2_reply_too_long_for_its_frame_fails_that_request_alone() -> None:
    store = Store()
    d = driver(store=store)
    d.feed(b"cmd=init pmi_version=2 pmi_subversion=0\n")
    d.feed(f2(b"cmd=fullinit;pmirank=0;threaded=FALSE;"))
    store.kvs[b"big"] = b"x" * 1_000_000  # (put by a PMI-1 rank, whose lines have no limit)
    assert d.feed(f2(b"cmd=kvs-get;jobid=;srcid=-1;key=big;")) == f2(
        b"cmd=kvs-get-response;rc=1;errmsg=a reply of 1000044 bytes does not fit PMI-2's "
        b"6-digit length (999999 at most);")
    assert d.feed(f2(b"cmd=job-getid;")) == f2(b"cmd=job-getid-response;rc=0;jobid=kvs_golden_1;")
    assert not d.closed
