"""Starting and killing processes (ranks, child agents), without the event loop.

* ``posix_spawn`` (vfork + exec in glibc): no Python runs in the child, so a
  node's ranks start in well under a millisecond each.
* A *guardian* process leads the process group of a job's ranks on a node.  It
  blocks reading a pipe that only the agent holds: if the agent dies, even by
  SIGKILL, the read returns and the guardian removes the files the agent named
  to it (the job's shared-memory segments and topology copy) and kills the
  whole group.  Ranks therefore never outlive their agent, nor do their files.
  The guardian starts with the signals an agent passes on to the ranks blocked (and
  ignores them): one sent to its group by someone else than its agent stays pending, which
  the agent reads (:meth:`Guardian.got`): whether Slurm signals the ranks itself
  (:mod:`pm.agent.step_signals`).
  Ranks stay in the session they were started from (Hydra starts each in a
  session of its own): the kernel shares CPU time between sessions (autogroups)
  first, and oversubscribed MPI ranks, which wait by yielding the CPU to each
  other, do that well only within one (a 64-rank MPICH hello on 2 CPUs: 0.95 s
  in one group, 1.5 s with a session per rank).

``pmrun``'s quick path (:mod:`pm.quick`) starts ranks with this module before
anything heavier is imported, so it imports nothing but C modules: ``_signal``
(``signal.py`` would bring enum and functools) and no ``shutil``.  Watching
processes on the event loop is :mod:`pm.agent.watch`.
"""

from __future__ import annotations

import _signal
import _socket
import _thread
import errno
import os

from pm.proto.errors import PMError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pm.agent.membind import Policy

# The guardian ignores the signals the agent forwards to the group, the stop signals
# too: a stopped guardian could not kill the group if its agent died meanwhile.  (Those of
# GUARDIAN_BLOCKS are blocked as well, by its spawn: they stay pending, for Guardian.got.)
# The lines it reads are files (or folders) of the job's (Guardian.note): gone with the
# agent, they go too.
_GUARDIAN = ("trap '' INT TERM HUP QUIT PIPE USR1 USR2 ALRM TSTP TTIN TTOU; "
             # A line that is not a path: the agent ended the job itself (Guardian.release);
             # "done": and every file named here is gone already.
             'z=; while IFS= read -r p; do case $p in /*) set -- "$@" "$p";; done) z=1; set --;; '
             '*) z=1;; esac; '
             'done; '
             # The MPI segments its group's processes (the ranks) map now: an agent killed
             # before it saw them (MPICH makes its segment between two PMI requests of
             # MPI_Init, and no PMI request may follow until finalize) named none of them.
             # Reading every process's stat takes tens of ms of CPU: only when it may help.
             '[ -n "$z" ] || for d in /proc/[0-9]*; do '
             '{ read -r s < "$d/stat"; } 2>/dev/null || continue; '
             's=${s##*) }; s=${s#* }; s=${s#* }; [ "${s%% *}" = $$ ] || continue; '
             'while read -r a b c e i f; do case $f in '
             '/dev/shm/mpich_shm_*|/dev/shm/sm_segment.*|/dev/shm/vader_segment.*|'
             '/dev/shm/shm-col-space-*) set -- "$@" "${f% (deleted)}";; esac; '
             'done 2>/dev/null < "$d/maps"; done; '
             '[ $# -eq 0 ] || rm -rf -- "$@"; kill -KILL 0')

#: The signals a guardian blocks (:meth:`Guardian.got`): those an agent passes on to the
#: ranks as they come (pm.agent.step_signals).
GUARDIAN_BLOCKS = (_signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGALRM, _signal.SIGINT,
                   _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGTERM)

#: Target fd number of the PMI socket in a rank (``PMI_FD``).
PMI_FD = 3

