"""PMI-1: the sans-IO codec (golden lines) and the agent's engine over a real PMI_FD.

The engine table runs inside a real rank of a real job: a small program
speaks raw PMI-1 on the inherited socket, sends each request of the table and
records the reply line, including for malformed lines (which get an error
reply, after which the same connection keeps being served).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import script

from pm.proto import pmi1
from pm.proto.errors import ProtocolError

pytestmark = pytest.mark.timeout(60)

Run = Callable[..., subprocess.CompletedProcess[str]]


# --- codec -----------------------------------------------------------------------

@pytest.mark.parametrize(("line", "cmd", "args"), [
    (b"cmd=init pmi_version=1 pmi_subversion=1", "init",
     {"pmi_version": "1", "pmi_subversion": "1"}),
    (b"cmd=get_maxes", "get_maxes", {}),
    # Split at the first "=" only: MPICH's segmented values hold one.
    (b"cmd=put kvsname=kvs_1 key=-allgather-1-0 value=segments=9", "put",
     {"kvsname": "kvs_1", "key": "-allgather-1-0", "value": "segments=9"}),
    # Keys in any order, unknown keys kept, an empty value allowed.
    (b"cmd=get key=k kvsname=kvs_1 extra=", "get", {"key": "k", "kvsname": "kvs_1", "extra": ""}),
    (b"cmd=barrier_in\r", "barrier_in", {}),
    (b"cmd=abort exitcode=7 message=abort", "abort", {"exitcode": "7", "message": "abort"}),
])
def test_golden_requests(line: bytes, cmd: str, args: dict[str, str]) -> None:
    got = pmi1.Pmi1Decoder().feed(line + b"\n")
    assert len(got) == 1 and isinstance(got[0], pmi1.Pmi1Command)
    assert (got[0].cmd, got[0].args) == (cmd, args)


def test_lines_of_any_length_and_one_byte_at_a_time() -> None:
    value = "ab" * 3000  # MPICH 4.1+ lines exceed 1024 characters
    wire = f"cmd=put kvsname=k key=x value={value}\ncmd=barrier_in\n".encode()
    dec = pmi1.Pmi1Decoder()
    out: list[pmi1.Pmi1Command | ProtocolError] = []
    for i in range(len(wire)):
        out += dec.feed(wire[i:i + 1])
    assert [c.cmd for c in out if isinstance(c, pmi1.Pmi1Command)] == ["put", "barrier_in"]
    assert isinstance(out[0], pmi1.Pmi1Command) and out[0].args["value"] == value
    assert dec.pending == b""


@pytest.mark.parametrize(("line", "why"), [
    (b"key=x cmd=put", "does not start with cmd="),
    (b"put key=x", "without key=value"),
    (b"cmd=put novalue", "without key=value"),
    (b"cmd=get key=\xff", "non-ASCII"),
    (b"=x cmd=get", "without key=value"),
])
def test_malformed_lines_come_out_as_errors_and_framing_survives(line: bytes, why: str) -> None:
    dec = pmi1.Pmi1Decoder()
    out = dec.feed(line + b"\ncmd=get_appnum\n")
    assert isinstance(out[0], ProtocolError) and why in str(out[0])
    assert isinstance(out[1], pmi1.Pmi1Command) and out[1].cmd == "get_appnum"


def test_runaway_line_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        pmi1.Pmi1Decoder().feed(b"cmd=put value=" + b"x" * (pmi1.MAX_LINE + 1))


def test_spawn_mcmd_is_one_request_at_the_last_block() -> None:
    block = ("mcmd=spawn\nnprocs=2\nexecname=./a b\ntotspawns=2\nspawnssofar={i}\nargcnt=1\n"
             "arg1=x y\npreput_num=0\ninfo_num=0\nendcmd\n")
    dec = pmi1.Pmi1Decoder()
    assert dec.feed(block.format(i=1).encode()) == []
    (req,) = dec.feed(block.format(i=2).encode())
    assert isinstance(req, pmi1.Pmi1Command) and req.cmd == "spawn"
    assert req.args["execname"] == "./a b" and req.args["arg1"] == "x y"


def test_replies() -> None:
    assert pmi1.encode("response_to_init", ("rc", 0), ("pmi_version", 1),
                       ("pmi_subversion", 1)) == \
        b"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1\n"
    assert pmi1.reply_error("get_result", "key not\nfound") == \
        b"cmd=get_result rc=1 msg=key_not_found\n"


# --- the engine, over a real PMI_FD --------------------------------------------

#: (request, reply pattern).  {kvs} is the job's kvsname, learnt from the reply.
TABLE: list[tuple[str, str]] = [
    ("cmd=init pmi_version=1 pmi_subversion=1",
     r"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1"),
    ("cmd=get_maxes", r"cmd=maxes rc=0 kvsname_max=256 keylen_max=64 vallen_max=1024"),
    ("cmd=get_appnum", r"cmd=appnum rc=0 appnum=0"),
    ("cmd=get_my_kvsname", r"cmd=my_kvsname rc=0 kvsname=(kvs_\S+)"),
    ("cmd=get_universe_size", r"cmd=universe_size rc=0 size=2"),
    ("cmd=get kvsname={kvs} key=PMI_process_mapping",
     r"cmd=get_result rc=0 value=\(vector,\(0,1,2\)\)"),
    # A key nobody put: answered at once (MPICH probes optional keys).
    ("cmd=get kvsname={kvs} key=PMI_mpi_memory_alloc_kinds", r"cmd=get_result rc=1 msg=\S+"),
    ("cmd=get kvsname={kvs} key=nobody-put-this", r"cmd=get_result rc=1 msg=key_not_found"),
    ("cmd=put kvsname={kvs} key=PMI_mine value=x", r"cmd=put_result rc=1 msg=\S*reserved"),
    ("cmd=put kvsname={kvs} key=k{rank} value=seg=ments=3", r"cmd=put_result rc=0"),
    ("cmd=get kvsname={kvs} key=k{rank}", r"cmd=get_result rc=0 value=seg=ments=3"),
    ("cmd=barrier_in", r"cmd=barrier_out rc=0"),
    # After the barrier the other rank's put is visible.
    ("cmd=get kvsname={kvs} key=k{other}", r"cmd=get_result rc=0 value=seg=ments=3"),
    # Malformed lines: an error reply naming the problem; the session goes on.
    ("put key=x", r"cmd=error rc=1 msg=\S*without_key=value\S*"),
    ("key=x cmd=put", r"cmd=error rc=1 msg=\S*does_not_start_with_cmd=\S*"),
    ("cmd=no_such_command", r"cmd=no_such_command rc=1 msg=unknown_PMI-1_command\S*"),
    ("cmd=get kvsname={kvs}", r"cmd=get_result rc=1 msg=\S*key\S*"),
    ("cmd=publish_name service=svc{rank} port=p{rank}", r"cmd=publish_result rc=0"),
    ("cmd=publish_name service=svc{rank} port=again", r"cmd=publish_result rc=1 msg=\S+"),
    ("cmd=barrier_in", r"cmd=barrier_out rc=0"),
    ("cmd=lookup_name service=svc{other}", r"cmd=lookup_result rc=0 port=p{other}"),
    ("cmd=lookup_name service=nothing", r"cmd=lookup_result rc=1 msg=\S+"),
    ("cmd=barrier_in", r"cmd=barrier_out rc=0"),
    ("cmd=unpublish_name service=svc{rank}", r"cmd=unpublish_result rc=0"),
    # A program not found: one error code per process, nothing started.
    ("mcmd=spawn\nnprocs=2\nexecname=no-such-program\ntotspawns=1\nspawnssofar=1\nargcnt=0\n"
     "preput_num=0\ninfo_num=0\nendcmd", r"cmd=spawn_result rc=1 errcodes=1,1 msg=\S+"),
    # Two commands (spawn_multiple), a preput and info keys: answered once started.
    ("mcmd=spawn\nnprocs=1\nexecname=true\ntotspawns=2\nspawnssofar=1\nargcnt=1\narg1=a b\n"
     "preput_num=1\npreput_key_0=PARENT_ROOT_PORT_NAME\npreput_val_0=tag#port$\ninfo_num=1\n"
     "info_key_0=wdir\ninfo_val_0=/\nendcmd\nmcmd=spawn\nnprocs=2\nexecname=true\ntotspawns=2\n"
     "spawnssofar=2\nargcnt=0\npreput_num=0\ninfo_num=1\ninfo_key_0=path\ninfo_val_0=/bin\n"
     "endcmd", r"cmd=spawn_result rc=0 errcodes=0,0,0"),
    ("cmd=get_appnum", r"cmd=appnum rc=0 appnum=0"),
    ("cmd=finalize", r"cmd=finalize_ack rc=0"),
]

ENGINE = """
    import json, os, socket, sys

    rank, size = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")
    fields = dict(rank=rank, other=1 - rank, kvs="?")
    replies = []
    for request in json.loads(sys.argv[1]):
        sock.sendall((request.format(**fields) + "\\n").encode())
        line = reader.readline().decode().rstrip("\\n")
        replies.append(line)
        if line.startswith("cmd=my_kvsname"):
            fields["kvs"] = line.split("kvsname=")[1]
    env = {k: os.environ.get(k) for k in ("PMI_RANK", "PMI_SIZE", "PMI_HOSTNAME",
                                           "MPI_LOCALRANKID", "MPI_LOCALNRANKS")}
    print("RESULT " + json.dumps(dict(rank=rank, replies=replies, kvs=fields["kvs"], env=env)),
          flush=True)
