"""Spawn on the wire: PMI-1 ``mcmd=spawn`` and PMI-2 ``spawn`` parsed and answered
(sans-IO), placement and membership as pure functions, and both wires over a real
``PMI_FD`` with real child processes (the children check what they were given)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pm.agent.spawn_answer import WANT_WAIT, SpawnAnswer
from pm.agent.spawned_jobs import members
from pm.common.kary_tree import Tree
from pm.proto import pmi1, pmi2, spawn
from pm.proto import tree_wire as t
from pm.proto.errors import ProtocolError
from pm.spawned_jobs import SpawnRefused, dense, info_hosts, place_spawn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import pmrun_argv, pmrun_env, script

pytestmark = pytest.mark.timeout(60)

#: MPICH 4.1+ (preputs in the first block only) as PMIU_msg_set_query_spawn writes it.
PMI1_TWO_COMMANDS = (
    b"mcmd=spawn\nnprocs=2\nexecname=/bin/prog a\ntotspawns=2\nspawnssofar=1\nargcnt=2\n"
    b"arg1=x y\narg2=z\npreput_num=1\npreput_key_0=PARENT_ROOT_PORT_NAME\n"
    b"preput_val_0=tag#0$port#5$\ninfo_num=2\ninfo_key_0=wdir\ninfo_val_0=/tmp\n"
    b"info_key_1=host\ninfo_val_1=n1,n2\nendcmd\n"
    b"mcmd=spawn\nnprocs=1\nexecname=other\ntotspawns=2\nspawnssofar=2\nargcnt=0\n"
    b"info_num=0\nendcmd\n")

#: MPICH <= 4.0 repeats the preputs in every block.
PMI1_OLD = (
    b"mcmd=spawn\nnprocs=1\nexecname=a\ntotspawns=1\nspawnssofar=1\nargcnt=0\npreput_num=1\n"
    b"preput_key_0=k\npreput_val_0=v\ninfo_num=0\nendcmd\n")

PMI2_TWO_COMMANDS = (
    b"cmd=spawn;ncmds=2;preputcount=1;ppkey0=PARENT_ROOT_PORT_NAME;ppval0=tag#0$;"
    b"subcmd=/bin/prog;maxprocs=2;argc=2;argv0=x y;argv1=z;infokeycount=1;infokey0=path;"
    b"infoval0=/opt/bin;subcmd=other;maxprocs=1;argc=0;infokeycount=0;")


def _one_pmi1(wire: bytes) -> pmi1.Pmi1Command:
    (cmd,) = pmi1.Pmi1Decoder().feed(wire)
    assert isinstance(cmd, pmi1.Pmi1Command)
    return cmd


def test_pmi1_two_commands() -> None:
    req = spawn.parse_pmi1(_one_pmi1(PMI1_TWO_COMMANDS))
    assert [(c.argv, c.n) for c in req.commands] == [(["/bin/prog a", "x y", "z"], 2),
                                                     (["other"], 1)]
    assert req.preput == {"PARENT_ROOT_PORT_NAME": "tag#0$port#5$"}
    first = req.commands[0]
    assert first.wdir == "/tmp" and info_hosts(first.info) == ["n1", "n2"]
    assert req.commands[1].info == {} and req.size == 3


def test_pmi1_old_client_repeats_preputs() -> None:
    req = spawn.parse_pmi1(_one_pmi1(PMI1_OLD))
    assert req.preput == {"k": "v"} and req.commands[0].argv == ["a"]


@pytest.mark.parametrize(("wire", "why"), [
    (PMI1_OLD.replace(b"argcnt=0", b"argcnt=1"), "argcnt=1 but 0 args"),
    (PMI1_OLD.replace(b"execname=a\n", b""), "without execname"),
    (PMI1_OLD.replace(b"nprocs=1", b"nprocs=0"), "maxprocs 0"),
    (PMI1_OLD.replace(b"nprocs=1", b"nprocs=x"), "not an integer"),
])
def test_pmi1_bad_requests(wire: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        spawn.parse_pmi1(_one_pmi1(wire))


def test_pmi1_new_line_in_an_argument_is_named() -> None:
    """PMI-1's spawn block is one key=value a line: an argument holding a new line (MPICH's
    client sends it as it is) cannot travel, and the refusal says which value broke."""
    wire = PMI1_OLD.replace(b"argcnt=0\n", b"argcnt=1\narg1=print(1)\nprint(2)\n")
    (got,) = pmi1.Pmi1Decoder().feed(wire)
    assert isinstance(got, ProtocolError)
    assert str(got) == ("spawn line without key=value: 'print(2)' (after arg1: a new line "
                        "inside its value? PMI-1 cannot carry one)")


def test_pmi2_two_commands() -> None:
    (cmd,) = pmi2.Pmi2Decoder().feed(b"%6d" % len(PMI2_TWO_COMMANDS) + PMI2_TWO_COMMANDS)
    assert isinstance(cmd, pmi2.Pmi2Command)
    req = spawn.parse_pmi2(cmd)
    assert [(c.argv, c.n, c.info) for c in req.commands] == [
        (["/bin/prog", "x y", "z"], 2, {"path": "/opt/bin"}), (["other"], 1, {})]
    assert req.preput == {"PARENT_ROOT_PORT_NAME": "tag#0$"}
    with pytest.raises(ProtocolError, match="announced 3 commands"):
        bad = PMI2_TWO_COMMANDS.replace(b"ncmds=2", b"ncmds=3")
        (cmd,) = pmi2.Pmi2Decoder().feed(b"%6d" % len(bad) + bad)
        assert isinstance(cmd, pmi2.Pmi2Command)
        spawn.parse_pmi2(cmd)


def test_replies() -> None:
    ok = spawn.SpawnResult(True, 1, "kvs_x_s1", errcodes=[0, 0, 0])
    assert spawn.reply_pmi1(ok) == b"cmd=spawn_result rc=0 errcodes=0,0,0\n"
    bad = spawn.SpawnResult(False, error="cannot spawn x: command not found", errcodes=[1])
    assert spawn.reply_pmi1(bad) == (b"cmd=spawn_result rc=1 errcodes=1 "
                                     b"msg=cannot_spawn_x:_command_not_found\n")
    (cmd,) = pmi2.Pmi2Decoder().feed(b"%6d" % len(PMI2_TWO_COMMANDS) + PMI2_TWO_COMMANDS)
    assert isinstance(cmd, pmi2.Pmi2Command)
    assert spawn.reply_pmi2(cmd, ok) == b"    39cmd=spawn-response;rc=0;jobid=kvs_x_s1;"
    assert spawn.reply_pmi2(cmd, bad).startswith(b"    ")
    assert b"rc=1;jobid=;errmsg=cannot spawn x" in spawn.reply_pmi2(cmd, bad)


def test_spawn_answer_reports_started_then_needed() -> None:
    told: list[bool] = []
    armed: list[float] = []
    a = SpawnAnswer([0, 1], ["PARENT_ROOT_PORT_NAME"], told.append, armed.append)
    a.initialized(0)
    a.looked_up(b"PMI_process_mapping")
    assert told == [] and a.pending
    a.initialized(1)  # all initialized, none needs the spawner yet
    assert told == [False] and armed == [WANT_WAIT] and a.deadline > 0
    a.looked_up(b"other")
    assert told == [False]
    a.looked_up(b"PARENT_ROOT_PORT_NAME")
    assert told == [False, True] and not a.pending
    a.want()
    a.ended(0)
    assert told == [False, True]  # True once, last


@pytest.mark.parametrize(("preput", "steps", "told"), [
    # Needed before the last init: one True then.
    (["k"], ["init 0", "want", "end 1"], [True]),
    (["k"], ["init 0", "read", "init 1"], [True]),
    # Nothing pre-put: nothing to wait for once they initialized.
    ([], ["init 0", "init 1"], [True]),
    # The deadline: a False, then a True when it passed (not before).
    (["k"], ["init 0", "init 1", "early", "late"], [False, True]),
])
def test_spawn_answer_steps(preput: list[str], steps: list[str], told: list[bool]) -> None:
    got: list[bool] = []
    a = SpawnAnswer([0, 1], preput, got.append)
    for step in steps:
        what, _, arg = step.partition(" ")
        if what == "init":
            a.initialized(int(arg))
        elif what == "end":
            a.ended(int(arg))
        elif what == "read":
            a.looked_up(b"k")
        elif what == "want":
            a.want()
        elif what == "early":
            a.expire(a.deadline - 0.1)
            assert got == [False]
        else:
            a.expire(a.deadline)
    assert got == told


def test_spawn_answer_of_a_node_without_children_keeps_no_deadline() -> None:
    got: list[bool] = []
    a = SpawnAnswer([], ["k"], got.append, lambda _: pytest.fail("armed"))
    a.check()
    assert got == [False] and a.deadline == 0 and a.pending


def test_placement_fills_free_slots_from_the_spawner_then_oversubscribes() -> None:
    assert place_spawn(3, [1, 1], 0, [0, 1]) == [0, 1, 0]
    assert place_spawn(4, [0, 2, 1], 1, [0, 1, 2]) == [1, 1, 2, 1]
    assert place_spawn(2, [3, 3], 1, [0, 1]) == [1, 1]
    assert place_spawn(3, [5, 5, 5], 0, [2]) == [2, 2, 2]
    with pytest.raises(SpawnRefused):
        place_spawn(1, [1], 0, [])
    assert dense([4, 2, 4, 7]) == [0, 1, 0, 2]


def test_members_are_the_ranks_vertices_and_their_ancestors() -> None:
    tree = Tree(7, 2)  # 0 -> 1 (-> 2, 3), 4 (-> 5, 6)
    assert members(tree, [3, 3]) == {0, 1, 3}
    assert members(tree, [0]) == {0}
    assert members(tree, [6, 2]) == {0, 1, 2, 4, 6}


def test_sub_wraps_and_unwraps_any_tree_message() -> None:
    inner = t.Exits([t.RankExit(0, 1, 5, 0, "")])
    sub = t.decode(t.encode(t.wrap(3, inner)))
    assert isinstance(sub, t.Sub) and sub.job == 3 and t.unwrap(sub) == inner
    with pytest.raises(ProtocolError):
        t.unwrap(t.Sub(1, [999]))


# ---------------------------------------------------------------- over a real PMI_FD

RANK = """
    import json, os, socket, sys

    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")
    wire = sys.argv[1]
    out = {"rank": os.environ["PMI_RANK"], "size": os.environ["PMI_SIZE"],
           "spawned": os.environ.get("PMI_SPAWNED"), "argv": sys.argv[2:]}

    def one(text):
        sock.sendall(text.encode())
        return reader.readline().decode().rstrip("\\n")

    def two(body):
        body = body.encode()
        sock.sendall(b"%6d" % len(body) + body)
        n = int(reader.read(6))
        return reader.read(n).decode()

    if wire == "1":
        one("cmd=init pmi_version=1 pmi_subversion=1\\n")
        kvs = one("cmd=get_my_kvsname\\n").split("kvsname=")[1]
        out["kvs"] = kvs
        out["appnum"] = one("cmd=get_appnum\\n")
        out["port"] = one(f"cmd=get kvsname={kvs} key=PARENT_ROOT_PORT_NAME\\n")
        out["mapping"] = one(f"cmd=get kvsname={kvs} key=PMI_process_mapping\\n")
        out["xml"] = one(f"cmd=get kvsname={kvs} key=PMI_hwloc_xmlfile\\n")
        if not out["spawned"]:
            out["reply"] = one(
                "mcmd=spawn\\nnprocs=2\\nexecname=" + sys.executable + "\\ntotspawns=2\\n"
                "spawnssofar=1\\nargcnt=3\\narg1=" + __file__ + "\\narg2=1\\narg3=a b\\n"
                "preput_num=1\\npreput_key_0=PARENT_ROOT_PORT_NAME\\npreput_val_0=port#1$\\n"
                "info_num=0\\nendcmd\\nmcmd=spawn\\nnprocs=1\\nexecname=" + sys.executable +
                "\\ntotspawns=2\\nspawnssofar=2\\nargcnt=2\\narg1=" + __file__ + "\\narg2=1\\n"
                "info_num=0\\nendcmd\\n")
        one("cmd=barrier_in\\n")
        one("cmd=finalize\\n")
    else:
        sock.sendall(b"cmd=init pmi_version=2 pmi_subversion=0\\n")
        reader.readline()
        out["fullinit"] = two(f"cmd=fullinit;pmirank={out['rank']};")
        out["jobid"] = two("cmd=job-getid;")
        out["port"] = two("cmd=kvs-get;jobid=;srcid=-1;key=PARENT_ROOT_PORT_NAME;")
        out["universe"] = two("cmd=info-getjobattr;key=universeSize;")
        out["xml"] = two("cmd=info-getjobattr;key=PMI_hwloc_xmlfile;")
        if "spawner-jobid" not in out["fullinit"]:
            out["reply"] = two(
                "cmd=spawn;ncmds=1;preputcount=1;ppkey0=PARENT_ROOT_PORT_NAME;ppval0=p2;"
                "subcmd=" + sys.executable + ";maxprocs=2;argc=2;argv0=" + __file__ +
                ";argv1=2;infokeycount=0;")
        two("cmd=kvs-fence;")
        two("cmd=finalize;")
    print("RESULT " + json.dumps(out), flush=True)