#: srun's ``--task-prolog PROG``, as slurmstepd runs it: in the rank's own process, with its
#: environment, before its program; PROG's output lines ``export NAME=VALUE`` and ``unset
#: NAME`` change the environment the program gets, ``print TEXT`` prints TEXT as the rank's
#: output, other lines are ignored; a prolog that fails ends the rank with its status.  (A
#: shell that then execs the program: its pid is the rank's, and PATH is looked up in the
#: environment the prolog left.)  Run as ``sh -c TASK_PROLOG pm-task-prolog PROG ARGV...``.
TASK_PROLOG = r"""p=$1; shift
out=$("$p" </dev/null) || { s=$?; echo "pmrun: --task-prolog $p failed with status $s" >&2
exit $s; }
while IFS= read -r line; do
  case $line in
  "export "*) kv=${line#export }; n=${kv%%=*}
    case $n in ""|[0-9]*|*[!A-Za-z0-9_]*) ;; *) [ "$n" = "$kv" ] || export "$kv" ;; esac ;;
  "unset "*) n=${line#unset }
    case $n in ""|[0-9]*|*[!A-Za-z0-9_]*) ;; *) unset "$n" ;; esac ;;
  "print "*) printf '%s\n' "${line#print }" ;;
  esac
done <<PM_PROLOG_END
$out
PM_PROLOG_END
exec "$@"
"""


class SpawnError(PMError):
    """A process could not be started (command not found, not executable, ...)."""


def resolve(argv0: str, env: Mapping[str, str], cwd: str | None) -> str:
    """Find the program the way a shell would (PATH of the rank's environment)."""
    if "\0" in argv0:
        raise SpawnError(f"{argv0!r}: a program name cannot hold a NUL byte")
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) or cwd is None else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise SpawnError(f"{argv0}: no such file")
        if os.path.isdir(path):
            raise SpawnError(f"{argv0}: is a directory")
        if not _executable(path):
            raise SpawnError(f"{argv0}: not executable")
        return path
    found = None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory, argv0)
        if _executable(candidate):
            found = candidate
            break
    if found is None:
        raise SpawnError(f"{argv0}: command not found")
    if cwd is not None and not os.path.isabs(found):
        found = os.path.join(cwd, found)
    return found


def spawn_dir(wdir: str | None, argv0: str) -> None:
    """A working directory (a spawn's ``wdir``, checked on the spawner's node as its program
    ``argv0`` is; a job's -wdir, on each node as its ranks start): SpawnError, for the
    spawner or the head to name, if it is no directory here."""
    if wdir and not os.path.isdir(wdir):
        why = "not a directory" if os.path.exists(wdir) else "no such directory"
        raise SpawnError(f"{argv0}: its working directory {wdir}: {why}")


def _executable(path: str) -> bool:
    return os.access(path, os.X_OK) and not os.path.isdir(path)


def rank_env(base: Mapping[str, str], app_env: Mapping[str, str], rank: int, size: int,
             host: str, local_rank: int, local_size: int) -> dict[str, str]:
    """A rank's environment: the job's, its program's, then what PMI-1 clients read."""
    env = dict(base)
    env.update(app_env)
    env.update(
        PMI_FD=str(PMI_FD), PMI_RANK=str(rank), PMI_SIZE=str(size), PMI_HOSTNAME=host,
        MPI_LOCALRANKID=str(local_rank), MPI_LOCALNRANKS=str(local_size),
        GFORTRAN_UNBUFFERED_PRECONNECTED="y",
    )
    return env


