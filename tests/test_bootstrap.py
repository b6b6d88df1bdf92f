"""The ssh, Slurm and persistent bootstraps: their commands and files (pure).

Jobs through real sshds and a real Slurm cluster are in tests/test_ssh.py and
tests/test_slurm.py.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
import sys
from pathlib import Path

import msgpack
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pm.agent.main import place_in_step
from pm.agent.service import (
    KeyFileError,
    credentials,
    endpoint,
    load_config,
    read_keypair,
    read_public,
    write_keypair,
)
from pm.bootstrap import bootstrap_options, default_hosts, get_bootstrap
from pm.bootstrap.base import agent_command
from pm.bootstrap.persistent import AgentsFileError, parse_agents
from pm.bootstrap.slurm import (
    SRUN_OPTIONS,
    allocation_hosts,
    srun_argv,
    step_argv,
    tasks_per_node,
)
from pm.bootstrap.ssh import DEFAULT_SSH, SshBootstrap, ssh_argv
from pm.common.hostlist import HostlistError, HostSlots, batch_hosts
from pm.common.kary_tree import Tree
from pm.proto import service_wire as sp
from pm.proto.errors import ProtocolError
from pm.proto.plan import AgentConfig

pytestmark = pytest.mark.timeout(90)


# ----------------------------------------------------------------- commands (pure)


def test_ssh_argv_default_user_and_custom_command() -> None:
    cmd = ["/opt/py/bin/python", "-P", "-m", "pm.agent.main", "child"]
    assert ssh_argv("n1", cmd) == [*DEFAULT_SSH, "n1", shlex.join(cmd)]
    assert ssh_argv("n1", cmd, user="alice")[-4:] == ["-l", "alice", "n1", shlex.join(cmd)]
    custom = ssh_argv("n2", ["a b", "c"], ssh="ssh -p 2222 -i '/k/my key'", user="bob")
    assert custom == ["ssh", "-p", "2222", "-i", "/k/my key", "-l", "bob", "n2", "'a b' c"]
    # The remote shell gets the words back whole.
    assert shlex.split(custom[-1]) == ["a b", "c"]
    # No shell runs --ssh: its ~ is expanded here (README: --ssh 'ssh -F ~/.ssh/...').
    assert ssh_argv("n1", ["c"], ssh="ssh -F ~/.ssh/cluster")[:3] == [
        "ssh", "-F", os.path.expanduser("~/.ssh/cluster")]


def test_ssh_bootstrap_options_and_errors() -> None:
    opts = bootstrap_options({"launcher": "ssh", "ssh": "myssh -q", "user": "u",
                              "ssh_limit": "4"})
    assert opts == {"name": "ssh", "ssh": "myssh -q", "user": "u", "limit": 4,
                    "start": "first"}
    boot = get_bootstrap("ssh", opts)
    assert isinstance(boot, SshBootstrap)
    assert boot.limit == 4
    assert boot.argv("h9") == ["myssh", "-q", "-l", "u", "h9",
                               shlex.join(agent_command(lean=True))]
    assert get_bootstrap("ssh", {"name": "ssh"}).limit == 32
    # The default ssh gives up connecting within the join timeout (and names why).
    default = get_bootstrap("ssh", {"name": "ssh", "join_timeout": 7.5})
    assert "ConnectTimeout=8" in default.argv("h")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="--ssh-limit must be at least 1"):
        bootstrap_options({"launcher": "ssh", "ssh_limit": "0"})
    with pytest.raises(ValueError, match="--ssh"):
        get_bootstrap("ssh", {"ssh": "ssh 'unclosed"})


def test_bootstrap_exec_args_go_after_the_launchers_own() -> None:
    from pm.bootstrap.slurm import step_options

    ssh = bootstrap_options({"launcher": "ssh", "launcher_exec_args": "-o Port=2222"})
    assert ssh["ssh"].endswith(" BatchMode=yes -o Port=2222"), ssh
    slurm = bootstrap_options({"launcher": "slurm", "launcher_exec_args": "--mpi=none -v"})
    assert step_options(slurm)[-2:] == ["--mpi=none", "-v"]
    with pytest.raises(ValueError, match=r"^-bootstrap-exec-args: the local launcher runs "):
        bootstrap_options({"launcher": "local", "launcher_exec_args": "-v"})
    with pytest.raises(ValueError, match=r"^-bootstrap-exec-args -o 'x: no closing quo"):
        bootstrap_options({"launcher": "ssh", "launcher_exec_args": "-o 'x"})
    with pytest.raises(ValueError, match=r"^--ssh \"ssh 'x\": No closing quotation$"):
        bootstrap_options({"launcher": "ssh", "ssh": "ssh 'x"})
    with pytest.raises(ValueError, match=r"^--launcher-exec \"sh -c '{command}\": No closing"):
        bootstrap_options({"launcher": "exec", "launcher_exec": "sh -c '{command}"})


def test_lean_agent_command_starts_without_site_and_falls_back(tmp_path: Path) -> None:
    import subprocess

    from pm.bootstrap.base import lean_code

    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": os.defpath}
    lean = agent_command(lean=True)
    assert lean[1:3] == ["-S", "-P"] and lean[-1] == "child"
    # Our site directories found pmrun and pyzmq; with none, site runs after all.
    for argv in ([*lean[:-1], "--version"],
                 [sys.executable, "-S", "-P", "-c", lean_code([]), "--version"]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                             cwd=tmp_path)
        assert res.returncode == 0 and res.stdout.startswith("pm-agent "), res
    # A host whose Python lacks a dependency (here pyzmq): one line, the agent's last.
    (tmp_path / "zmq").mkdir()
    (tmp_path / "zmq" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'zmq'\", name='zmq')\n")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    res = subprocess.run(lean, capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path, input="")
    assert res.returncode == 1 and res.stderr == (
        f"pm-agent: pyzmq is not installed for {sys.executable} on this host (No module "
        "named 'zmq')\n"), res
    # A host's task runner starts the same way: its one line names it (it needs msgpack).
    (tmp_path / "msgpack").mkdir()
    (tmp_path / "msgpack" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'msgpack'\", name='msgpack')\n")
    runner = [sys.executable, "-S", "-P", "-c",
              lean_code([], "pm.ensemble.remote", "pmrun's task runner")]
    res = subprocess.run([*runner, "runner", "1"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=tmp_path, input="")
    assert res.returncode == 1 and res.stderr == (
        f"pmrun's task runner: msgpack is not installed for {sys.executable} on this host "
        "(No module named 'msgpack')\n"), res
    env["PYTHONPATH"] = env["PYTHONPATH"].split(os.pathsep, 1)[1]
    res = subprocess.run([*runner, "walk"], capture_output=True, text=True, timeout=60,
                         env=env, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("usage: python -m pm.ensemble"), res


def test_srun_argv() -> None:
    argv = srun_argv("node07", ["python", "-m", "x"])
    assert argv[0] == "srun"
    assert argv[1:1 + len(SRUN_OPTIONS)] == list(SRUN_OPTIONS)
    assert "--overlap" in argv and "--nodelist=node07" in argv
    assert "--nodes=1" in argv and "--ntasks=1" in argv
    assert argv[-3:] == ["python", "-m", "x"]
    old = srun_argv("n1", ["c"], srun="--kill-on-bad-exit=1")
    assert old == ["srun", "--kill-on-bad-exit=1", "--nodes=1", "--ntasks=1",
                   "--nodelist=n1", "--job-name=pm-agent", "c"]


def test_allocation_hosts_from_slurm_environment() -> None:
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert tasks_per_node("16") == [16]
    env = {"SLURM_JOB_NODELIST": "cn[08-10],gpu1", "SLURM_TASKS_PER_NODE": "4(x2),2,1"}
    assert allocation_hosts(env) == [("cn08", 4), ("cn09", 4), ("cn10", 2), ("gpu1", 1)]
    # A count that does not match the node list is ignored rather than misapplied.
    env["SLURM_TASKS_PER_NODE"] = "4(x2)"
    assert allocation_hosts(env) == [("cn08", None), ("cn09", None), ("cn10", None),
                                     ("gpu1", None)]
    with pytest.raises(HostlistError, match="not inside a Slurm allocation"):
        allocation_hosts({})
    with pytest.raises(HostlistError, match="SLURM_TASKS_PER_NODE"):
        allocation_hosts({"SLURM_JOB_NODELIST": "a", "SLURM_TASKS_PER_NODE": "x"})


def test_slurm_is_the_default_launcher_inside_an_allocation(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert bootstrap_options({})["name"] == "slurm"
    assert bootstrap_options({}, hosts_given=True)["name"] == "local"


def test_agent_config_is_never_on_the_command_line() -> None:
    # The job secret travels on stdin: no bootstrap puts it on argv (visible in ps).
    cfg = AgentConfig(1, "tcp://1.2.3.4:5", "ab" * 32, "j1", "h", 30)
    for boot in (get_bootstrap("ssh", {"name": "ssh"}), get_bootstrap("slurm", {})):
        assert isinstance(boot, SshBootstrap) or boot.name == "slurm"
        argv = boot.argv("h")  # type: ignore[attr-defined]
        assert cfg.secret not in " ".join(argv)


def test_exact_asks_the_step_for_the_busiest_nodes_cpus() -> None:
    from pm.bootstrap.base import step_cpus

    assert step_cpus([0, 0, 0, 1], "none") == 3 and step_cpus([0, 1, 1], "core:2") == 4
    assert step_cpus([0], "hwthread:4") == 4 and step_cpus([0, 1], "user:0,1") == 1
    boot = get_bootstrap("slurm", {"name": "slurm", "exact": True, "cpus": 3, "job_name": "j"})
    argv = boot._step(["n1", "n2"])  # type: ignore[attr-defined]
    assert "--exact" in argv and "--cpus-per-task=3" in argv and "--job-name=j" in argv
    assert "--overlap" not in argv and "--whole" not in argv
    plain = get_bootstrap("slurm", {"name": "slurm"})._step(["n1"])  # type: ignore[attr-defined]
    assert "--overlap" in plain and "--whole" in plain and "--exact" not in plain


def test_one_step_starts_every_agent_and_each_finds_its_place() -> None:
    argv = step_argv(["n1", "n2", "n3"], ["python", "-m", "x"])
    assert argv[0] == "srun" and "--overlap" in argv and "--nodelist=n[1-3]" in argv
    assert "--nodes=3" in argv and "--ntasks=3" in argv and "--ntasks-per-node=1" in argv
    assert not any("kill-on-bad-exit" in a for a in argv)
    assert argv[-3:] == ["python", "-m", "x"]
    # Every agent gets the same config; its node's place in the list is its vertex.
    for name, vertex, parent, listen in (("n1", 0, "tcp://head:1", True),
                                         ("n2", 1, "", True), ("n3", 2, "", False),
                                         ("n4", 3, "", False)):
        cfg = AgentConfig(-1, "tcp://head:1", "ab" * 16, "j", "", 30, hosts="n[1-4]", fanout=2)
        place_in_step(cfg, {"SLURMD_NODENAME": name})
        assert (cfg.vertex, cfg.host, cfg.parent, cfg.listen) == (vertex, name, parent, listen)
        if vertex:
            assert cfg.up == Tree(4, 2).parent(vertex)
    with pytest.raises(ValueError, match="not one of the job's hosts"):
        place_in_step(AgentConfig(-1, "", "ab" * 16, "j", "", 30, hosts="n[1-2]", fanout=2),
                      {"SLURMD_NODENAME": "other", "SLURM_NODEID": "7"})


# ----------------------------------------------------------------- persistent: files, codec


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    public = write_keypair(str(tmp_path / "node"))
    key, pub = tmp_path / "node.key", tmp_path / "node.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().strip() == public
    assert read_keypair(key)[0].decode() == public
    assert read_public(str(pub)) == public.encode() == read_public(public)
    with pytest.raises(KeyFileError, match="exists"):
        write_keypair(str(tmp_path / "node"))
    other = write_keypair(str(tmp_path / "other"))
    text = key.read_text().replace(public, other)
    (tmp_path / "mixed.key").write_text(text)
    with pytest.raises(KeyFileError, match="do not match"):
        read_keypair(tmp_path / "mixed.key")
    with pytest.raises(KeyFileError, match="neither a public key"):
        read_public("not-a-key")


def test_service_config(tmp_path: Path) -> None:
    write_keypair(str(tmp_path / "svc"))
    alice = write_keypair(str(tmp_path / "alice"))
    cfg = tmp_path / "agent.toml"
    cfg.write_text('listen = "10.0.0.1"\nkey = "svc.key"\nports = [7301, 7310]\n'
                   'iface = "eth1"\n[clients]\nalice = ["alice.pub"]\n'
                   f'bob = "{write_keypair(str(tmp_path / "bob"))}"\n')
    conf = load_config(str(cfg))
    assert conf.listen == "tcp://10.0.0.1:7300"
    assert conf.key == str(tmp_path / "svc.key")
    assert conf.clients[alice.encode()] == "alice" and len(conf.clients) == 2
    assert conf.ports == (7301, 7310) and conf.iface == "eth1" and not conf.allow_root
    assert load_config(str(cfg), "tcp://0.0.0.0:9000").listen == "tcp://0.0.0.0:9000"
    assert endpoint("[::1]:7") == "tcp://[::1]:7"
    cfg.write_text('key = "svc.key"\nports = [7310, 7301]\n')
    with pytest.raises(KeyFileError, match="ports"):
        load_config(str(cfg))
    cfg.write_text('listen = "x"\n')
    with pytest.raises(KeyFileError, match="no key"):
        load_config(str(cfg))


def test_agents_file(tmp_path: Path) -> None:
    server = write_keypair(str(tmp_path / "server"))
    other = write_keypair(str(tmp_path / "n3"))
    text = ("# three services\nclient-key = me.key\nserver-key = server.pub\n"
            "n1\nn2:7301   # another port\nn3 10.0.0.3:7300 key=n3.pub\n")
    parsed = parse_agents(text, tmp_path)
    assert parsed["client_key"] == str(tmp_path / "me.key")
    assert parsed["services"] == {
        "n1": {"address": "tcp://n1:7300", "key": server},
        "n2": {"address": "tcp://n2:7301", "key": server},
        "n3": {"address": "tcp://10.0.0.3:7300", "key": other},
    }
    with pytest.raises(AgentsFileError, match="no key for n1"):
        parse_agents("n1\n", tmp_path)
    with pytest.raises(AgentsFileError, match="listed twice"):
        parse_agents("server-key = server.pub\nn1\nn1:7301\n", tmp_path)
    with pytest.raises(AgentsFileError, match="no services"):
        parse_agents("# nothing\n", tmp_path)
    for line, said in (("n1 127.0.0.1:99999", "127.0.0.1:99999: the port must be a number "
                                              "from 1 to 65535, not '99999'"),
                       ("n1:abc", "n1:abc: the port must be a number from 1 to 65535, not "
                                  "'abc'"),
                       ("n1 udp://10.0.0.1:7300", "udp://10.0.0.1:7300: a service listens "
                                                  "on tcp://, not udp://"),
                       ("n1 :7300", ":7300: no host"),
                       ("client-keys = me.key", "unknown setting 'client-keys' (client-key "
                                                "or server-key)")):
        with pytest.raises(AgentsFileError) as info:
            parse_agents(f"server-key = server.pub\n{line}\n", tmp_path)
        assert str(info.value) == f"agents file line 2: {said}"
    agents = tmp_path / "agents"
    agents.write_text("server-key = server.pub\nn1\nn2\n")
    opts = bootstrap_options({"agents": str(agents)})
    assert opts["name"] == "persistent" and list(opts["services"]) == ["n1", "n2"]
    assert default_hosts(opts) == [("n1", None), ("n2", None)]


def test_service_requests_are_checked_field_by_field() -> None:
    cfg = AgentConfig(2, "tcp://10.0.0.1:7301", "ab" * 32, "host-12-abcd", "n2", 30, 5.0)
    msg = sp.decode(sp.encode(sp.Start(cfg, True)))
    assert msg == sp.Start(cfg, True)
    assert isinstance(msg, sp.Start) and msg.cfg.heartbeat == 5.0 and msg.cfg.host == "n2"
    for field, bad in (("vertex", -1), ("vertex", "1"), ("secret", "zz"), ("job_id", "../x"),
                       ("parent", "ipc:///tmp/x"), ("heartbeat", None), ("vertex", True),
                       ("ports", [1]), ("listen", 1)):
        wire = cfg.to_wire()
        wire[AgentConfig._fields.index(field)] = bad
        with pytest.raises(ProtocolError):
            sp.decode(msgpack.packb([sp.Start.op, wire, True]))
    with pytest.raises(ProtocolError):
        sp.decode(b"\xc1garbage")
    with pytest.raises(ProtocolError):
        sp.decode(msgpack.packb([1, 2]))
    with pytest.raises(ProtocolError, match="not \\[op"):
        sp.decode(msgpack.packb({"op": "start"}))
    with pytest.raises(ProtocolError, match="bad job id"):
        sp.decode(sp.encode(sp.End("a b")))
    for reply in (sp.Started("j1", 3, "tcp://h:1"), sp.Failed("j1", 3, "no"),
                  sp.Exited("j1", 3, -1, 9), sp.Error("bad")):
        assert sp.decode(sp.encode(reply)) == reply


def test_who_job_agents_run_as() -> None:
    nobody = pwd.getpwnam("nobody")
    as_root = credentials("nobody", allow_root=False, me=0)
    assert (as_root["user"], as_root["group"]) == (nobody.pw_uid, nobody.pw_gid)
    assert as_root["env"]["USER"] == "nobody"
    assert "user" not in credentials("nobody", allow_root=False, me=nobody.pw_uid)
    with pytest.raises(PermissionError, match="refuses to run jobs as root"):
        credentials("root", allow_root=False, me=0)
    assert "user" not in credentials("root", allow_root=True, me=0)
    with pytest.raises(PermissionError, match="cannot run jobs as 'nobody'"):
        credentials("nobody", allow_root=False, me=nobody.pw_uid + 1)
    with pytest.raises(PermissionError, match="no such user"):
        credentials("no-such-user-here", allow_root=False, me=0)


def test_pbs_and_lsf_host_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_JOB_NODELIST", "SLURM_JOB_ID", "PBS_NODEFILE", "LSB_DJOB_HOSTFILE"):
        monkeypatch.delenv(var, raising=False)
    assert batch_hosts({}) is None
    # PBS/Torque and LSF: one line per slot, host names repeated.
    nodefile = tmp_path / "nodes"
    nodefile.write_text("cn01\ncn01\ncn02\ncn01\ncn03\n")
    for var in ("PBS_NODEFILE", "LSB_DJOB_HOSTFILE"):
        assert batch_hosts({var: str(nodefile)}) == [
            HostSlots("cn01", 3), HostSlots("cn02", 1), HostSlots("cn03", 1)]
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    opts = bootstrap_options({})
    assert opts["name"] == "ssh" and opts["batch"]
    assert default_hosts(opts) == [("cn01", 3), ("cn02", 1), ("cn03", 1)]
    # Hosts given on the command line win over the batch system's file.
    assert "batch" not in bootstrap_options({}, ["other1"])
    with pytest.raises(HostlistError, match="LSB_DJOB_HOSTFILE=/no/such: No such file"):
        batch_hosts({"LSB_DJOB_HOSTFILE": "/no/such"})


def test_hydras_rmk_picks_whose_allocation(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """-rmk slurm|pbs|lsf: the hosts are that resource manager's, even beside another's;
    outside one, one line says so."""
    for var in ("SLURM_JOB_NODELIST", "SLURM_JOB_ID", "PBS_NODEFILE", "LSB_DJOB_HOSTFILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"^-rmk slurm: this is not inside a Slurm "
                                         r"allocation \(no SLURM_JOB_NODELIST\)$"):
        bootstrap_options({"rmk": "slurm"})
    with pytest.raises(ValueError, match=r"^-rmk lsf: this is not inside an LSF job "):
        bootstrap_options({"rmk": "lsf"})
    pbs, lsf = tmp_path / "pbs", tmp_path / "lsf"
    pbs.write_text("p1\np1\n")
    lsf.write_text("l1\nl2\n")
    monkeypatch.setenv("PBS_NODEFILE", str(pbs))
    monkeypatch.setenv("LSB_DJOB_HOSTFILE", str(lsf))
    assert default_hosts(bootstrap_options({})) == [("p1", 2)]  # (the first found)
    assert default_hosts(bootstrap_options({"rmk": "lsf"})) == [("l1", 1), ("l2", 1)]
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert bootstrap_options({})["name"] == "slurm"
    opts = bootstrap_options({"rmk": "pbs"})
    assert opts["name"] == "ssh" and default_hosts(opts) == [("p1", 2)]
    assert bootstrap_options({"rmk": "slurm"})["name"] == "slurm"


def test_first_agents_start_before_the_head_listens() -> None:
    from pm.bootstrap import early
    from pm.jobspec import AppSpec, JobSpec

    # A command that waits for its stdin to close, as an agent waiting for its config.
    opts = {"name": "exec", "template": "sh -c 'cat >/dev/null' {host}", "start": "first"}
    spec = JobSpec(apps=[AppSpec(["true"], n=4)])
    hosts = ["h1", "h2", "h3", "h4"]
    early.prestart(hosts, [None] * 4, opts, spec, 2)
    # Vertex 0 and its children (fan-out 2 over 4: vertices 1 and 3), nothing deeper.
    assert sorted(early._STARTED) == [0, 1, 3]
    pids = [p.pid for _, p in early._STARTED.values()]
    first = early.take(0, "h1")
    assert first is not None and first.pid > 0 and first.stdin >= 0
    assert early.take(1, "other") is None  # a plan that turned out otherwise: let go
    early.abandon_all()
    first.abandon()
    for pid in pids:  # each ends once its stdin is closed
        assert os.waitpid(pid, 0)[0] == pid
    assert early._STARTED == {}
    # Bootstraps that do not start the first level at once start nothing early.
    early.prestart(hosts, [None] * 4, {"name": "local"}, spec, 2)
    assert early._STARTED == {}


def test_the_early_step_is_told_its_config_and_the_head_serves_its_socket(tmp_path: Path
                                                                         ) -> None:
    """Inside an allocation the step's config line goes right after srun starts: agents
    connect to a socket the head's port adopts later (pm.bootstrap.early)."""
    import asyncio
    import json
    import time

    from pm.agent.child_port import ChildPort
    from pm.agent.links import ParentLink
    from pm.bootstrap import early
    from pm.bootstrap.pipes import Piped
    from pm.options import parse
    from pm.proto import tree_wire as t

    told = tmp_path / "told"

    def step() -> Piped:  # what the step's agents are told, kept (a command, no srun)
        proc = Piped(["/bin/sh", "-c", f"cat >{told}"], None, dict(os.environ))
        early._STARTED[-1] = ("h[1-2]", proc)
        early._tell_step(proc, ["h1", "h2"], {"name": "slurm", "start": "step"},
                         parse(["-n", "4", "true"], {}))
        return proc

    def line() -> str:
        deadline = time.monotonic() + 10
        while not told.exists() or b"\n" not in told.read_bytes():
            assert time.monotonic() < deadline, "no config line written"
            time.sleep(0.01)
        return told.read_text().splitlines()[0]

    proc = step()
    identity = early.take_identity()
    assert identity is not None
    secret, job_id = identity
    cfg = AgentConfig.from_wire(json.loads(line()))
    assert (cfg.vertex, cfg.hosts, cfg.fanout, cfg.job_id) == (-1, "h[1-2]", 32, job_id)
    assert cfg.secret == secret.hex() and cfg.parent == cfg.head
    assert cfg.head.startswith("tcp://0.0.0.0:")
    wire = cfg.to_wire()

    async def join() -> list[int]:
        # Vertex 0 says hello before the head has a port: the kernel holds it.
        link = ParentLink(secret, cfg.head.replace("0.0.0.0", "127.0.0.1"), 0, lambda m: None)
        link.send(t.Hello(0, "h1", os.getpid()))
        taken = early.take_listener(lambda address: wire if address == cfg.head else None)
        assert taken is not None
        port = ChildPort(secret, "tcp://0.0.0.0", None, None, listening=taken)
        assert port.address == cfg.head
        deadline = time.monotonic() + 10
        hellos: list[int] = []
        while not hellos and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            hellos = [v for v, _ in port.take_early()]
        await link.aclose()
        await port.aclose(linger=0)
        return hellos

    assert asyncio.run(join()) == [0]
    # The full path takes that step as it is: its config is not written again.
    taken = early.take(-1, "h[1-2]")
    assert taken is proc and early.configured(proc)
    proc.abandon()
    assert os.waitpid(proc.pid, 0)[0] == proc.pid
    assert told.read_text().count("\n") == 1
    early.abandon_all()

    # A plan that turned out otherwise: the step and its socket go.
    told.unlink()
    proc = step()
    line()
    assert early.take_listener(lambda address: None) is None
    assert early.take(-1, "h[1-2]") is None and proc.stdin < 0
    assert os.waitpid(proc.pid, 0)[0] == proc.pid
    # ... and one never taken goes with the rest.
    told.unlink()
    proc = step()
    line()
    assert early.take(-1, "h[1-2]") is None  # its socket was never the head's
    early.abandon_all()
    assert os.waitpid(proc.pid, 0)[0] == proc.pid
    assert early._STARTED == {} and early.take_identity() is None


