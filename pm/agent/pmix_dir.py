"""The PMIx server's directory: its rendezvous files, held while the process lives.

The server's rendezvous files and directories (:mod:`pm.agent.pmix_server`) live
in one directory per process, ``pm-pmix-<pid>-*`` in the temporary directory,
whose ``.lock`` the process holds with ``flock``.  A sweeper process removes it
when this process ends (SIGKILL included: :func:`sweep_on_exit`);
:func:`cleanup_stale` (run by the next agent and by ``pm-agent --cleanup``)
removes the directories of processes that died without removing theirs.
"""

from __future__ import annotations

import _thread
import fcntl
import os

from pm.agent import topo_share

_PREFIX = "pm-pmix-"
_LOCK = ".lock"

#: This process's directories -> their ``.lock``'s descriptor (the flock held).
_held: dict[str, int] = {}
#: This process's directories -> the write end of their sweeper's pipe.
_pipes: dict[str, int] = {}

#: Removes the directory once the pipe's write end (held by this process) closes,
#: however the process ends; detached, so nobody need reap it.
_SWEEPER = '(read _; rm -rf -- "$0") <&3 >/dev/null 2>&1 &'


def make_dir() -> str:
    """A new directory of this process's, its ``.lock`` held until :func:`remove_dir`."""
    while True:
        path = os.path.join(topo_share.temp_dir(), f"{_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    fd = os.open(os.path.join(path, _LOCK), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held[path] = fd
    return path


def sweep_on_exit(path: str) -> None:
    """Start the sweeper of ``path`` (SIGKILL included), once; on failure the flock'ed
    ``.lock`` still lets :func:`cleanup_stale` tell the directory is orphaned."""
    if path in _pipes:
        return
    from pm.agent.spawn import SpawnError, spawn

    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    # Not our stdout or stderr: whoever reads pmrun's output would wait for the sweeper.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = spawn("/bin/sh", ["pm-pmix-sweep", "-c", _SWEEPER, path], {"PATH": os.defpath},
                    fds={0: null, 1: null, 2: null, 3: rfd}, pgid=0)
    except (SpawnError, OSError) as exc:
        import logging  # (here: pmrun's quick path imports no logging)

        logging.getLogger("pm.agent.pmix").info("no sweeper for %s: %s", path, exc)
        os.close(wfd)
        return
    finally:
        os.close(rfd)
        os.close(null)
    _pipes[path] = wfd
    # Off the start's path: reap the shell (it exits at once, its background part lives
    # on) and sweep what dead processes left.
    _thread.start_new_thread(_reap_and_sweep, (pid,))


def _reap_and_sweep(pid: int) -> None:
    try:  # noqa: SIM105 (the same)
        os.waitpid(pid, 0)
    except OSError:
        pass
    cleanup_stale()


def remove_dir(path: str) -> None:
    """Remove ``path`` (a :func:`make_dir`) and let its lock and its sweeper's pipe go."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    for table in (_held, _pipes):
        fd = table.pop(path, None)
        if fd is not None:
            os.close(fd)


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove the PMIx directories of processes that are gone (their lock is free)."""
    return topo_share.sweep_unlocked(directory or topo_share.temp_dir(),
                                     lambda name: name.startswith(_PREFIX),
                                     lambda path: os.path.join(path, _LOCK), _rmtree, _held)


def _rmtree(path: str) -> bool:
    import shutil  # (here: pmrun's quick path runs this, and rarely removes)

    shutil.rmtree(path, ignore_errors=True)
    return True
