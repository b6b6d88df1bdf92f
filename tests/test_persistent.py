"""Persistent ``pm-agent serve`` services on network-namespace hosts, used with ``--agents``.

Each namespace host runs one service (as the systemd unit would), with a CURVE
key pair made by ``pm-agent keygen``; the head connects with a client key the
services list in their configuration.  Shown here: an MPICH job across the
hosts with a two-level tree, a second job after a failed one on the same
services, two jobs at once, a client whose key is not listed (and a
connection that is not even ZeroMQ) refused and logged while the services
keep serving, a job agent killed under a running job naming its node, the
refusal to run jobs as root unless the configuration allows it, and the
environments: the job agent's is the service's fixed one, not the service's
own, and the ranks' is the user's.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import REPO, mpi_missing, pmrun_argv, pmrun_env, script, wait_until
from netns_util import NetnsHosts, netns_missing

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

_WHY = netns_missing()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))

PORT = 7300

MPI_PROGRAM = """
    import os
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.rank)
    nets = comm.allgather(os.readlink("/proc/self/ns/net"))
    comm.Barrier()
    if comm.rank == 0:
        print("sum", total, "size", comm.size, "netns", len(set(nets)), flush=True)
"""

WHERE = """
    import os, sys
    print(os.environ["PMI_RANK"], os.environ["PMI_HOSTNAME"], os.readlink("/proc/self/ns/net"),
          flush=True)
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 and os.environ["PMI_RANK"] == "1" else 0)
"""


def keygen(prefix: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "pm.agent.main", "keygen", str(prefix)],
                         env=pmrun_env(), capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@dataclass
class Services:
    hosts: NetnsHosts
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def agents_file(self) -> Path:
        return self.dir / "agents"

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def job_agents(self) -> dict[str, list[int]]:
        """Job agent processes (``pm-agent child``) left in the namespaces."""
        out = {}
        for ns in self.hosts.names:
            pids = []
            for pid in self.hosts.pids(ns):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"pm.agent.main" in cmd and b"child" in cmd:
                    pids.append(pid)
            if pids:
                out[ns] = pids
        return out

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def run(self, *args: str, agents: Path | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(pmrun_argv("--agents", str(agents or self.agents_file),
                                         "--iface", self.hosts.bridge_addr, *args),
                              cwd=self.dir, env=pmrun_env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def start_services(hosts: NetnsHosts, tmp: Path, allow_root: bool = True,
                   user: str = "root", env: dict[str, str] | None = None,
                   config: str = "") -> Services:
    """One service per namespace host; ``env``: variables added to the services'
    environment, ``config``: lines added to their configuration (before [clients])."""
    keygen(tmp / "server")
    keygen(tmp / "client")
    svc = Services(hosts, tmp)
    lines = ["client-key = client.key", "server-key = server.pub"]
    for i, ns in enumerate(hosts.names):
        cfg = tmp / f"{ns}.toml"
        cfg.write_text(f'listen = "{hosts.addr(i)}:{PORT}"\nkey = "server.key"\n'
                       f"allow_root = {'true' if allow_root else 'false'}\n"
                       "ports = [7301, 7399]\n"
                       f'{config}[clients]\n{user} = ["client.pub"]\n')
        log = tmp / f"{ns}.log"
        svc.logs.append(log)
        with log.open("wb") as err:
            svc.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "pm.agent.main", "serve",
                 "--config", str(cfg)], env=pmrun_env(env), stdin=subprocess.DEVNULL,
                stdout=err, stderr=err))
        lines.append(f"{ns} {hosts.addr(i)}:{PORT}")
    svc.agents_file.write_text("\n".join(lines) + "\n")
    for i in range(len(hosts.names)):
        wait_until(lambda i=i: "listening on" in svc.log(i) or svc.procs[i].poll() is not None,
                   30, f"service {i} to listen")
        assert svc.procs[i].poll() is None, svc.log(i)
    return svc


def stop_services(svc: Services) -> None:
    for p in svc.procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in svc.procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with NetnsHosts(3) as hosts:
        svc = start_services(hosts, tmp_path)
        try:
            yield svc
        finally:
            stop_services(svc)
        assert all(p.returncode == 0 for p in svc.procs), [svc.log(i) for i in range(3)]


def assert_no_job_agents(svc: Services) -> None:
    left: dict[str, list[int]] = {}

    def none() -> bool:
        nonlocal left
        left = svc.job_agents()
        return not left

    wait_until(none, 20, "the jobs' agents to leave")
    assert svc.alive(), "a service died"


# --------------------------------------------------------------------- jobs


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_mpich_job_on_three_services_with_fanout_2(services: Services) -> None:
    prog = script(services.dir, "mpi_prog.py", MPI_PROGRAM)
    res = services.run("--fanout", "2", "-n", "6", sys.executable, str(prog))
    assert res.returncode == 0, res.stderr
    assert "sum 15 size 6 netns 3" in res.stdout
    assert_no_job_agents(services)


def test_second_job_after_a_failed_one_and_two_jobs_at_once(services: Services) -> None:
    prog = script(services.dir, "where.py", WHERE)
    failed = services.run("--fanout", "1", "-ppn", "1", "-n", "3", sys.executable, str(prog),
                          "7")
    assert failed.returncode == 7, failed.stderr
    assert "rank 1 (node 1" in failed.stderr
    assert_no_job_agents(services)

    ok = services.run("--fanout", "1", "-ppn", "1", "-n", "3", sys.executable, str(prog))
    assert ok.returncode == 0, ok.stderr
    rows = sorted(line.split() for line in ok.stdout.splitlines())
    assert [r[1] for r in rows] == services.hosts.names
    assert len({r[2] for r in rows}) == 3

    # Two jobs at once on the same services: each has its own agents, KVS and secret.
    argv = pmrun_argv("--agents", str(services.agents_file), "--iface",
                      services.hosts.bridge_addr, "-ppn", "2", "-n", "6", sys.executable,
                      str(prog))
    procs = [subprocess.Popen(argv, cwd=services.dir, env=pmrun_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert len(out.splitlines()) == 6
    assert_no_job_agents(services)


def test_job_agents_leave_at_once_when_many_jobs_end_together(tmp_path: Path) -> None:
    """pmrun's word to its agents (and to the service) is sent before pmrun exits: an
    agent never waits for its parent's silence, nor is it reported as ended badly.  (A
    service on this machine's loopback, where pmrun's exit came first in 1 job in 15.)"""
    keygen(tmp_path / "server")
    keygen(tmp_path / "client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "svc.toml").write_text(f'listen = "127.0.0.1:{port}"\nkey = "server.key"\n'
                                       'allow_root = true\n[clients]\nroot = ["client.pub"]\n')
    (tmp_path / "agents").write_text("client-key = client.key\nserver-key = server.pub\n"
                                     f"localhost 127.0.0.1:{port}\n")
    log = tmp_path / "svc.log"
    with log.open("wb") as err:
        svc = subprocess.Popen([sys.executable, "-m", "pm.agent.main", "serve", "--config",
                                str(tmp_path / "svc.toml")], env=pmrun_env(),
                               stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        wait_until(lambda: "listening on" in log.read_text() or svc.poll() is not None, 30,
                   "the service to listen")
        argv = pmrun_argv("--agents", str(tmp_path / "agents"), "-n", "1", "true")
        for _ in range(8):
            procs = [subprocess.Popen(argv, cwd=tmp_path, env=pmrun_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL) for _ in range(6)]
            for p in procs:
                out, err_text = p.communicate(timeout=60)
                assert (p.returncode, out, err_text) == (0, "", "")

        def agents_left() -> list[int]:
            return [int(pid) for pid in os.listdir("/proc") if pid.isdecimal()
                    and _is_job_agent(int(pid), svc.pid)]

        wait_until(lambda: not agents_left(), 20, "the jobs' agents to leave")
        text = log.read_text(errors="replace")
        assert "from the parent" not in text and "agent ended with" not in text, text
    finally:
        svc.send_signal(signal.SIGTERM)
        try:
            svc.wait(15)
        except subprocess.TimeoutExpired:
            svc.kill()
            svc.wait(5)


def _is_job_agent(pid: int, service: int) -> bool:
    """Whether ``pid`` is a job agent (``pm-agent child``) of the service ``service``."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return b"pm.agent.main" in cmd and b"child" in cmd and ppid == service