"""


def _results(stdout: str) -> dict[int, dict[str, object]]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            out[res["rank"]] = res
    return out


def test_engine_table_over_a_real_pmi_fd(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "engine.py", ENGINE)
    requests = json.dumps([req for req, _ in TABLE])
    r = pmrun("-n", "2", "python", str(prog), requests)
    assert r.returncode == 0, r.stderr
    got = _results(r.stdout)
    assert sorted(got) == [0, 1], r.stdout + r.stderr
    for rank, res in got.items():
        replies = res["replies"]
        assert isinstance(replies, list)
        kvs = str(res["kvs"])
        for (request, pattern), reply in zip(TABLE, replies, strict=True):
            want = pattern.format(rank=rank, other=1 - rank, kvs=re.escape(kvs))
            assert re.fullmatch(want, reply), (request, reply)
        assert res["env"] == {"PMI_RANK": str(rank), "PMI_SIZE": "2",
                              "PMI_HOSTNAME": res["env"]["PMI_HOSTNAME"],  # type: ignore[index]
                              "MPI_LOCALRANKID": str(rank), "MPI_LOCALNRANKS": "2"}
    # Each malformed request was logged, naming the rank.
    assert re.search(r"rank \d.*without key=value", r.stderr), r.stderr
    assert "no_such_command" in r.stderr


def test_every_job_has_its_own_kvsname(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "engine.py", ENGINE)
    requests = json.dumps(["cmd=init pmi_version=1 pmi_subversion=1", "cmd=get_my_kvsname",
                           "cmd=finalize"])
    names = set()
    for _ in range(3):
        r = pmrun("-n", "1", "python", str(prog), requests)
        assert r.returncode == 0, r.stderr
        names.add(_results(r.stdout)[0]["kvs"])
    assert len(names) == 3