"""


def _results(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line.split("RESULT ", 1)[1]) for line in stdout.splitlines()
            if "RESULT " in line]


def test_pmi1_spawn_over_a_real_fd(tmp_path: Path) -> None:
    prog = script(tmp_path, "rank.py", RANK)
    res = subprocess.run(pmrun_argv("-n", "1", "-l", sys.executable, str(prog), "1"),
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=40, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    got = _results(res.stdout)
    parent = next(r for r in got if not r["spawned"])
    kids = sorted((r for r in got if r["spawned"]), key=lambda r: str(r["rank"]))
    assert parent["reply"] == "cmd=spawn_result rc=0 errcodes=0,0,0"
    assert parent["port"] == "cmd=get_result rc=1 msg=key_not_found"
    assert [(k["rank"], k["size"], k["spawned"]) for k in kids] == [
        ("0", "3", "1"), ("1", "3", "1"), ("2", "3", "1")]
    assert [k["appnum"] for k in kids] == ["cmd=appnum rc=0 appnum=0"] * 2 + [
        "cmd=appnum rc=0 appnum=1"]
    assert [k["argv"] for k in kids] == [["a b"], ["a b"], []]
    assert all(k["port"] == "cmd=get_result rc=0 value=port#1$" for k in kids)
    assert all(k["mapping"] == "cmd=get_result rc=0 value=(vector,(0,1,3))" for k in kids)
    assert {k["kvs"] for k in kids} == {f"{parent['kvs']}_s1"}
    # The node's topology file, as the launched job has it (MPICH loads it from there).
    assert all(k["xml"] == parent["xml"] for k in kids), got
    # Output of the children is labelled with their job and rank.
    assert sum(line.startswith("[1:") for line in res.stdout.splitlines()) == 3


def test_pmi2_spawn_over_a_real_fd(tmp_path: Path) -> None:
    prog = script(tmp_path, "rank.py", RANK)
    res = subprocess.run(pmrun_argv("-n", "1", sys.executable, str(prog), "2"),
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=40, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    got = _results(res.stdout)
    parent = next(r for r in got if "reply" in r)
    kids = [r for r in got if "reply" not in r]
    jobid = str(parent["jobid"]).split("jobid=")[1].rstrip(";")
    assert parent["reply"] == f"cmd=spawn-response;rc=0;jobid={jobid}_s1;"
    assert len(kids) == 2
    for k in kids:
        assert f"spawner-jobid={jobid};" in str(k["fullinit"])
        assert k["jobid"] == f"cmd=job-getid-response;rc=0;jobid={jobid}_s1;"
        assert k["port"] == "cmd=kvs-get-response;rc=0;found=TRUE;value=p2;"
        assert str(k["universe"]).startswith("cmd=info-getjobattr-response;rc=0;found=TRUE;")
        assert k["xml"] == parent["xml"], got


#: What the raw PMI-1 programs below start with: the rank's PMI socket, one request.
PMI1 = """
    import json, os, socket, sys, time

    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")
    here = os.path.dirname(os.path.abspath(__file__))

    def one(text):
        sock.sendall(text.encode())
        return reader.readline().decode().rstrip("\\n")