def test_a_client_without_a_listed_key_is_refused_and_the_service_keeps_serving(
        services: Services) -> None:
    stranger = services.dir / "stranger"
    keygen(stranger)
    agents = services.dir / "agents-stranger"
    agents.write_text(services.agents_file.read_text().replace("client-key = client.key",
                                                               "client-key = stranger.key"))
    res = services.run("--join-timeout", "10", "-n", "1", "true", agents=agents)
    assert res.returncode == 255, res.stderr
    assert "node 0" in res.stderr and "refused our key" in res.stderr
    wait_until(lambda: "is not allowed" in services.log(0), 10, "the refusal in the log")
    # Bytes that are not even a ZeroMQ greeting: dropped and logged, nothing else.
    with socket.create_connection((services.hosts.addr(0), PORT), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    wait_until(lambda: "refused a connection" in services.log(0), 10,
               "the malformed connection in the log")
    assert services.alive()
    ok = services.run("-ppn", "1", "-n", "3", "true")
    assert ok.returncode == 0, ok.stderr
    assert_no_job_agents(services)


def test_a_killed_job_agent_names_its_node(services: Services) -> None:
    prog = script(services.dir, "sleep.py", """
        import time
        print("ready", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen(pmrun_argv("--agents", str(services.agents_file), "--iface",
                                       services.hosts.bridge_addr, "-ppn", "1", "-n", "3",
                                       sys.executable, str(prog)),
                            cwd=services.dir, env=pmrun_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for _ in range(3):
        assert proc.stdout.readline().startswith("ready")
    victim = services.hosts.names[2]
    agents = services.job_agents()[victim]
    assert len(agents) == 1
    os.kill(agents[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 255, err
    assert f"node 2 ({victim}) lost" in err
    assert_no_job_agents(services)


def test_jobs_as_root_are_refused_unless_allowed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with NetnsHosts(1) as hosts:
        svc = start_services(hosts, tmp_path, allow_root=False)
        try:
            res = svc.run("--join-timeout", "10", "-n", "1", "true")
            assert res.returncode == 255, res.stderr
            assert "refuses to run jobs as root" in res.stderr
            assert svc.alive()
        finally:
            stop_services(svc)


def test_a_root_service_runs_ranks_as_the_user_bound_to_the_key(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        subprocess.run([sys.executable, "-c", "import zmq, msgpack"], user="nobody",
                       env=pmrun_env(), check=True, capture_output=True, timeout=30, cwd="/")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"user nobody cannot run this interpreter with pmrun's modules: {exc}")
    shared = Path(tempfile.mkdtemp(prefix="pm-user-"))
    try:
        shared.chmod(0o755)
        prog = shared / "who.py"
        prog.write_text("import os\nprint(os.environ['PMI_RANK'], os.getuid(), os.getgid(), "
                        "os.environ.get('USER'), flush=True)\n")
        prog.chmod(0o644)
        with NetnsHosts(2) as hosts:
            svc = start_services(hosts, tmp_path, allow_root=False, user="nobody")
            try:
                res = svc.run("-wdir", "/", "-ppn", "1", "-n", "2", sys.executable, str(prog))
                assert res.returncode == 0, res.stderr
                nobody = pwd.getpwnam("nobody")
                rows = sorted(line.split() for line in res.stdout.splitlines())
                assert rows == [[str(r), str(nobody.pw_uid), str(nobody.pw_gid), "nobody"]
                                for r in range(2)]
                assert_no_job_agents(svc)
            finally:
                stop_services(svc)
    finally:
        shutil.rmtree(shared)


ENV_PROBE = """
    import json, os
    agent = f"/proc/{os.getppid()}"
    with open(f"{agent}/environ", "rb") as f:
        agent_env = dict(v.decode().split("=", 1) for v in f.read().split(b"\\0") if v)
    with open(f"{agent}/cmdline", "rb") as f:
        agent_cmd = f.read().decode().split("\\0")
    mine = {k: os.environ.get(k) for k in
            ("SERVICE_ONLY", "SERVICE_PASSED", "USER_GENV", "USER_EXPORTED", "PATH")}
    print(json.dumps({"rank": os.environ["PMI_RANK"], "mine": mine, "agent": agent_env,
                      "agent_cmd": agent_cmd}), flush=True)
"""


def test_job_agents_get_a_fixed_environment_and_ranks_the_users(tmp_path: Path) -> None:
    """A variable of the service's own environment reaches neither the job agents nor the
    ranks; one named in pass_env reaches the agents only; the user's reach the ranks, over
    the agent's session (PATH, HOME, USER, LOGNAME, SHELL: what -genvnone leaves them)."""
    agent_path = "/usr/bin:/bin"
    with NetnsHosts(2) as hosts:
        svc = start_services(hosts, tmp_path,
                             env={"SERVICE_ONLY": "leak", "SERVICE_PASSED": "passed"},
                             config=f'path = "{agent_path}"\npass_env = ["SERVICE_PASS*"]\n')
        try:
            prog = script(svc.dir, "env_probe.py", ENV_PROBE)
            user_env = pmrun_env({"USER_EXPORTED": "exported"})
            assert "SERVICE_ONLY" not in user_env and "SERVICE_PASSED" not in user_env

            def ranks(*opts: str) -> list[dict[str, Any]]:
                res = subprocess.run(
                    pmrun_argv("--agents", str(svc.agents_file), "--iface", hosts.bridge_addr,
                               *opts, "-genv", "USER_GENV", "from-genv", "-ppn", "1", "-n",
                               "2", sys.executable, str(prog)),
                    cwd=svc.dir, env=user_env, capture_output=True, text=True, timeout=60,
                    stdin=subprocess.DEVNULL)
                assert res.returncode == 0, res.stderr
                rows = sorted((json.loads(line) for line in res.stdout.splitlines()),
                              key=lambda r: r["rank"])
                assert [r["rank"] for r in rows] == ["0", "1"]
                return rows

            root = pwd.getpwuid(os.geteuid())
            for row in ranks():
                # The ranks: the user's environment (exported and -genv), none of the service's.
                assert row["mine"] == {"SERVICE_ONLY": None, "SERVICE_PASSED": None,
                                       "USER_GENV": "from-genv", "USER_EXPORTED": "exported",
                                       "PATH": user_env["PATH"]}
                # Their parent, the job agent: the fixed set and pass_env, nothing else.
                assert "pm.agent.main" in row["agent_cmd"] and "child" in row["agent_cmd"]
                agent = dict(row["agent"])
                # The services import pm from the checkout (PYTHONPATH): the agents must too,
                # and get no entry the services' PYTHONPATH does not have.
                pythonpath = agent.pop("PYTHONPATH", "").split(os.pathsep)
                # (and the job it is of, for its lines in the service's log)
                assert agent.pop("PM_SERVICE_JOB", "").startswith(f"{socket.gethostname()}-")
                # (and which of them are the agent's alone, not its ranks')
                assert json.loads(agent.pop("PM_AGENT_ONLY")) == {
                    "PYTHONPATH": None, "SERVICE_PASSED": None}
                assert pythonpath[0] == str(REPO), row["agent"]
                assert set(pythonpath) <= set(pmrun_env()["PYTHONPATH"].split(os.pathsep))
                assert agent == {
                    "PATH": agent_path, "HOME": root.pw_dir, "USER": root.pw_name,
                    "LOGNAME": root.pw_name, "SHELL": root.pw_shell or "/bin/sh",
                    "SERVICE_PASSED": "passed"}
            # -genvnone: the agent's session, none of the user's, nor the agent's own.
            for row in ranks("-genvnone"):
                assert row["mine"] == {"SERVICE_ONLY": None, "SERVICE_PASSED": None,
                                       "USER_GENV": "from-genv", "USER_EXPORTED": None,
                                       "PATH": agent_path}
            assert_no_job_agents(svc)
        finally:
            stop_services(svc)
