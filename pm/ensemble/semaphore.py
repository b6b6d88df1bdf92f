"""GNU parallel's ``sem`` (``parallel --semaphore``): at most N commands of one name at once.

``pmrun --semaphore -j 4 CMD`` waits for one of the 4 slots of the semaphore (its
name: ``--id NAME``, else the terminal's, as parallel's), then runs ``CMD`` in the
background holding it and returns at once; ``--fg`` runs it in the foreground and
returns its exit status; ``--wait`` waits until no command holds a slot of the
name.  ``--semaphore-timeout N`` (``--st``): after N seconds run anyway, or with
-N give up (exit status 1).  A background command's output is printed whole once
it ends (stdout, then stderr), as parallel groups a job's, so that commands
started in a loop never mix their lines; it reads /dev/null (the foreground one
reads pmrun's stdin).

A slot is a lock (``flock``) on the file ``slot.K`` of the name's directory
(``$XDG_RUNTIME_DIR/pmrun-sem``, else ``~/.pmrun/semaphores``): the kernel lets
go of it however its holder ends, SIGKILL included, so a crashed command never
keeps a slot.  A holder removes its file before it lets go (a waiter that had
the old file open sees it is no longer the one the name holds and tries again),
and the last one the directory, so an idle semaphore leaves nothing behind (but the
empty file of a holder killed by SIGKILL, until the name is used again).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from urllib.parse import quote

from pm.agent.memory import tree_pids
from pm.proto.errors import UsageError

#: Longest pause between two looks at the slots (they start at 1 ms and grow).
MAX_PAUSE = 0.1


def home() -> str:
    """Where semaphores live: per user, in memory where the system offers it."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, "pmrun-sem")
    return os.path.join(os.path.expanduser("~"), ".pmrun", "semaphores")


def default_name() -> str:
    """The terminal's name (GNU parallel's default id), or ``notty``."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.ttyname(fd)
    return "notty"


class Slot:
    """A slot held: its file, locked through ``fd``."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        """Remove the slot's file, then let go of it (and the directory, if empty)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        folder = os.path.dirname(self.path)
        with contextlib.suppress(OSError):  # (up to the first that holds something else)
            os.rmdir(folder)
            os.rmdir(os.path.dirname(folder))
            if os.path.basename(os.path.dirname(folder)) == "semaphores":
                os.rmdir(os.path.dirname(os.path.dirname(folder)))


def _try_slot(folder: str, k: int) -> Slot | None:
    path = os.path.join(folder, f"slot.{k}")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # the directory went meanwhile (its last holder left)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = os.fstat(fd)
        now = os.stat(path)  # still the file the name holds (not one its holder removed)?
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return Slot(path, fd)
    except OSError:
        pass
    os.close(fd)
    return None


def acquire(folder: str, slots: int, timeout: float = 0.0) -> Slot | None:
    """One of the first ``slots`` slots of ``folder``, once one is free.  ``timeout`` > 0:
    after that many seconds None (run without one); < 0: :class:`TimeoutError`."""
    start = time.monotonic()
    pause = 0.001
    while True:
        for k in random.sample(range(slots), slots):  # (waiters spread over the slots)
            slot = _try_slot(folder, k)
            if slot is not None:
                return slot
        if timeout and time.monotonic() - start > abs(timeout):
            if timeout < 0:
                raise TimeoutError
            return None
        time.sleep(pause * random.random())
        pause = min(pause * 1.5, MAX_PAUSE)


def wait_idle(folder: str) -> None:
    """Return once no slot of ``folder`` is held (GNU parallel's ``sem --wait``)."""
    pause = 0.001
    while True:
        try:
            names = [n for n in os.listdir(folder) if n.startswith("slot.")]
        except FileNotFoundError:
            return
        busy = False
        for name in names:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                busy = True
            finally:
                os.close(fd)
            if busy:
                break
        if not busy:
            return
        time.sleep(pause * random.random())
        pause = min(pause * 1.5, MAX_PAUSE)


class _Stopped(Exception):
    """A signal that ends pmrun (Ctrl-C, SIGTERM, SIGHUP) reached it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _command(line: str, grouped: bool) -> int:
    """Run ``line`` (``grouped``: its output held, then written whole, stdout then stderr;
    its stdin /dev/null); a signal that ends pmrun is passed on to its processes, which are
    waited for."""
    with contextlib.ExitStack() as stack:
        out = err = None
        if grouped:
            out = stack.enter_context(tempfile.TemporaryFile())
            err = stack.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(["/bin/sh", "-c", line], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL if grouped else None)
        code: int | None = None
        while code is None:
            try:
                code = proc.wait()
            except _Stopped as stop:  # (to every process of the command: sh may not exec)
                for pid in tree_pids(proc.pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, stop.signum)
        for held, fd in ((out, 1), (err, 2)):
            if held is None:
                continue
            held.seek(0)
            while chunk := held.read(65536):
                with contextlib.suppress(OSError):
                    os.write(fd, chunk)
    return code if code >= 0 else 128 - code


def run(values: Mapping[str, object]) -> int:
    """``pmrun --semaphore ...`` (see the module docstring); the exit status."""
    from pm.quick import noted_signals

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        for signum in noted_signals():  # (what reached pmrun while it imported)
            raise _Stopped(signum)
        return _run(values)
    except _Stopped as stop:  # while waiting for a slot (the slot's holder lets it go)
        return 128 + stop.signum


def _run(values: Mapping[str, object]) -> int:
    from pm.ensemble.domain import cpu_slots, local_cores
    from pm.options import jobs_value

    name = str(values.get("sem_id") or default_name())
    folder = os.path.join(home(), quote(name, safe=""))
    if values.get("sem_wait"):
        wait_idle(folder)
        if "semaphore_line" not in values:
            return 0
    given = str(values.get("jobs", "1"))
    jobs = jobs_value(given)
    slots = cpu_slots(jobs, local_cores()) if isinstance(jobs, str) else int(jobs or 0)
    if slots < 1 and jobs != 0:
        raise UsageError(f"-j {given} leaves no slot for the semaphore")
    line = str(values["semaphore_line"])
    timeout = float(values.get("sem_timeout", 0.0))  # type: ignore[arg-type]
    try:
        slot = acquire(folder, slots, timeout) if slots else None  # (-j 0: no limit)
    except TimeoutError:
        sys.stderr.write(f"pmrun: semaphore {name}: no slot free after {-timeout:g} s\n")
        return 1
    if slot is None and slots:
        sys.stderr.write(f"pmrun: semaphore {name}: no slot free after {timeout:g} s: "
                         "running without one\n")
    if values.get("sem_fg"):
        try:
            return _command(line, grouped=False)
        finally:
            if slot is not None:
                slot.release()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork():  # the caller goes on at once; the child holds the slot (its lock is ours)
        if slot is not None:
            os.close(slot.fd)
        return 0
    code = 1
    try:  # (the child never returns into the caller's code)
        code = _command(line, grouped=True)
    except _Stopped as stop:  # before the command started
        code = 128 + stop.signum
    except Exception as exc:  # the command could not start: said, as the caller would
        os.write(2, f"pmrun: semaphore {name}: {exc}\n".encode())
    finally:
        if slot is not None:
            slot.release()
        os._exit(code)
