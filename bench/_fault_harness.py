"""One run of a fault case: start pmrun, do the harm, and take the measures.

Each run gets a token in pmrun's environment (``PM_FAULTS_TOKEN``) that its
agents and ranks inherit: whatever carries it once pmrun has ended (after a
grace of :data:`SETTLE` seconds) is a leftover, listed and killed.  Files: new
entries of ``/dev/shm`` that no live process maps or holds, and new pmrun
entries of ``/tmp``, still there once the run's processes are gone (within
half that grace: guardians remove files a moment after pmrun ends).  pmrun's peak RSS comes
from ``wait4``.  A run that outlives its deadline is a hang: its process group
is killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench._util import ROOT

sys.path.insert(0, str(ROOT))

import contextlib

from pm.agent.shm_reaper import busy_inodes

TOKEN_ENV = "PM_FAULTS_TOKEN"
#: Seconds a run's processes get to go after pmrun ended before they count as left over.
SETTLE = 10.0
RANK = ROOT / "bench" / "_fault_rank.py"
#: What pmrun and this harness put in /tmp (topology copies, PMIx server folders, go-files).
PMRUN_TMP = ("pm-topo-", "pm-pmix-", "pmfault-")


@dataclass
class Run:
    """What one run did."""

    rc: int | None = None
    hung: bool = False
    out: str = ""
    err: str = ""
    peak_kb: int = 0
    agent_peak_kb: int = 0
    leftovers: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def pmrun_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pm", *args]


def rank_argv(*args: str) -> list[str]:
    return [sys.executable, str(RANK), *args]


def base_env(token: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[TOKEN_ENV] = token
    env.pop("MPIEXEC_TIMEOUT", None)
    if extra:
        env.update(extra)
    return env


def _names(path: str) -> dict[str, int]:
    try:
        with os.scandir(path) as it:
            return {e.name: e.inode() for e in it}
    except OSError:
        return {}


def carrying(token: str) -> list[int]:
    """Live processes whose environment holds ``token`` (not zombies, not us)."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry.name}/environ").read_bytes():
                continue
            if not Path(f"/proc/{entry.name}/cmdline").read_bytes():
                continue  # a zombie
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def _describe(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{pid}: ?"
    return f"{pid}: " + raw.replace(b"\0", b" ").decode(errors="replace")[:120]


class Lines:
    """A pipe read line by line in a thread; :meth:`wait_for` a pattern with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                self.lines.append(raw.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, count: int, timeout: float) -> list[re.Match[str]]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in map(rx.match, self.lines) if m]
                if len(got) >= count or self._done:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    return got
                self._cond.wait(left)

    def text(self, timeout: float = 5.0) -> str:
        self._thread.join(timeout)
        with self._cond:
            return "".join(self.lines)


def run(argv: Sequence[str], *, timeout: float = 90.0, env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL, action: Callable[[subprocess.Popen[bytes], Lines,
                                                            Run], None] | None = None,
        stdout: Any = subprocess.PIPE, cwd: str = "/tmp", settle: float = SETTLE) -> Run:
    """One run of ``argv`` (pmrun); ``action(proc, stdout_lines, run)`` does the harm."""
    token = uuid.uuid4().hex
    res = Run()
    shm_before, tmp_before = _names("/dev/shm"), _names("/tmp")
    t0 = time.monotonic()
    proc = subprocess.Popen(list(argv), env=base_env(token, env), stdin=stdin, stdout=stdout,
                            stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
    out = Lines(proc.stdout) if proc.stdout is not None else None
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    waited: dict[str, Any] = {}

    def reap() -> None:
        _, status, usage = os.wait4(proc.pid, 0)
        waited["status"], waited["usage"] = status, usage

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()

    mapped: set[str] = set()  # /dev/shm files the run's processes mapped

    def sample() -> None:
        # pmrun's peak RSS: its VmHWM, read until it ends (wait4's ru_maxrss would count
        # its ranks); pmrun itself, or pmrun under the shell of a pipeline.  The agents'
        # (a walk of the tree) every fourth time.  From the start: a harm may end pmrun.
        polls = 0
        while reaper.is_alive():
            res.peak_kb = max([res.peak_kb, hwm_kb(proc.pid),
                               *map(hwm_kb, filter(is_pmrun, children(proc.pid)))])
            if polls % 4 == 0:
                desc = descendants(proc.pid)
                res.agent_peak_kb = max([res.agent_peak_kb, *map(
                    hwm_kb, filter(is_agent, desc))])
                for p in desc:
                    mapped.update(shm_mapped(p))
            polls += 1
            reaper.join(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if action is not None and out is not None:
            action(proc, out, res)
    except Exception as exc:  # the harm could not be done: say so in the run
        res.extra["action_error"] = repr(exc)
    reaper.join(max(0.0, t0 + timeout - time.monotonic()))
    if reaper.is_alive():
        res.hung = True
        with_pg = os.getpgid(proc.pid) if _alive(proc.pid) else None
        if with_pg is not None:
            os.killpg(with_pg, signal.SIGKILL)
        reaper.join(10)
    sampler.join(5)
    res.seconds = time.monotonic() - t0
    if "status" in waited:
        res.rc = os.waitstatus_to_exitcode(waited["status"])
    proc.returncode = res.rc if res.rc is not None else -1  # reaped above, not by Popen
    res.out = out.text() if out is not None else ""
    res.err = err.text()
    # Leftovers: what still carries the token once the run had time to end.
    deadline = time.monotonic() + settle
    left = carrying(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc against a deadline
        left = carrying(token)
    res.leftovers = [_describe(p) for p in left]
    for p in left:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    # A job's files may go a moment after pmrun (the ranks' guardians remove what their
    # agents named to them): poll them against the same grace.
    res.files = new_files(shm_before, tmp_before)
    deadline = time.monotonic() + settle / 2
    while res.files and time.monotonic() < deadline:
        time.sleep(0.1)
        res.files = [f for f in new_files(shm_before, tmp_before) if f in res.files]
    # On a shared machine other jobs' segments come and go meanwhile: a /dev/shm file
    # none of this run's processes was seen mapping is kept apart (counted, not blamed).
    others = [f for f in res.files if f.startswith("/dev/shm/") and f not in mapped]
    if others:
        res.extra["others_files"] = others
        res.files = [f for f in res.files if f not in others]
    return res


def shm_mapped(pid: int) -> set[str]:
    """The /dev/shm files ``pid`` maps now."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            data = f.read()
    except OSError:
        return set()
    out = set()
    for line in data.splitlines():
        i = line.find(b" /dev/shm/")
        if i >= 0:
            out.add(line[i + 1:].decode(errors="replace").removesuffix(" (deleted)"))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def new_files(shm_before: dict[str, int], tmp_before: dict[str, int]) -> list[str]:
    """New /dev/shm entries nobody maps or holds; new pmrun entries (``pm*``) of /tmp."""
    shm_now = _names("/dev/shm")
    fresh = {n: i for n, i in shm_now.items() if shm_before.get(n) != i}
    left = []
    if fresh:
        busy = busy_inodes()
        left += [f"/dev/shm/{n}" for n, i in fresh.items() if i not in busy]
    tmp_now = _names("/tmp")
    fresh_tmp = [n for n, i in tmp_now.items()
                 if n.startswith(PMRUN_TMP) and tmp_before.get(n) != i]
    if fresh_tmp:
        held = _held_paths("/tmp/")
        left += [f"/tmp/{n}" for n in fresh_tmp
                 if f"/tmp/{n}" not in held and not _owner_alive(n)]
    return left


_PID_IN_NAME = re.compile(r"^pm[-\w]*?-(?:[\w.]+-)?(\d+)-")


def _owner_alive(name: str) -> bool:
    """pmrun's /tmp names carry the pid of the pmrun that made them (``pm-topo-HOST-PID-…``,
    ``pm-pmix-PID-…``): another job's, still running, is not a leftover."""
    m = _PID_IN_NAME.match(name)
    return m is not None and _alive(int(m[1]))


def _held_paths(prefix: str) -> set[str]:
    held: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{entry.name}/fd/{fd}")
            except OSError:
                continue
            if link.startswith(prefix):
                held.add(link)
    return held


def listening_ports(pids: Sequence[int]) -> list[int]:
    """TCP ports the processes ``pids`` listen on (their sockets in /proc/net/tcp)."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[9]) in inodes:  # LISTEN
                ports.append(int(f[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def is_pmrun(pid: int) -> bool:
    """``python -m pm …`` (not an agent, not a rank)."""
    try:
        return b"\0-m\0pm\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def is_agent(pid: int) -> bool:
    try:
        return b"pm.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        for c in children(stack.pop()):
            out.append(c)
            stack.append(c)
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS:")


def hwm_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM:")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
