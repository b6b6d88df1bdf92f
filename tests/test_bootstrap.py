"""The ssh and Slurm bootstraps: their commands (pure), then real jobs through them.

The real runs use network-namespace hosts (tests/netns_util.py): ``--ssh``
points at a small wrapper that runs the remote command line in the host's
namespace (``ip netns exec HOST sh -c CMD``), and a stand-in ``srun`` on PATH
runs its command in the namespace of each node of its ``--nodelist``.  Only
ssh and srun are stand-ins: the bootstrap code, the agents, their tree spawn
and the TCP links between the namespaces are the real ones.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import pmrun_env, script
from netns_util import NetnsHosts, netns_missing
from pm.agent.serve import (
    KeyFileError,
    credentials,
    endpoint,
    load_config,
    read_keypair,
    read_public,
    write_keypair,
)
from pm.proto import service as sp
from pm.proto.errors import ProtocolError

from pm.bootstrap.base import (
    AgentConfig,
    agent_command,
    bootstrap_options,
    default_hosts,
    get_bootstrap,
)
from pm.bootstrap.persistent import AgentsFileError, parse_agents
from pm.bootstrap.slurm import SRUN_OPTIONS, allocation_hosts, srun_argv, tasks_per_node
from pm.bootstrap.ssh import DEFAULT_SSH, SshBootstrap, ssh_argv
from pm.hostlist import HostlistError
from pm.tree import Tree

pytestmark = pytest.mark.timeout(90)

_NETNS = netns_missing()
needs_netns = pytest.mark.skipif(_NETNS is not None, reason=str(_NETNS))

WHERE = """
    import os
    print(os.environ["PMI_RANK"], os.environ["PMI_HOSTNAME"],
          os.readlink("/proc/self/ns/net"), flush=True)
"""

#: ssh stand-in: ``fake-ssh [-l USER] HOST CMDLINE`` runs CMDLINE in HOST's namespace
#: through a shell, as sshd would; it logs each call so the test sees who started whom.
FAKE_SSH = """#!/bin/sh
user=
if [ "$1" = -l ]; then user=$2; shift 2; fi
host=$1; shift
echo "$(readlink /proc/self/ns/net) user=$user host=$host" >> "$FAKE_LOG"
exec ip netns exec "$host" sh -c "$*"
"""

#: srun stand-in: runs the command (after the options) in the namespace of each node of
#: --nodelist (bracket syntax), one process per node, and waits for them all.
FAKE_SRUN = """#!{python}
import os, subprocess, sys
from pm.hostlist import expand
args = sys.argv[1:]
nodes = []
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt.startswith("--nodelist="):
        nodes = expand(opt.split("=", 1)[1])
    elif opt in ("-w", "--nodelist"):
        nodes = expand(args.pop(0))
if not nodes:
    nodes = expand(os.environ["SLURM_JOB_NODELIST"])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(f"{{os.readlink('/proc/self/ns/net')}} srun {{' '.join(sys.argv[1:])}}\\n")
