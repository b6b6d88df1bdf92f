"""A real Slurm cluster and real OpenSSH servers on network-namespace hosts.

``RealCluster(n, slurm=True, ssh=True)`` builds on :class:`netns_util.NetnsHosts`
(namespaces ``pm<k>h1 .. pm<k>hN`` on a bridge of their own, ``k`` unique on this
machine) and adds, all under one temporary folder:

* **Slurm** (``slurm=True``): one ``munged`` (its socket is a file, so every
  namespace reaches it), ``slurmctld`` in the root network namespace listening on
  the bridge address only, and one ``slurmd`` per namespace, each in its own UTS
  namespace whose host name is the node name.  Node names are the namespace
  names; :meth:`env` gives ``SLURM_CONF`` for ``srun``/``salloc``/``sbatch``.
* **OpenSSH** (``ssh=True``): one ``sshd`` per namespace with a host key of its
  own, key-only root login, and an ``ssh_config`` (:attr:`ssh_config`) that maps
  each node name to its address (no /etc/hosts, no DNS), pins the host key in a
  known-hosts file and uses a client key: ``ssh -F CONFIG pm<k>h1`` works.
  :attr:`refused_key` is a second key sshd does not accept.

Ports are the cluster's own (derived from ``k``), so concurrent clusters on one
machine do not collide.  ``close()`` (or leaving the ``with`` block) cancels
Slurm jobs, stops every daemon by its pid, removes the namespaces, the veths,
the bridge and the folder; it is idempotent and runs however a test ends.

Why the odd settings are there: see the notes inline.

The processes a job leaves when its parent ends are reaped as a node's init reaps them
(:class:`_Orphans`): the test session is the child subreaper of everything it starts, so
without that they would stay zombies in their job's process group, and slurmstepd, which
waits for that group to empty, would hold the job and then drain the node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netns_util import NetnsHosts, netns_missing

REPO = Path(__file__).resolve().parent.parent
SLURM_BINARIES = ("slurmctld", "slurmd", "srun", "salloc", "sbatch", "scontrol", "sinfo",
                  "squeue", "scancel", "munged", "mungekey")
SSH_BINARIES = ("sshd", "ssh", "ssh-keygen")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def realcluster_missing(slurm: bool = True, ssh: bool = True) -> str | None:
    """Why a real cluster cannot be made here (``None`` when it can)."""
    why = netns_missing()
    if why:
        return why
    need = (SLURM_BINARIES if slurm else ()) + (SSH_BINARIES if ssh else ())
    missing = [b for b in need if _which(b) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client " \
               "munge openssh-server openssh-client)"
    return None


CPUSET = Path("/sys/fs/cgroup/cpuset")


def cpuset_missing() -> str | None:
    """Why Slurm cannot confine steps with cgroup v1 cpusets here (``None`` when it can)."""
    if not (CPUSET / "cpuset.cpus").exists():
        return "no cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset"
    if not os.access(CPUSET, os.W_OK):
        return "the cpuset hierarchy is read-only"
    return None


def _run(argv: list[str], env: Mapping[str, str] | None = None, check: bool = True,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout,
                          env=dict(env) if env is not None else None,
                          stdin=subprocess.DEVNULL)


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):  # (empty: being written)
        return int(path.read_text().split()[0])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _wait(pred: object, timeout: float, what: str, poll: float = 0.02) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


SSHD_CONFIG = """\
Port 22
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
# Our folder lives in /tmp, whose modes fail sshd's strict check.
StrictModes no
AuthorizedKeysFile {dir}/authorized_keys
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding yes
MaxStartups 200
MaxSessions 200
{setenv}"""


class _Orphans:
    """Reaps the zombies that came to us as orphans from the hosts' jobs, every
    ``poll`` seconds, until :meth:`stop`.

    Those are processes of a job whose parent ended first (the rank of a killed agent, a
    step's own forks).  A process we started ourselves is never taken: it is in our session
    or leads its own (``start_new_session``); an orphan of a job is in its job's session,
    which some other process leads; and slurmstepd, which forks itself away from slurmd."""

    def __init__(self, poll: float = 0.2) -> None:
        import threading

        self._me = os.getpid()
        self._sid = os.getsid(0)
        self._stop = threading.Event()
        self._poll = poll
        self._thread = threading.Thread(target=self._run, name="orphan reaper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self.reap()

    def reap(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{entry.name}/stat").read_text()
                comm = text[text.index("(") + 1:text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                # (state, ppid, pgrp, session: fields 3 to 6 of proc(5)'s stat)
                state, ppid, sid = fields[0], int(fields[1]), int(fields[3])
                pid = int(entry.name)
                if state == "Z" and ppid == self._me and (
                        sid not in (self._sid, pid) or comm == "slurmstepd"):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class RealCluster:
    """``n`` namespace hosts with Slurm and/or sshd (see the module docstring)."""

    def __init__(self, n: int, *, slurm: bool = True, ssh: bool = True, cpus: int = 4,
                 cgroup: bool = False, pythonpath: str | None = str(REPO)) -> None:
        """``pythonpath``: what every ssh session's ``PYTHONPATH`` is (by default this
        checkout: remote agents import pmrun from it; a real cluster installs it); ``None``:
        none is set (pmrun runs from an install)."""
        self.n = n
        self.pythonpath = pythonpath
        self.cpus = cpus
        self.cgroup = cgroup
        self.hosts = NetnsHosts(n)
        self.names = self.hosts.names
        self.k = self.hosts.k
        self.dir = Path(tempfile.mkdtemp(prefix=f"pmcluster{self.k}-"))
        self.dir.chmod(0o755)
        self._pids: list[tuple[str, int]] = []   # (what, pid) of every daemon we started
        self._pidfiles: list[Path] = []
        self.with_slurm = slurm
        self.with_ssh = ssh
        self.ssh_config = self.dir / "ssh" / "config"
        self.ssh_wrapper = self.dir / "ssh" / "ssh-wrapper"
        self.refused_key = self.dir / "ssh" / "refused_key"
        self._orphans = _Orphans()
        try:
            if slurm:
                self._start_slurm()
            if ssh:
                self._start_sshds()
            if slurm:
                self._wait_slurm_ready()
            if ssh:
                self._wait_sshds_ready()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ facts
    @property
    def bridge(self) -> str:
        return self.hosts.bridge

    @property
    def bridge_addr(self) -> str:
        return self.hosts.bridge_addr

    @property
    def nodelist(self) -> str:
        return f"pm{self.k}h[1-{self.n}]"

    @property
    def ctld_port(self) -> int:
        return 16000 + 2 * self.k

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Our environment plus ``SLURM_CONF`` of this cluster (no other ``SLURM_*``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.dir / "slurm.conf")
        if extra:
            env.update(extra)
        return env

    def ssh_command(self) -> str:
        """The ``--ssh`` value that reaches these hosts by name."""
        return f"ssh -F {self.ssh_config}"

    # ------------------------------------------------------------------ Slurm
    def _start_slurm(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log", "munge", "run"):
            (d / sub).mkdir()
        # munged checks that every directory up to its socket is reachable by all.
        (d / "munge").chmod(0o755)
        key = d / "munge" / "munge.key"
        _run([_which("mungekey") or "mungekey", "-c", "-b", "1024", "-k", str(key)])
        key.chmod(0o400)
        sock = d / "munge" / "munge.socket"
        pidfile = d / "run" / "munged.pid"
        _run([_which("munged") or "munged", f"--socket={sock}", f"--key-file={key}",
              f"--pid-file={pidfile}", f"--log-file={d / 'log' / 'munged.log'}",
              f"--seed-file={d / 'munge' / 'seed'}", "--force"])
        self._pidfiles.append(pidfile)
        _wait(lambda: _read_pid(pidfile) is not None and sock.exists(), 10, "munged")
        self._write_slurm_conf(sock)
        conf = d / "slurm.conf"
        env = self.env()
        # slurmctld listens on the bridge address only, and must believe that is its
        # host name (a name resolving to 127.0.0.1 makes it unreachable from the nodes).
        with open(d / "log" / "slurmctld.out", "wb") as err:
            ctld = subprocess.Popen(
                ["unshare", "--uts", "sh", "-c",
                 f"hostname {self.bridge_addr} && exec slurmctld -D -c -f {conf}"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self._pids.append(("slurmctld", ctld.pid))
        self._procs = [ctld]
        for name in self.names:
            self._start_slurmd(name)

    def _start_slurmd(self, name: str) -> None:
        conf = self.dir / "slurm.conf"
        # Without a host name of its own slurmd cannot tell which node it is.
        # With cgroups, nsenter keeps this machine's /sys (ip netns exec mounts a fresh
        # one, without the cgroup hierarchies).
        enter = ["nsenter", f"--net=/run/netns/{name}"] if self.cgroup else \
            ["ip", "netns", "exec", name]
        with open(self.dir / "log" / f"slurmd.{name}.out", "ab") as err:
            p = subprocess.Popen(
                [*enter, "unshare", "--uts", "sh", "-c",
                 f"hostname {name} && exec slurmd -D -f {conf} -N {name}"],
                env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err)
        self._pids.append((f"slurmd {name}", p.pid))
        self._procs.append(p)

    def restart_slurmd(self, i: int) -> None:
        """Start host ``i``'s slurmd again (after :meth:`kill_node`) and wait until every
        node is idle and the queue empty."""
        name = self.names[i]
        self._pids = [(w, p) for w, p in self._pids if w != f"slurmd {name}"]
        self._start_slurmd(name)
        self._run_quiet(["scontrol", "update", f"nodename={name}", "state=resume"])
        self.wait_queue_empty(60)
        self._wait_slurm_ready()

    def _run_quiet(self, argv: list[str]) -> None:
        _run(argv, self.env(), check=False)

    def _write_slurm_conf(self, sock: Path) -> None:
        d = self.dir
        nodes = "\n".join(
            f"NodeName={name} NodeAddr={self.hosts.addr(i)} CPUs={self.cpus} "
            f"RealMemory=1000 State=UNKNOWN" for i, name in enumerate(self.names))
        (d / "slurm.conf").write_text(f"""\
