"""The service an administrator runs: ``pm-agent serve`` as systemd runs it.

A reload (SIGHUP, the unit's ``ExecReload``) reads the configuration again and
leaves running jobs alone; the configuration is checked strictly (a misspelt
key or ``allow_root = "false"`` is refused in one line); ``pm-agent --version``;
the unit itself (``systemd-analyze verify``, reload, OOM policy, and the guide
naming what each hardening option that also binds ranks does to them).  The
service runs here on 127.0.0.1, as root, serving a key bound to root.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import REPO, pmrun_argv, pmrun_env, wait_until

pytestmark = pytest.mark.timeout(60)

AGENT = [sys.executable, "-m", "pm.agent.main"]
UNIT = REPO / "deploy" / "pm-agent.service"
GUIDE = REPO / "deploy" / "README.md"


def _agent(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], env=pmrun_env(), capture_output=True, text=True,
                          timeout=30, cwd=cwd, stdin=subprocess.DEVNULL)


def test_pm_agent_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    r = _agent("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"pm-agent {version}\n", "")


# ------------------------------------------------------------------ configuration

BAD_CONFIGS = [
    ('allow_root = "false"', "allow_root must be true or false, not the string 'false'"),
    ("allowroot = true", "unknown key 'allowroot' (known: listen, key, iface, ports, "
                         "allow_root, max_agents, python, path, pass_env, clients)"),
    ("max_agents = true", "max_agents must be a whole number from 1, not True"),
    ('max_agents = "8"', "max_agents must be a whole number from 1, not the string '8'"),
    ("max_agents = 0", "max_agents must be a whole number from 1, not 0"),
    ("ports = [7301]", "ports must be [LOW, HIGH], not [7301]"),
    ('listen = "127.0.0.1:http"', "listen must be an address (\"ADDR:PORT\") with a port of "
                                   "0-65535, not '127.0.0.1:http'"),
    ('listen = ":-1"', "listen must be an address (\"ADDR:PORT\") with a port of 0-65535, "
                       "not ':-1'"),
    ("iface = 3", "iface must be an interface name or address, not 3"),
    ("\udcff", "'utf-8' codec can't decode byte 0xff in position 19: invalid start byte"),
    ("[clients]\nalice = 5", "[clients] alice must be a key or a list of keys "
                             "(.pub files or Z85 text), not 5"),
]


@pytest.mark.parametrize(("line", "message"), BAD_CONFIGS,
                         ids=[b[0].split("=")[0].strip() for b in BAD_CONFIGS])
def test_a_bad_configuration_is_one_line_naming_it(tmp_path: Path, line: str,
                                                   message: str) -> None:
    assert _agent("keygen", str(tmp_path / "server")).returncode == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_bytes(f'key = "server.key"\n{line}\n'.encode(errors="surrogateescape"))
    r = _agent("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr == f"pm-agent serve: config {cfg}: {message}\n"
    assert r.stdout == ""


def test_serve_names_a_command_line_slip(tmp_path: Path) -> None:
    assert _agent("keygen", str(tmp_path / "server")).returncode == 0
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('key = "server.key"\n')
    bad.write_text('key = "server.key"\n[clients]\nroot = ["nope.pub"]\n')
    for cfg, args, said in (
            (good, ["--listen", "127.0.0.1:notaport"], "--listen must be an address "
             "(\"ADDR:PORT\") with a port of 0-65535, not '127.0.0.1:notaport'"),
            (bad, [], f"config {bad}: [clients] root: 'nope.pub' is neither a public key nor "
                      "a readable .pub file")):
        r = _agent("serve", "--config", str(cfg), *args)
        assert (r.returncode, r.stderr) == (2, f"pm-agent serve: {said}\n")
    r = _agent("serve")
    assert (r.returncode, r.stderr) == (2, "pm-agent serve: no --config FILE given (the "
                                           "service's configuration: see deploy/pm-agent.toml)\n")


# ------------------------------------------------------------------ reload


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ipv6_missing() -> str | None:
    try:
        _free_port("::1")
    except OSError as exc:
        return f"no IPv6 loopback here: {exc}"
    return None


class Service:
    def __init__(self, tmp: Path, host: str = "127.0.0.1") -> None:
        self.dir = tmp
        for name in ("server", "old", "new"):
            assert _agent("keygen", str(tmp / name)).returncode == 0
        self.host = f"[{host}]" if ":" in host else host
        self.port = _free_port(host)
        self.config = tmp / "agent.toml"
        self.write_config(["old.pub"])
        for name in ("old", "new"):
            (tmp / f"agents-{name}").write_text(
                f"client-key = {name}.key\nserver-key = server.pub\n"
                f"localhost {self.host}:{self.port}\n")
        self.log = tmp / "service.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*AGENT, "serve", "--config", str(self.config)],
                                         env=pmrun_env(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, cwd=tmp)
        wait_until(lambda: "listening on" in self.text() or self.proc.poll() is not None,
                   30, "the service to listen")
        assert self.proc.poll() is None, self.text()

    def write_config(self, keys: list[str], extra: str = "allow_root = true") -> None:
        self.config.write_text(f'listen = "{self.host}:{self.port}"\nkey = "server.key"\n'
                               f"{extra}\n[clients]\nroot = {keys!r}\n".replace("'", '"'))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reload(self, expect: str) -> None:
        before = self.text().count(expect)
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.text().count(expect) > before, 20, f"the service to log {expect}")

    def pmrun(self, who: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            pmrun_argv("--agents", str(self.dir / f"agents-{who}"), "--iface", "127.0.0.1",
                       *args), cwd=self.dir, env=pmrun_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, who: str, *args: str) -> tuple[int, str, str]:
        proc = self.pmrun(who, *args)
        out, err = proc.communicate(timeout=40)
        return proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    try:
        yield svc
    finally:
        svc.close()


def test_a_job_the_agents_file_cannot_serve_is_refused_before_it_starts(service: Service
                                                                          ) -> None:
    code, _, err = service.run("old", "-hosts", "elsewhere", "-n", "1", "true")
    assert (code, err) == (2, f"pmrun: elsewhere: not in the agents file {service.dir}/agents-old "
                              "(a job runs on its services' hosts: localhost)\n")
    (service.dir / "agents-nokey").write_text(
        "client-key = missing.key\nserver-key = server.pub\n"
        f"localhost 127.0.0.1:{service.port}\n")
    code, _, err = service.run("nokey", "-n", "1", "true")
    assert code == 2 and err.startswith(f"pmrun: --agents {service.dir}/agents-nokey: "
                                        f"client-key: key file {service.dir}/missing.key: "), err
    assert err.count("\n") == 1, err
    # A service nobody runs: named as such, within the join timeout.
    (service.dir / "agents-none").write_text(
        f"client-key = old.key\nserver-key = server.pub\nlocalhost 127.0.0.1:{_free_port()}\n")
    code, _out, err = service.run("none", "--join-timeout", "2", "-n", "1", "true")
    assert code == 255 and re.search(r"pmrun: node 0 \(localhost\) lost: pm-agent service at "
                                     r"127\.0\.0\.1:\d+: no answer within 2 s \(not running, "
                                     r"or not reachable\)\n", err), err
    assert "agent -1" not in err and "did not join" not in err


def test_a_service_that_stops_under_a_job_is_named(service: Service) -> None:
    proc = service.pmrun("old", "-n", "1", "sh", "-c", "echo started; sleep 60")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    service.proc.terminate()
    _out, err = proc.communicate(timeout=40)
    assert proc.returncode == 255
    assert err == "pmrun: node 0 (localhost) lost: its pm-agent service stopped while the job " \
                  "ran\n"
    service.proc.wait(timeout=30)
    # Its job agent's own lines in the service's log name the job.
    assert re.search(r"^pmrun: job [\w.-]+: agent 0: ", service.text(), re.M), service.text()


@pytest.mark.skipif(_ipv6_missing() is not None, reason=str(_ipv6_missing()))
def test_a_service_on_ipv6_serves_jobs_and_names_only_strangers(tmp_path: Path) -> None:
    """listen = "[::1]:PORT" and an agents line "host [::1]:PORT"; a client that leaves after
    its job is no refusal in the log, bytes that are no client are one."""
    svc = Service(tmp_path, "::1")
    try:
        assert f"listening on tcp://[::1]:{svc.port}" in svc.text()
        for _ in range(2):
            code, out, err = svc.run("old", "-n", "2", "echo", "ok")
            assert (code, out) == (0, "ok\nok\n"), err
        assert "refused" not in svc.text(), svc.text()
        with socket.create_connection(("::1", svc.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while s.recv(4096):
                    pass
        wait_until(lambda: "refused a connection from" in svc.text(), 10, "the refusal")
        assert "dropped before any request (not a pmrun client" in svc.text(), svc.text()
        assert svc.proc.poll() is None
    finally:
        svc.close()


def test_reload_reads_keys_again_without_touching_a_running_job(service: Service) -> None:
    started, go = service.dir / "started", service.dir / "go"
    waiter = (f"import os, time\nopen({str(started)!r}, 'w').close()\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\nprint('job 1 done')\n")
    job = service.pmrun("old", "-n", "1", sys.executable, "-c", waiter)
    try:
        wait_until(started.exists, 30, "the first job's rank to start")
        # A key the service does not list yet is refused ...
        code, _, err = service.run("new", "-n", "1", "true")
        assert code == 255
        assert "the service refused our key" in err, err
        # ... until the administrator lists it and reloads.
        service.write_config(["old.pub", "new.pub"])
        service.reload("reloaded")
        assert (f"reloaded {service.config}: 2 client keys; 1 job agents running, untouched"
                in service.text())
        code, out, err = service.run("new", "-n", "2", "echo", "hi")
        assert (code, out) == (0, "hi\nhi\n"), err
        # A configuration that cannot be read leaves the running one in place.
        service.write_config(["new.pub"], extra='allow_root = "false"')
        service.reload("reload refused")
        assert re.search(r"reload refused, the running configuration stays: config \S+: "
                         r"allow_root must be true or false, not the string 'false'",
                         service.text())
        code, out, err = service.run("new", "-n", "1", "echo", "still")
        assert (code, out) == (0, "still\n"), err
        # A key a reload removed starts no new job.
        service.write_config(["new.pub"])
        service.reload("reloaded")
        code, _, err = service.run("old", "-n", "1", "true")
        assert code == 255
        assert "the service refused our key" in err, err
        # The first job ran through all of it, and ends as it would have.
        go.touch()
        out, err = job.communicate(timeout=30)
        assert (job.returncode, out) == (0, "job 1 done\n"), err
        assert service.proc.poll() is None
    finally:
        if job.poll() is None:
            job.kill()
        job.communicate(timeout=30)


# ------------------------------------------------------------------ the unit and the guide


def _unit() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            keys[k.strip()] = v.strip()
    return keys


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "with-jobs.conf"])
def test_the_unit_is_valid_for_systemd(tmp_path: Path, drop_in: bool) -> None:
    # verify wants ExecStart's program to exist: /opt/pmrun is not installed here.
    text = UNIT.read_text().replace("/opt/pmrun/bin/pm-agent", "/bin/true")
    if drop_in:  # the drop-in's [Service] lines after the unit's, as systemd reads them
        text = text.replace("[Install]\nWantedBy=multi-user.target\n", "")
        text += (REPO / "deploy" / "pm-agent-jobs.conf").read_text()
    unit = tmp_path / "pm-agent.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_reload_oom_policy_and_stop_as_the_guide_says() -> None:
    unit = _unit()
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["OOMPolicy"] == "continue"
    assert unit["KillMode"] == "mixed"
    guide = GUIDE.read_text()
    assert "systemctl reload pm-agent" in guide
    assert "`OOMPolicy=continue`" in guide
    assert "`systemctl restart pm-agent` (or stop) ends every running job" in guide


def test_every_option_that_binds_ranks_is_documented_and_relaxed_by_the_drop_in() -> None:
    unit = _unit()
    guide = GUIDE.read_text()
    drop_in = (REPO / "deploy" / "pm-agent-jobs.conf").read_text()
    binding = ["NoNewPrivileges", "CapabilityBoundingSet", "RestrictAddressFamilies",
               "RestrictRealtime", "SystemCallArchitectures", "LockPersonality",
               "ProtectControlGroups", "RestrictSUIDSGID"]
    for option in binding:
        assert option in unit, option
        # The guide's table names the option and what it does to ranks.
        assert re.search(rf"^\| `{option}=[^`]*` \| .{{20,}} \|$", guide, re.M), option
        assert re.search(rf"^{option}=", drop_in, re.M), option