"""

#: A PMI-1 spawner of 3 children (two commands) without pre-put keys; two children
#: initialize PMI after a slow start, one ends without a word of PMI.
LATE = """
    def command(i, n, arg):
        return ("mcmd=spawn\\nnprocs=%d\\nexecname=%s\\ntotspawns=2\\nspawnssofar=%d\\n"
                "argcnt=2\\narg1=%s\\narg2=%s\\ninfo_num=0\\nendcmd\\n"
                % (n, sys.executable, i, __file__, arg))

    if os.environ.get("PMI_SPAWNED"):
        if sys.argv[1] == "quit":
            sys.exit(0)  # never a word of PMI: ended, as good as initialized
        time.sleep(0.5)  # a slow start
        open(os.path.join(here, "init-" + os.environ["PMI_RANK"]), "w").close()
        one("cmd=init pmi_version=1 pmi_subversion=1\\n")
        one("cmd=finalize\\n")
        sys.exit(0)
    one("cmd=init pmi_version=1 pmi_subversion=1\\n")
    reply = one(command(1, 2, "late") + command(2, 1, "quit"))
    print(reply, sorted(f for f in os.listdir(here) if f.startswith("init-")), flush=True)
    one("cmd=finalize\\n")
"""


def test_an_mpi_spawner_is_answered_once_its_children_initialized(tmp_path: Path) -> None:
    # The spawner (PMI-1, as MPICH's) sleeps in its PMI read while its children start,
    # instead of busy-polling for their connection: answered once each one initialized
    # PMI, or ended without it.
    prog = script(tmp_path, "late.py", PMI1 + LATE)
    res = subprocess.run(pmrun_argv("-n", "1", sys.executable, str(prog)),
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=40, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "cmd=spawn_result rc=0 errcodes=0,0,0 ['init-0', 'init-1']"], res.stdout + res.stderr


#: A PMI-1 spawner (as MPICH's) pre-puts its port for 2 children; child 0 needs it
#: (``how``: reads it, or enters a barrier) 0.2 s after its PMI init, or none ever does
#: ("never"); the others wait for the spawner's answer.  The spawner prints what it got
#: and when (seconds after the children's last PMI init; after child 0 needed it).
NEEDED = """
    def mark(name):  # when (the monotonic clock is the machine's), whole or not at all
        with open(os.path.join(here, "." + name), "w") as f:
            f.write(repr(time.monotonic()))
        os.replace(os.path.join(here, "." + name), os.path.join(here, name))

    def marks(prefix):
        return [float(open(os.path.join(here, f)).read())
                for f in os.listdir(here) if f.startswith(prefix)]

    if os.environ.get("PMI_SPAWNED"):
        how, rank = sys.argv[1], os.environ["PMI_RANK"]
        mark("init-" + rank)  # (before: the spawner may be answered at this init)
        one("cmd=init pmi_version=1 pmi_subversion=1\\n")
        kvs = one("cmd=get_my_kvsname\\n").split("kvsname=")[1]
        if rank == "0" and how != "never":
            time.sleep(0.2)  # (an MPI library's start, before it connects)
            mark("need-0")
            if how == "read":
                one(f"cmd=get kvsname={kvs} key=PARENT_ROOT_PORT_NAME\\n")
        if rank != "0" or how != "barrier":
            deadline = time.monotonic() + 20
            while not marks("answered") and time.monotonic() < deadline:
                time.sleep(0.01)
        one("cmd=barrier_in\\n")
        one("cmd=finalize\\n")
        sys.exit(0)
    one("cmd=init pmi_version=1 pmi_subversion=1\\n")
    reply = one("mcmd=spawn\\nnprocs=2\\nexecname=%s\\ntotspawns=1\\nspawnssofar=1\\n"
                "argcnt=2\\narg1=%s\\narg2=%s\\npreput_num=1\\n"
                "preput_key_0=PARENT_ROOT_PORT_NAME\\npreput_val_0=port#1$\\ninfo_num=0\\n"
                "endcmd\\n" % (sys.executable, __file__, sys.argv[1]))
    now = time.monotonic()
    mark("answered")
    inits, need = marks("init-"), marks("need-")
    print("RESULT " + json.dumps({"reply": reply, "inits": len(inits),
                                  "after_init": now - max(inits),
                                  "after_need": now - need[0] if need else None}), flush=True)
    one("cmd=finalize\\n")