@pytest.mark.parametrize(("argv", "started"), [
    (["-hosts", "h1,h2,h3", "-n", "4"], [0, 1, 2]),  # dealt: h3 has rank 2
    (["-hosts", "h1,h2,h1", "-n", "1"], [0]),  # h2 gets no rank: no agent
    (["-hosts", "h1:4,h2,h3", "-n", "4"], [0]),
    (["-f", "hf"], [0, 1, 2]),  # no -n: a rank a line
])
def test_first_agents_started_early_are_on_the_plans_hosts(
        argv: list[str], started: list[int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The agents ssh'd to before the heavy imports (prestart) are on the nodes the plan
    deals ranks to (Hydra's host lists), not more nor fewer."""
    from pm import cli, cli_nodes
    from pm.bootstrap import early

    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf").write_text("h1\nh2\nh3\n")
    opts = cli.parse(["--launcher-exec", "sh -c 'cat >/dev/null' {host}", *argv, "true"])
    where = cli_nodes.hosts_of(opts)
    assert where is not None
    boot = {**where[2], "start": "first"}
    early.prestart(where[0], where[1], boot, opts.spec, 8, opts.app_nodes, opts.deal)
    try:
        assert sorted(early._STARTED) == started
        assert [early._STARTED[v][0] for v in started] == where[0][:len(started)]
    finally:
        pids = [p.pid for _, p in early._STARTED.values()]
        early.abandon_all()
        for pid in pids:
            assert os.waitpid(pid, 0)[0] == pid


@pytest.mark.parametrize("argv", [["-n", "8", "true"], ["-n", "3", "true"], ["true"],
                                  ["-n", "5", "-genv", "A", "1", "true", "x"],
                                  ["-ppn", "1", "-n", "3", "true"], ["-ppn", "3", "true"]])
def test_the_early_slurm_step_has_the_full_paths_hosts(monkeypatch: pytest.MonkeyPatch,
                                                      argv: list[str]) -> None:
    """pmrun starts the agents' step right after its quick check (step_now): on the hosts
    the full path then plans (else that path lets the step go and starts another)."""
    from pm import cli, cli_nodes
    from pm.bootstrap.early import step_hosts
    from pm.common.mapping import place
    from pm.jobspec import sequence_slots
    from pm.options import parse as parse_all

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-4]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x4)")
    found = step_hosts(parse_all(argv, os.environ), os.environ)
    opts = cli.parse(argv)
    where = cli_nodes.hosts_of(opts)
    assert where is not None
    hosts, given, boot = where
    used = max(place(opts.spec.size, sequence_slots(opts.spec, len(hosts), given))) + 1
    assert found == (hosts[:used], boot)


def test_no_early_slurm_step_for_what_the_full_path_decides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pm.bootstrap.early import step_hosts
    from pm.options import parse as parse_all

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-4]")
    monkeypatch.delenv("SLURM_TASKS_PER_NODE", raising=False)
    assert step_hosts(parse_all(["true"], os.environ), os.environ) is None  # no slots, no -n
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x4)")
    for argv in (["-hosts", "a,b", "true"], ["-hosts", "localhost", "true"], ["-N", "2", "true"],
                 ["-n", "2", "a", ":", "-n", "2", "b"], ["--launcher", "ssh", "true"]):
        assert step_hosts(parse_all(argv, os.environ), os.environ) is None, argv
    monkeypatch.delenv("SLURM_JOB_ID")
    assert step_hosts(parse_all(["-n", "2", "true"], os.environ), os.environ) is None