procs = [subprocess.Popen(["ip", "netns", "exec", n, *args]) for n in nodes]
sys.exit(max(p.wait() for p in procs))
"""


# ----------------------------------------------------------------- commands (pure)


def test_ssh_argv_default_user_and_custom_command() -> None:
    cmd = ["/opt/py/bin/python", "-P", "-m", "pm.agent.main", "child"]
    assert ssh_argv("n1", cmd) == [*DEFAULT_SSH, "n1", shlex.join(cmd)]
    assert ssh_argv("n1", cmd, user="alice")[-4:] == ["-l", "alice", "n1", shlex.join(cmd)]
    custom = ssh_argv("n2", ["a b", "c"], ssh="ssh -p 2222 -i '/k/my key'", user="bob")
    assert custom == ["ssh", "-p", "2222", "-i", "/k/my key", "-l", "bob", "n2", "'a b' c"]
    # The remote shell gets the words back whole.
    assert shlex.split(custom[-1]) == ["a b", "c"]


def test_ssh_bootstrap_options_and_errors() -> None:
    opts = bootstrap_options({"launcher": "ssh", "ssh": "myssh -q", "user": "u",
                              "ssh_limit": "4"})
    assert opts == {"name": "ssh", "ssh": "myssh -q", "user": "u", "limit": 4}
    boot = get_bootstrap("ssh", opts)
    assert isinstance(boot, SshBootstrap)
    assert boot.limit == 4
    assert boot.argv("h9") == ["myssh", "-q", "-l", "u", "h9", shlex.join(agent_command())]
    assert get_bootstrap("ssh", {"name": "ssh"}).limit == 32
    with pytest.raises(ValueError, match="--ssh-limit must be at least 1"):
        bootstrap_options({"launcher": "ssh", "ssh_limit": "0"})
    with pytest.raises(ValueError, match="--ssh"):
        get_bootstrap("ssh", {"ssh": "ssh 'unclosed"})


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


# ----------------------------------------------------------------- real jobs


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pm.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _rows(stdout: str) -> list[list[str]]:
    return sorted(line.split() for line in stdout.splitlines() if line.strip())


@needs_netns
@pytest.mark.netns
def test_ssh_launcher_tree_spawn_across_four_namespace_hosts(tmp_path: Path) -> None:
    fake = tmp_path / "fake-ssh"
    fake.write_text(FAKE_SSH)
    fake.chmod(0o755)
    log = tmp_path / "ssh.log"
    prog = script(tmp_path, "where.py", WHERE)
    with NetnsHosts(4) as hosts:
        env = pmrun_env({"FAKE_LOG": str(log)})
        res = _run(["--launcher", "ssh", "--ssh", str(fake), "--user", "alice",
                    "--ssh-limit", "1", "-hosts", ",".join(hosts.names), "--fanout", "2",
                    "--iface", hosts.bridge_addr, "-ppn", "1", "-n", "4",
                    sys.executable, str(prog)], tmp_path, env)
        assert res.returncode == 0, res.stderr
        rows = _rows(res.stdout)
        assert [r[1] for r in rows] == hosts.names
        assert len({r[2] for r in rows}) == 4  # each rank in its own host's namespace
        calls = log.read_text().splitlines()
        assert len(calls) == 4 and all("user=alice" in c for c in calls)
        # Tree spawn: the head ssh'd only to vertex 0's host; every other host was
        # reached from its tree parent's namespace.
        ns_of = {r[1]: r[2] for r in rows}
        called_from = {c.split("host=")[1]: c.split()[0] for c in calls}
        tree = Tree(4, 2)
        h = hosts.names
        assert called_from[h[0]] == os.readlink("/proc/self/ns/net")
        for v in range(1, 4):
            parent = tree.parent(v)
            assert parent is not None
            assert called_from[h[v]] == ns_of[h[parent]], (v, calls)
        assert tree.height() == 2  # a real second level
        assert not hosts.wait_empty(15)


@needs_netns
@pytest.mark.netns
def test_ssh_launcher_names_a_host_it_cannot_reach(tmp_path: Path) -> None:
    fake = tmp_path / "fake-ssh"
    fake.write_text(FAKE_SSH)
    fake.chmod(0o755)
    with NetnsHosts(2) as hosts:
        env = pmrun_env({"FAKE_LOG": str(tmp_path / "log")})
        res = _run(["--launcher", "ssh", "--ssh", str(fake), "-hosts",
                    f"{hosts.names[0]},nosuchhost", "--iface", hosts.bridge_addr,
                    "--join-timeout", "10", "-ppn", "1", "-n", "2", "true"], tmp_path, env)
        assert res.returncode == 255, res.stderr
        assert "node 1 (nosuchhost) lost" in res.stderr
        assert not hosts.wait_empty(15)


@needs_netns
@pytest.mark.netns
def test_slurm_launcher_inside_a_fake_allocation(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    srun = bindir / "srun"
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(0o755)
    log = tmp_path / "srun.log"
    prog = script(tmp_path, "where.py", WHERE)
    with NetnsHosts(3) as hosts:
        nodelist = f"pm{hosts.k}h[1-3]"
        env = pmrun_env({"FAKE_LOG": str(log), "SLURM_JOB_ID": "4242",
                         "SLURM_JOB_NODELIST": nodelist, "SLURM_TASKS_PER_NODE": "2(x3)"})
        env["PATH"] = f"{bindir}:{env['PATH']}"
        # No -hosts, no --launcher: the allocation decides both, slots included (2 per node).
        res = _run(["--fanout", "1", "--iface", hosts.bridge_addr, "-n", "6",
                    sys.executable, str(prog)], tmp_path, env)
        assert res.returncode == 0, res.stderr
        rows = _rows(res.stdout)
        assert [r[1] for r in rows] == sorted(h for h in hosts.names for _ in range(2))
        assert len({r[2] for r in rows}) == 3
        calls = log.read_text().splitlines()
        assert len(calls) == 3, calls
        assert all("--overlap" in c for c in calls)
        # fanout 1 is a chain: every srun but the first ran inside a namespace host.
        assert len({c.split()[0] for c in calls}) == 3
        assert not hosts.wait_empty(15)


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
    agents = tmp_path / "agents"
    agents.write_text("server-key = server.pub\nn1\nn2\n")
    opts = bootstrap_options({"agents": str(agents)})
    assert opts["name"] == "persistent" and list(opts["services"]) == ["n1", "n2"]
    assert default_hosts(opts) == [("n1", None), ("n2", None)]


def test_service_requests_are_checked_field_by_field() -> None:
    cfg = AgentConfig(2, "tcp://10.0.0.1:7301", "ab" * 32, "host-12-abcd", "n2", 30, 5.0)
    msg = sp.decode(sp.encode("start", cfg=cfg.to_wire(), listen=True))
    assert sp.check_start(msg) == {**cfg.to_wire(), "listen": True}
    for field, bad in (("vertex", -1), ("vertex", "1"), ("secret", "zz"), ("job_id", "../x"),
                       ("parent", "ipc:///tmp/x"), ("heartbeat", None), ("vertex", True)):
        wire = {**cfg.to_wire(), field: bad}
        with pytest.raises(ProtocolError):
            sp.check_start({"op": "start", "cfg": wire})
    with pytest.raises(ProtocolError):
        sp.decode(b"\xc1garbage")
    with pytest.raises(ProtocolError):
        sp.decode(msgpack.packb([1, 2]))
    with pytest.raises(ProtocolError):
        sp.check_job({"op": "end", "job": "a b"})


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