"""


@pytest.mark.parametrize("where", [[], ["--local-nodes", "2", "-ppn", "1"]],
                         ids=["one-node", "agents"])
@pytest.mark.parametrize("how", ["read", "barrier", "never"])
def test_an_mpi_spawner_is_answered_once_its_children_need_it(
        tmp_path: Path, how: str, where: list[str]) -> None:
    """Answered at its PMI init, an MPI spawner would busy-poll for its children's
    connection while they start: it is answered once one of them reads the key it
    pre-put, or enters a collective; at the latest WANT_WAIT after they initialized."""
    from pm.agent.spawn_answer import WANT_WAIT

    prog = script(tmp_path, "needed.py", PMI1 + NEEDED)
    res = subprocess.run(pmrun_argv(*where, "-n", "1", sys.executable, str(prog), how),
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=40, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    (got,) = _results(res.stdout)
    assert got["reply"] == "cmd=spawn_result rc=0 errcodes=0,0" and got["inits"] == 2, got
    after_init = got["after_init"]
    assert isinstance(after_init, float)
    if how == "never":  # nothing seen: answered anyway, WANT_WAIT after the last init
        assert after_init >= WANT_WAIT - 0.01, got
    else:  # after child 0 needed it (0.2 s after its init), not at WANT_WAIT
        after_need = got["after_need"]
        assert isinstance(after_need, float) and after_need >= 0, got
        assert after_init < WANT_WAIT, got


def test_native_client_spawn(tmp_path: Path) -> None:
    prog = script(tmp_path, "native.py", """
        import os, sys
        from pm.client.sync import RequestFailed, connect

        pmi = connect()
        if len(sys.argv) == 1:
            kids = pmi.spawn([sys.executable, __file__, "child"], 2, env={"EXTRA": "yes"},
                             preput={"hello": "from the parent"})
            print("spawned", kids.job, kids.kvsname.endswith("_s1"), list(kids.ranks),
                  flush=True)
            try:
                pmi.spawn("no-such-program", 1)
            except RequestFailed as exc:
                print("refused", "no-such-program" in str(exc), flush=True)
        else:
            print("child", pmi.rank, pmi.size, os.environ["EXTRA"], os.environ["PMI_SPAWNED"],
                  pmi.info["spawned"], pmi.info["preput"]["hello"], flush=True)
        pmi.close()
    """)
    res = subprocess.run(pmrun_argv("-n", "1", "-l", sys.executable, str(prog)),
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=40, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(res.stdout.splitlines()) == [
        "[0] refused True", "[0] spawned 1 True [0, 1]",
        "[1:0] child 0 2 yes 1 1 from the parent", "[1:1] child 1 2 yes 1 1 from the parent"]


def test_libpmi2_job_spawn(tmp_path: Path) -> None:
    """Slurm's libpmi2 (a real PMI-2 client): PMI2_Job_Spawn gets the children's job id,
    and the children learn from PMI2_Init that they were spawned."""
    import ctypes.util
    import shutil

    cc = shutil.which("cc")
    if cc is None or ctypes.util.find_library("pmi2") is None or not Path(
            "/usr/include/slurm/pmi2.h").exists():
        pytest.skip("needs a C compiler and Slurm's libpmi2 (Debian libpmi2-0-dev)")
    exe = tmp_path / "pmi2_spawn"
    subprocess.run([cc, "-O1", "-o", str(exe), str(Path(__file__).parent / "c" / "pmi2_spawn.c"),
                    "-lpmi2"], check=True, capture_output=True, timeout=60)
    res = subprocess.run(pmrun_argv("-n", "1", "-l", str(exe)), cwd=tmp_path, env=pmrun_env(),
                         capture_output=True, text=True, timeout=40, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = sorted(res.stdout.splitlines())
    parent = lines[0]
    jobid = parent.split("jobid=")[1].split()[0]
    assert parent == f"[0] parent jobid={jobid} rc=0 child={jobid}_s1 errors=0,0", lines
    assert lines[1:] == [f"[1:{r}] child rank={r} size=2 appnum=0 jobid={jobid}_s1"
                         for r in (0, 1)], lines


def test_a_spawned_ranks_output_file_is_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from pm.common.outfiles import expand_pattern

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # (in one, %j is Slurm's job id)

    assert expand_pattern("out.%r", 3, "j1") == "out.3"
    assert expand_pattern("out.%r", 3, "j1", spawned=2) == "out.3.s2"
    assert expand_pattern("out.%j.%r", 3, "j1", spawned=2) == "out.j1s2.3"
    assert expand_pattern("all.txt", 3, "j1", spawned=2) == "all.txt"  # shared on purpose


def test_the_run_name_service_waits_publishes_once_and_meets() -> None:
    from pm.agent.tree_requests import NameService
    from pm.proto import tree_wire as t

    class Agent:
        def __init__(self) -> None:
            self.sent: list[t.NameResp] = []

        def route(self, _dst: int, msg: t.NameResp) -> None:
            self.sent.append(msg)

    names, a, b = NameService(), Agent(), Agent()
    names.serve(a, t.NameReq(1, 0, "lookup-wait", "port", ""))  # type: ignore[arg-type]
    assert a.sent == []
    names.serve(b, t.NameReq(2, 1, "publish-once", "port", "v"))  # type: ignore[arg-type]
    assert [(m.req, m.ok, m.port) for m in a.sent] == [(1, True, "v")]
    names.serve(a, t.NameReq(3, 0, "lookup", "port", ""))  # type: ignore[arg-type]
    assert (a.sent[-1].req, a.sent[-1].ok) == (3, False)  # gone with its first lookup
    # A rendezvous of 3 ranks: 2 on one node, 1 on another; all get both blobs.
    names.serve(a, t.NameReq(4, 0, "connect", "c", "2/3/aa"))  # type: ignore[arg-type]
    assert a.sent[-1].req == 3
    names.serve(b, t.NameReq(5, 1, "connect", "c", "1/3/bb"))  # type: ignore[arg-type]
    assert (a.sent[-1].req, a.sent[-1].port) == (4, "aabb")
    assert (b.sent[-1].req, b.sent[-1].port) == (5, "aabb")
    # Group rendezvous (PMIx groups) also carry a number unique in the run: 1, 2, ...
    for req, group in ((6, "g1"), (8, "g2")):
        names.serve(a, t.NameReq(req, 0, "group", group, "1/2/aa"))  # type: ignore[arg-type]
        names.serve(b, t.NameReq(req + 1, 1, "group", group, "1/2/"))  # type: ignore[arg-type]
    assert [m.port for m in a.sent[-2:]] == ["1/aa", "2/aa"]
    assert [m.port for m in b.sent[-2:]] == ["1/aa", "2/aa"]
    names.serve(a, t.NameReq(10, 0, "connect", "c", "1/1/cc"))  # type: ignore[arg-type]
    assert a.sent[-1].port == "cc"  # a plain rendezvous takes no number
