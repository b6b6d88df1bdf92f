"""Nothing of a job stays in ``/dev/shm``: the segments its ranks created go with it.

MPI libraries put their intra-node segments in ``/dev/shm`` (MPICH
``mpich_shm_*``, Open MPI ``sm_segment.*`` / ``vader_segment.*``, Intel MPI
``shm-col-space-*``) and remove them in ``MPI_Finalize``; a rank that dies
first leaves them behind, megabytes of RAM each, for ever.  pmrun does not
give each job a private ``/dev/shm`` (that needs a mount namespace, which an
unprivileged agent cannot make without a user namespace, and the ranks must
still reach the node's shared-memory KVS and topology files).  Instead the
agent follows what the ranks map:

* :class:`ShmReaper` notes the inodes already in ``/dev/shm`` when the job's
  ranks start, reads the ranks' ``/proc/PID/maps`` now and then (at a rank's
  first collectives, where MPI_Init makes its segments, every few seconds,
  when a rank fails, before a kill) and remembers every new file under
  ``/dev/shm`` they map, and names it to the ranks' guardian
  (``pm.agent.spawn.Guardian.note``), which removes it if the agent dies;
* when the job ends on the node (however it ends), every such file, and
  every new file named like an MPI library's segment (a rank killed before
  it was sampled), is removed unless a live process still maps or holds it.

An agent killed by SIGKILL cannot do that: its guardian removes the files
named to it; what was not sampled yet, :func:`sweep_node`, run by every
agent when its job ends and by ``pm-agent serve`` when it starts, removes
MPI segments nobody maps or holds any more (older than a few seconds, so a
segment being created is never taken), pmrun's own KVS segments whose
writer is dead, and topology copies whose agent is gone.

Only the ``os`` module: the quick path imports this before anything else.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable

SHM_DIR = "/dev/shm"
#: Names MPI libraries give their node segments (MPICH, Open MPI, Intel MPI, and UCX's
#: posix transport under MPICH's and Open MPI's wheels).
MPI_PREFIXES = ("mpich_shm_", "sm_segment.", "vader_segment.", "shm-col-space-",
                "ucx_shm_posix_")
#: pmrun's own KVS segments have their own owner and sweep (pm.agent.shmkvs).
_OWN_PREFIX = "pmrun."
#: A segment younger than this is never swept as an orphan (it may be being created).
ORPHAN_AGE = 5.0
_NEEDLE = b" " + SHM_DIR.encode() + b"/"


def _dir_inodes() -> set[int]:
    try:
        with os.scandir(SHM_DIR) as it:
            return {e.inode() for e in it}
    except OSError:
        return set()


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def mapped_inodes(pid: int) -> dict[int, str]:
    """The ``/dev/shm`` files process ``pid`` maps, path by inode (empty if it is gone)."""
    data = _read(f"/proc/{pid}/maps")
    found: dict[int, str] = {}
    if _NEEDLE not in data:
        return found
    for line in data.split(b"\n"):
        if _NEEDLE in line:
            parts = line.split(None, 5)
            if (len(parts) == 6 and not parts[5].endswith(b"(deleted)")
                    and parts[4].isdigit()):
                found[int(parts[4])] = parts[5].decode(errors="surrogateescape")
    return found


def busy_inodes() -> set[int]:
    """Inodes of ``/dev/shm`` files any process we can see maps or holds open."""
    try:
        dev = os.stat(SHM_DIR).st_dev
    except OSError:
        return set()
    busy: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        busy.update(mapped_inodes(int(name)))
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"{fd_dir}/{fd}").startswith(SHM_DIR + "/"):
                    continue
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if st.st_dev == dev:
                busy.add(st.st_ino)
    return busy


def _remove(entries: Iterable[os.DirEntry[str]], busy: set[int]) -> list[str]:
    """Unlink the regular files among ``entries`` whose inode is not busy; their names."""
    removed = []
    for e in entries:
        if e.inode() in busy:
            continue
        try:
            st = os.lstat(e.path)
            if st.st_ino != e.inode() or (st.st_mode & 0o170000) != 0o100000:
                continue
            os.unlink(e.path)
        except OSError:
            continue
        removed.append(e.name)
    return removed


class ShmReaper:
    """The ``/dev/shm`` files one job's ranks on this node created (see the module doc)."""

    def __init__(self) -> None:
        self._before = _dir_inodes()
        self._seen: set[int] = set()

    def sample(self, pids: Iterable[int]) -> list[str]:
        """Note the new ``/dev/shm`` files ``pids`` map now; the paths not seen before."""
        news = self._news()
        if news is not None and not news:
            return []  # nothing they could map is new (MPICH unlinks its segment in MPI_Init)
        fresh = []
        for pid in pids:
            for ino, path in mapped_inodes(pid).items():
                if ino not in self._before and ino not in self._seen:
                    self._seen.add(ino)
                    fresh.append(path)
                    if news is not None:
                        news.discard(ino)
            if news is not None and not news:
                break  # every new file is found (one rank maps what MPI_Init made)
        return fresh

    def _news(self) -> set[int] | None:
        """The inodes in ``/dev/shm`` neither there before nor seen since; None if that
        cannot be told (a directory, whose files it does not list).  The ranks' maps (tens
        of KiB each, which the kernel writes out on every read) are read only for these."""
        news: set[int] = set()
        try:
            with os.scandir(SHM_DIR) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        return None
                    ino = e.inode()
                    if ino not in self._before and ino not in self._seen:
                        news.add(ino)
        except OSError:
            return None
        return news

    def reap_would_look(self) -> bool:
        """Whether a ``reap(seen_only=True)`` has any file to look at (a directory scan)."""
        return bool(self._seen) and any(e.inode() in self._seen for e in self.candidates())

    def candidates(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(SHM_DIR) as it:
                entries = list(it)
        except OSError:
            return []
        return [e for e in entries if e.inode() not in self._before
                and not e.name.startswith(_OWN_PREFIX)
                and (e.inode() in self._seen or e.name.startswith(MPI_PREFIXES))]

    def reap(self, wait_pids: Iterable[int] = (), timeout: float = 1.0,
             seen_only: bool = False) -> list[str]:
        """Remove the job's files nobody maps or holds any more; their names.

        ``wait_pids`` are ranks just killed: up to ``timeout`` seconds are given
        to them to die first (a dying process still maps its segments).
        ``seen_only``: only files the ranks were seen to map (a spawned job ending while
        others run, whose new segments are not its own; the run's end takes the rest).
        """
        cand = self.candidates()
        if seen_only:
            cand = [e for e in cand if e.inode() in self._seen]
        if not cand:
            return []
        _wait_gone(list(wait_pids), timeout)
        return _remove(cand, busy_inodes())


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Block until the processes ``pids`` are gone, or ``timeout`` seconds passed."""
    import select

    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:
            continue  # gone already
    try:
        deadline = time.monotonic() + timeout
        pending = list(fds)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(pending, [], [], left)
            pending = [fd for fd in pending if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def sweep_orphans(min_age: float = ORPHAN_AGE) -> list[str]:
    """Remove MPI segments (by name) that nobody maps or holds, older than ``min_age``."""
    try:
        with os.scandir(SHM_DIR) as it:
            entries = [e for e in it if e.name.startswith(MPI_PREFIXES)]
    except OSError:
        return []
    now = time.time()
    uid = os.getuid()
    old = []
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if now - st.st_mtime >= min_age and (uid == 0 or st.st_uid == uid):
            old.append(e)
    if not old:
        return []
    return _remove(old, busy_inodes())


def sweep_node() -> list[str]:
    """What agents killed with SIGKILL left on this node: MPI segments nobody uses, pmrun's
    KVS segments and topology copies whose owner is dead.  The paths removed."""
    from pm.agent import topo_share

    removed = [os.path.join(SHM_DIR, n) for n in sweep_orphans()]
    if _any_kvs_segment():  # (pm.agent.shmkvs costs a job's end 1.3 ms of CPU to import)
        from pm.agent.shmkvs import cleanup_stale

        removed += [os.path.join(SHM_DIR, n) for n in cleanup_stale()]
    removed += topo_share.cleanup_stale()
    return removed


def _any_kvs_segment() -> bool:
    """Whether ``SHM_DIR`` holds any of pmrun's shared-memory KVS segments (named as
    ``pm.proto.shm_layout`` says, which every agent would import for it at its end)."""
    try:
        with os.scandir(SHM_DIR) as it:
            return any(e.name.startswith(_OWN_PREFIX) for e in it)
    except OSError:
        return False