class RankFds:
    """The descriptors of a rank about to start: the ends it gets (``child_fds``) and ours
    (its PMI socket, its stdout and stderr pipes, its stdin pipe if it reads ours)."""

    __slots__ = ("_child", "_shared", "_slave", "err", "out", "pmi", "stdin", "tty")

    def __init__(self, stdin_pipe: bool, pmi: bool = True, devnull: int = -1,
                 merge: bool = False, stdin_file: str | None = None,
                 pty: tuple[int, int] | None = None) -> None:
        """Raises :class:`SpawnError` (nothing left open) when the descriptors run out, or
        ``stdin_file`` cannot be opened.

        ``devnull``: an open /dev/null (read) the caller keeps, given as stdin to a rank
        without the stdin pipe (else one is opened for it).  ``merge``: the rank's stderr
        is its stdout pipe (``err`` stays -1).  ``stdin_file``: the rank's stdin, opened
        for it alone (it reads the whole file, whatever the others read)."""
        #: Our end of the PMI socket (None without PMI).
        self.pmi: _socket.socket | None = None
        self.out = self.err = self.stdin = -1
        self._child: dict[int, int] = {}
        #: A child end that is the caller's (not closed here).
        self._shared = -1
        #: srun's --pty: the terminal the rank opens as its stdin, stdout and stderr (and
        #: controlling terminal, :func:`spawn`'s ``tty``); ours is its master side, as the
        #: rank's output and its stdin (another descriptor of it).
        self.tty = ""
        self._slave = -1
        if pty is not None:
            self._open_pty(pty, pmi)
            return
        try:
            if pmi:
                self._open_pmi()
            self.out, self._child[1] = os.pipe2(os.O_CLOEXEC)
            if merge:
                self._child[2] = self._child[1]
            else:
                self.err, self._child[2] = os.pipe2(os.O_CLOEXEC)
            if stdin_pipe:
                self._child[0], self.stdin = os.pipe2(os.O_CLOEXEC)
            elif stdin_file is not None:
                try:
                    self._child[0] = os.open(stdin_file, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise SpawnError(f"cannot open its stdin {stdin_file}: {exc.strerror}"
                                     ) from None
            elif devnull >= 0:
                self._child[0] = self._shared = devnull
            else:
                self._child[0] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, SpawnError) as exc:
            self.close_ours()
            self.close_child_ends()
            if isinstance(exc, SpawnError):
                raise
            raise SpawnError(f"cannot create its pipes: {exc.strerror}") from exc
        os.set_blocking(self.out, False)
        if self.err >= 0:
            os.set_blocking(self.err, False)

    def _open_pmi(self) -> None:
        """The rank's PMI socket: its end as PMI_FD, ours in :attr:`pmi`."""
        self.pmi, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._child[PMI_FD] = theirs.detach()
        # Ours never waits: a rank that does not read its replies must not stop the one
        # loop that serves every rank (pm.agent.pmi_quick, then asyncio's).
        self.pmi.setblocking(False)

    def _open_pty(self, size: tuple[int, int], pmi: bool) -> None:
        import fcntl
        import struct
        import termios

        try:
            if pmi:
                self._open_pmi()
            self.out, self._slave = os.openpty()
            self.tty = os.ttyname(self._slave)
            if size[0] > 0 and size[1] > 0:
                fcntl.ioctl(self.out, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
            self.stdin = os.dup(self.out)
        except OSError as exc:
            self.close_ours()
            self.close_child_ends()
            raise SpawnError(f"cannot open a pseudo-terminal: {exc.strerror}") from exc
        os.set_blocking(self.out, False)  # (and so its other descriptor, self.stdin)

    @property
    def child_fds(self) -> dict[int, int]:
        """``spawn``'s ``fds``: stdin, stdout, stderr and PMI_FD of the rank."""
        return self._child

    def close_child_ends(self) -> None:
        """Once the rank started (or failed to): its ends are its own."""
        for fd in set(self._child.values()):  # (stdout's is stderr's too with ``merge``)
            if fd != self._shared:
                os.close(fd)
        self._child = {}
        if self._slave >= 0:  # (the rank opened the terminal itself)
            os.close(self._slave)
            self._slave = -1

    def close_ours(self) -> None:
        if self.pmi is not None:
            self.pmi.close()
            self.pmi = None
        for fd in (self.out, self.err, self.stdin):
            if fd >= 0:
                os.close(fd)
        self.out = self.err = self.stdin = -1


def spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    fds: Mapping[int, int] | None = None,
    pgid: int | None = None,
    cpus: frozenset[int] | None = None,
    mem: Policy | None = None,
    tty: str = "",
    blocked: Sequence[int] = (),
) -> int:
    """Start ``path`` and return its pid.

    ``fds`` maps target fd numbers in the child (0, 1, 2, PMI_FD) to fds of
    ours (which stay close-on-exec here; dup2 clears the flag in the child).
    ``pgid`` puts the child in that process group (0: a new group it leads).
    ``cpus`` binds the child before exec: the calling thread's affinity is
    inherited by the child, so it is set around the spawn and restored; so is ``mem``,
    a NUMA memory policy (:class:`pm.agent.membind.ThreadPolicy`).  ``tty``: a terminal
    the child opens as its stdin, stdout and stderr, in a session of its own whose
    controlling terminal it is (``pgid`` does not apply).  ``blocked``: signals the child
    starts with blocked (none by default).
    """
    if mem is not None:
        from pm.agent.membind import MemBindError, ThreadPolicy

        try:
            with ThreadPolicy(mem):
                return spawn(path, argv, env, cwd=cwd, fds=fds, pgid=pgid, cpus=cpus, tty=tty,
                             blocked=blocked)
        except MemBindError as exc:
            raise SpawnError(f"{argv[0]}: {exc}") from exc
    actions: list[tuple[int | str, ...]] = []
    for target, src in (fds or {}).items():
        if src == target:
            os.set_inheritable(src, True)
        else:
            actions.append((os.POSIX_SPAWN_DUP2, src, target))
    kwargs: dict[str, object] = {"file_actions": actions}
    if tty:
        # A new session first (posix_spawn's order), then the terminal opened in it: a
        # session leader without a controlling terminal that opens one gets it.
        actions += [(os.POSIX_SPAWN_OPEN, 0, tty, os.O_RDWR, 0),
                    (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
        kwargs["setsid"] = True
    elif pgid is not None:
        kwargs["setpgroup"] = pgid
    # The agent blocks SIGCHLD and friends in no thread; reset handlers the
    # interpreter ignores (SIGPIPE) so ranks see default behaviour.
    kwargs["setsigdef"] = (_signal.SIGPIPE, _signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP,
                           _signal.SIGQUIT)
    kwargs["setsigmask"] = tuple(blocked)
    old_cpus = None
    if cpus:
        old_cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
    old_cwd = None
    try:
        # os.posix_spawn has no chdir action: change ours around the call (the
        # loop thread is the only one that spawns or depends on the cwd).
        if cwd is not None:
            old_cwd = os.getcwd()
            try:
                os.chdir(cwd)
            except OSError as exc:
                old_cwd = None
                raise SpawnError(f"{argv[0]}: its working directory {cwd}: {exc.strerror}"
                                 ) from None
        try:
            try:
                return os.posix_spawn(path, list(argv), dict(env), **kwargs)  # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno != errno.ENOEXEC:
                    raise
            # A script without a "#!" line: the shell runs it, as execvp (and so Hydra,
            # and a shell) does.
            return os.posix_spawn("/bin/sh", ["/bin/sh", path, *argv[1:]], dict(env),
                                  **kwargs)  # type: ignore[arg-type]
        except OSError as exc:
            raise SpawnError(f"{argv[0]}: {exc.strerror}") from exc
        except ValueError as exc:  # (posix_spawn's word for a NUL byte in a string)
            raise SpawnError(f"{argv[0]!r}: an argument or environment variable holds a "
                             "NUL byte, which no program can be given") from exc
    finally:
        if old_cwd is not None:
            os.chdir(old_cwd)
        if old_cpus is not None:
            os.sched_setaffinity(0, old_cpus)


def spawn_rank(path: str, argv: Sequence[str], env: Mapping[str, str], *, stdin_pipe: bool,
               cwd: str | None, pgid: int, cpus: frozenset[int] | None = None,
               pmi: bool = True, devnull: int = -1, merge: bool = False,
               stdin_file: str | None = None,
               mem: Policy | None = None, pty: tuple[int, int] | None = None
               ) -> tuple[int, RankFds]:
    """Start a rank with its descriptors (:class:`RankFds`): its pid, and our ends of them.

    Raises :class:`SpawnError` (nothing left open) if the descriptors or the
    process cannot be made.  ``devnull``, ``pty``: see :class:`RankFds`.
    """
    try:
        fds = RankFds(stdin_pipe, pmi, devnull, merge, stdin_file, pty)
    except SpawnError as exc:
        raise SpawnError(f"{argv[0]}: {exc}") from exc
    try:
        pid = spawn(path, argv, env, cwd=cwd, fds=fds.child_fds, pgid=pgid, cpus=cpus,
                    mem=mem, tty=fds.tty)
    except SpawnError:
        fds.close_ours()
        raise
    finally:
        fds.close_child_ends()
    return pid, fds


#: Guardians let go (:meth:`Guardian.release`) whose exit is not collected yet, by pid.
#: Each release collects those that have ended since: a process that runs job after job
#: in itself (the Python API) keeps no zombie of theirs but the few still ending, and
#: :func:`pm.agent.watch.guardians_reaped` waits for those.  (pmrun and the agents exit
#: after their job: their guardians' exits were never theirs to collect.)
_RELEASED: dict[int, Guardian] = {}
#: Held while a guardian's exit is collected (:meth:`Guardian.reaped`), so that jobs of
#: several threads never collect one twice: its pid may be a new child's by then.
_REAPING = _thread.allocate_lock()


class Guardian:
    """Leads a process group; kills it when the agent that started it dies.

    Ranks join the group with ``spawn(..., pgid=guardian.pgid)``.
    """

    def __init__(self) -> None:
        rfd, self._wfd = os.pipe2(os.O_CLOEXEC)
        #: The files named to it (:meth:`note`).
        self._noted: dict[str, None] = {}
        #: The signals :meth:`signal` sent the group.
        self._sent: set[int] = set()
        #: Its exit is collected (:meth:`reaped`): its pid is no longer ours.
        self._reaped = False
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.pid = spawn(
                "/bin/sh",
                ["pm-guardian", "-c", _GUARDIAN],
                {"PATH": os.defpath},
                fds={0: rfd, 1: null, 2: null},
                pgid=0,
                blocked=GUARDIAN_BLOCKS,
            )
        finally:
            os.close(rfd)
            os.close(null)
        self.pgid = self.pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the group (the guardian ignores most).
        SIGSTOP (Slurm suspends the job) stops the ranks, not the guardian, which is
        continued at once: it must be able to kill the group if its agent dies meanwhile."""
        self._sent.add(signum)
        try:
            os.killpg(self.pgid, signum)
        except (ProcessLookupError, PermissionError):
            return
        if signum == _signal.SIGSTOP:
            fd = self.pidfd()
            if fd >= 0:
                try:
                    _signal.pidfd_send_signal(fd, _signal.SIGCONT)
                except OSError:
                    pass  # (ended meanwhile)
                finally:
                    os.close(fd)

    def got(self, signum: int) -> bool | None:
        """Whether someone else than us sent the guardian ``signum`` (one of
        :data:`GUARDIAN_BLOCKS`: pending until it ends), and so, most likely, every process
        of its group: True or False; None when we cannot tell (we sent it the group
        ourselves, or the guardian's state cannot be read)."""
        if signum in self._sent or signum not in GUARDIAN_BLOCKS or self._reaped:
            return None
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                status = f.read()
        except OSError:
            return None
        bit = 1 << (signum - 1)
        return any(line.startswith((b"ShdPnd:", b"SigPnd:")) and int(line.split()[1], 16) & bit
                   for line in status.split(b"\n"))

    def kill_all(self) -> None:
        """SIGKILL the whole group, guardian included."""
        self.signal(_signal.SIGKILL)

    def note(self, paths: Sequence[str]) -> None:
        """Files the job made on this node (shared-memory segments its ranks mapped, its
        topology copy): if the agent dies, even by SIGKILL, the guardian removes them
        before it kills the group.  (A normal end removes them first: then this is moot.)
        A file named already is not named again (a job the quick phase hands over: it named
        the topology copy, and so does the agent that adopts the ranks)."""
        paths = [p for p in dict.fromkeys(paths)
                 if "\n" not in p and p.startswith("/") and p not in self._noted]
        if self._wfd < 0 or not paths:
            return
        self._noted.update(dict.fromkeys(paths))
        lines = "".join(p + "\n" for p in paths)
        try:
            os.write(self._wfd, lines.encode())
        except OSError:
            pass  # a guardian gone: nothing left to clean after

    def reaped(self) -> bool:
        """Whether the guardian's exit is collected now (after :meth:`release`)."""
        with _REAPING:
            if not self._reaped:
                try:
                    self._reaped = os.waitpid(self.pid, os.WNOHANG)[0] != 0
                except ChildProcessError:
                    self._reaped = True
            return self._reaped

    def pidfd(self) -> int:
        """A pidfd of the guardian, readable once it has ended, for the caller to close;
        -1 once its exit is collected (its pid may be another process's then)."""
        with _REAPING:
            if self._reaped:
                return -1
            try:
                return os.pidfd_open(self.pid)
            except ProcessLookupError:  # (not a zombie of ours any more: someone reaped it)
                self._reaped = True
                return -1

    def release(self, clean: bool = False) -> None:
        """Close our end of the pipe: the guardian kills what is left of the group and exits.

        ``clean``: every rank ended and no MPI segment of theirs is left in /dev/shm, so
        the guardian need not look for any in its group's maps (it removes the files
        :meth:`note` named all the same, unless every one of them is gone already: then
        it removes nothing, and runs no ``rm``)."""
        if self._wfd < 0:
            return
        if clean:
            gone = not any(os.path.lexists(p) for p in self._noted)
            try:
                os.write(self._wfd, b"done\n" if gone else b"clean\n")
            except OSError:
                pass
        os.close(self._wfd)
        self._wfd = -1
        released_guardians()
        _RELEASED[self.pid] = self


def released_guardians() -> list[Guardian]:
    """The guardians let go whose exit is not collected yet (those that have ended are
    collected now)."""
    for pid, guardian in list(_RELEASED.items()):
        if guardian.reaped():
            _RELEASED.pop(pid, None)
    return list(_RELEASED.values())


#: Descriptors an agent holds per local rank (PMI socket, stdout, stderr, pidfd, and
#: rank 0's stdin), and what it needs besides (event loop, tree links, logs, imports).
FDS_PER_RANK, FDS_SPARE = 5, 64


def raise_fd_limit() -> None:
    """Ranks need five fds each: raise the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


#: The exit status of a rank that could not start (as a shell's for a missing command),
#: and the words its reason begins with.
EXIT_NOT_STARTED = 127
NOT_STARTED = "could not start"
#: ... and of one whose program was found but cannot run (a shell's 126).
EXIT_CANNOT_RUN = 126
#: The ends of the reasons of a program found that cannot run (:func:`resolve`, exec's).
_CANNOT_RUN = (": is a directory", ": not executable", ": Permission denied",
               ": Exec format error")


def not_started_status(why: str) -> int:
    """The exit status of a rank that could not start for ``why``: 126 when its program
    is there but cannot run (a directory, no execute permission), else 127, as a shell's."""
    return EXIT_CANNOT_RUN if why.endswith(_CANNOT_RUN) else EXIT_NOT_STARTED


def fd_shortage(ranks: int) -> str | None:
    """Why ``ranks`` local ranks cannot be served under this process's descriptor limit
    (after :func:`raise_fd_limit`), or None if they can."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    need = ranks * FDS_PER_RANK + FDS_SPARE
    if limit == resource.RLIM_INFINITY or need <= limit:
        return None
    return (f"{ranks} ranks on one node need about {need} file descriptors, but the limit "
            f"is {limit} (raise it with ulimit -n, or use fewer ranks per node)")