ClusterName=pm{self.k}
SlurmctldHost={self.bridge_addr}
CommunicationParameters=NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.ctld_port + 1}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.%n.log
ProctrackType=proctrack/pgid
TaskPlugin={"task/cgroup,task/affinity" if self.cgroup else "task/none"}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
# Heterogeneous jobs start only in a backfill pass: one a second, not every 30 s.
SchedulerParameters=bf_interval=1
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
TmpFS={d}/state/%n/tmp
KillWait=2
MinJobAge=2
InactiveLimit=0
SlurmdTimeout=30
MessageTimeout=10
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        # ip netns exec mounts a fresh /sys without the cgroup mounts: cgroup/v1 loads
        # without touching the file system (nothing here uses cgroups).
        (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n" + (
            "CgroupMountpoint=/sys/fs/cgroup\nConstrainCores=yes\n" if self.cgroup else ""))
        for name in self.names:
            (d / "state" / name / "tmp").mkdir(parents=True)

    def _wait_slurm_ready(self) -> None:
        env = self.env()

        def ready() -> bool:
            for what, pid in self._pids:
                if not _alive(pid):
                    raise RuntimeError(f"{what} exited: see {self.dir / 'log'}")
            res = _run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], env, check=False)
            return res.returncode == 0 and set(res.stdout.split()) == set(self.names)

        _wait(ready, 30, "Slurm nodes to be idle", poll=0.05)

    def slurm_pids(self) -> dict[str, int]:
        """``{"slurmctld": pid, "slurmd pm7h1": pid, ...}`` of the daemons still running."""
        return {what: pid for what, pid in self._pids if what.startswith("slurm")
                and _alive(pid)}

    def run(self, argv: list[str], extra: Mapping[str, str] | None = None, timeout: float = 60,
            **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (or anything) with this cluster's environment."""
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env(extra), **kw)  # type: ignore[call-overload, no-any-return]

    def queue(self) -> list[str]:
        res = _run(["squeue", "-h", "-o", "%i %T"], self.env(), check=False)
        return res.stdout.split("\n") if res.stdout.strip() else []

    def wait_queue_empty(self, timeout: float = 30) -> None:
        _wait(lambda: not self.queue(), timeout, "an empty Slurm queue", poll=0.1)

    # ------------------------------------------------------------------ sshd
    def _start_sshds(self) -> None:
        s = self.dir / "ssh"
        s.mkdir()
        Path("/run/sshd").mkdir(exist_ok=True)
        keygen = _which("ssh-keygen") or "ssh-keygen"
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(s / "host_key")])
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(s / "id_ed25519")])
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.refused_key)])
        (s / "authorized_keys").write_text((s / "id_ed25519.pub").read_text())
        host_pub = (s / "host_key.pub").read_text().split()
        pattern = f"pm{self.k}h*,10.213.{self.k}.*"
        (s / "known_hosts").write_text(f"{pattern} {host_pub[0]} {host_pub[1]}\n")
        # Remote agents import pmrun from this checkout unless told otherwise.
        # X11 forwarding's cookies go to a file of ours, not the home directory's.
        setenv = f"SetEnv XAUTHORITY={s}/xauthority" + (
            f" PYTHONPATH={self.pythonpath}" if self.pythonpath else "") + "\n"
        (s / "sshd_config").write_text(SSHD_CONFIG.format(dir=s, setenv=setenv))
        hosts = "\n".join(f"Host {name}\n    HostName {self.hosts.addr(i)}"
                          for i, name in enumerate(self.names))
        self.ssh_config.write_text(f"""\
{hosts}

Host pm{self.k}h* 10.213.{self.k}.*
    User root
    IdentityFile {s / 'id_ed25519'}
    IdentitiesOnly yes
    UserKnownHostsFile {s / 'known_hosts'}
    StrictHostKeyChecking yes
    CheckHostIP no
    BatchMode yes
    GSSAPIAuthentication no
    ConnectTimeout 10
    LogLevel ERROR
""")
        # Hydra's -launcher-exec takes one executable, no arguments.
        self.ssh_wrapper.write_text(f'#!/bin/sh\nexec ssh -F {self.ssh_config} "$@"\n')
        self.ssh_wrapper.chmod(0o755)
        sshd = _which("sshd") or "/usr/sbin/sshd"
        for i, name in enumerate(self.names):
            pidfile = self.dir / "run" / f"sshd.{name}.pid"
            (self.dir / "run").mkdir(exist_ok=True)
            _run(["ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c",
                  f"hostname {name} && exec {sshd} -f {s / 'sshd_config'} "
                  f"-h {s / 'host_key'} -o ListenAddress={self.hosts.addr(i)} "
                  f"-o PidFile={pidfile} -E {self.dir / f'sshd.{name}.log'}"])
            self._pidfiles.append(pidfile)

    def ssh_config_variant(self, name: str, *, identity: Path | None = None,
                           wrong_host_key: bool = False) -> Path:
        """Another ssh_config for these hosts: a different client key (``identity``), or a
        known-hosts file that pins the wrong host key (``wrong_host_key``)."""
        s = self.dir / "ssh"
        text = self.ssh_config.read_text()
        if identity is not None:
            text = text.replace(f"IdentityFile {s / 'id_ed25519'}", f"IdentityFile {identity}")
        if wrong_host_key:
            wrong = (self.refused_key.with_suffix(".pub")).read_text().split()
            known = s / f"known_hosts.{name}"
            known.write_text(f"pm{self.k}h*,10.213.{self.k}.* {wrong[0]} {wrong[1]}\n")
            text = text.replace(f"UserKnownHostsFile {s / 'known_hosts'}",
                                f"UserKnownHostsFile {known}")
        path = s / f"config.{name}"
        path.write_text(text)
        return path

    def _wait_sshds_ready(self) -> None:
        files = [p for p in self._pidfiles if "sshd" in p.name]
        _wait(lambda: all(_read_pid(p) is not None for p in files), 10, "sshd pid files")

    def ssh(self, host: str, command: str, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
        return _run(["ssh", "-F", str(self.ssh_config), host, command], check=False,
                    timeout=timeout)

    def daemon_pids(self) -> set[int]:
        """Pids of the daemons themselves (what may stay in the namespaces between jobs)."""
        pids = {pid for _, pid in self._pids}
        pids |= {p for f in self._pidfiles if (p := _read_pid(f)) is not None}
        return pids

    def leftovers(self) -> dict[str, list[str]]:
        """What runs in the namespaces besides the daemons (a job's agents, ranks, ssh
        sessions, Slurm steps)."""
        keep = self.daemon_pids()
        out: dict[str, list[str]] = {}
        for ns in self.names:
            for pid in self.hosts.pids(ns):
                if pid in keep:
                    continue
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] \
                            != "Z":
                        out.setdefault(ns, []).append(f"{pid}: {cmd.decode(errors='replace')}")
        return out

    def wait_clean(self, timeout: float = 20) -> dict[str, list[str]]:
        """Poll until nothing but the daemons runs in the namespaces; what is left."""
        deadline = time.monotonic() + timeout
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.leftovers()
        return left

    def sshd_log(self, i: int) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / f"sshd.{self.names[i]}.log").read_text()
        return ""

    # ------------------------------------------------------------------ faults
    def kill_node(self, i: int) -> None:
        """Host ``i`` (0-based) dies: every process in its namespace gets SIGKILL."""
        for pid in self.hosts.pids(self.names[i]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ ending
    def close(self) -> None:
        """Cancel jobs, stop the daemons, remove namespaces and files. Idempotent."""
        if self.with_slurm and (self.dir / "slurm.conf").exists() and self.slurm_pids():
            env = self.env()
            _run(["scancel", "--full", "--partition=debug"], env, check=False)
            # slurmstepd ignores SIGTERM: wait until Slurm itself ended the steps.
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.wait_queue_empty(15)
        pids = [pid for _, pid in self._pids]
        pids += [p for f in self._pidfiles if (p := _read_pid(f)) is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(RuntimeError):
            _wait(lambda: not any(_alive(p) for p in pids), 5, "daemons to exit")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # A daemon (munged, sshd) may have become our child (a subreaper up the
            # tree): reap it rather than leave a zombie.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        for p in getattr(self, "_procs", []):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self._pids.clear()
        self._pidfiles.clear()
        _reap_daemon_zombies()
        self.hosts.close()  # kills whatever still runs in the namespaces
        self._orphans.stop()
        self._orphans.reap()
        if self.cgroup:
            self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        """slurmd's cpusets (``slurm_<node>/uid_*/job_*/step_*``), deepest first."""
        for name in self.names:
            top = CPUSET / f"slurm_{name}"
            if not top.exists():
                continue
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()

    def __enter__(self) -> RealCluster:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _reap_daemon_zombies() -> None:
    """Reap our zombie children that were the daemons' own forks (munged and sshd fork to
    daemonize; under a child subreaper those forks end up ours)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            comm = text[text.index("(") + 1:text.rindex(")")]
            state, ppid = text.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == me and state == "Z" and comm in ("munged", "sshd", "slurmctld",
                                                              "slurmd"):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(stat.parent.name), os.WNOHANG)


@contextlib.contextmanager
def real_cluster(n: int, **kw: bool) -> Iterator[RealCluster]:
    cluster = RealCluster(n, **kw)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.close()


if __name__ == "__main__":  # python tests/realcluster_util.py N: bring up, wait for Enter
    with real_cluster(int(sys.argv[1]) if len(sys.argv) > 1 else 3) as c:
        print(f"export SLURM_CONF={c.dir / 'slurm.conf'}  # ssh -F {c.ssh_config} {c.names[0]}")
        print(" ".join(c.names), c.bridge_addr)
        sys.stdin.readline()
