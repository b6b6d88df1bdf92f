"""Spawned jobs of a one-node job, started and served by pmrun's quick phase.

An ``MPI_Comm_spawn`` of a job the quick phase runs (:mod:`pm.quick`) is
carried out there, without the full runtime: the children can only go on
this node, so there is nothing to place.  :class:`QuickSpawns` starts them
the way the agent starts a spawned job's ranks (:mod:`pm.agent.spawned_jobs`):
the same environment (``PMI_SPAWNED=1``, the job's kvsname ``<kvsname>_s<J>``,
the node's topology file), in the launched job's process group, with their own
:class:`~pm.agent.pmi_quick.QuickPmi` (their KVS holds the spawner's pre-put
keys).  An MPI spawner is answered once its children need it, by the rule the
agents follow (:mod:`pm.agent.spawn_answer`).  Their output is labelled
``[J:R]`` like the head's.

What the quick phase does not do (a ``host`` info key, a program that cannot
be found, more ranks than descriptors) hands the job over with the spawn
still to do, and the full runtime does it.  A job handed over with spawned
jobs takes them along (:attr:`pm.agent.started.StartedRanks.spawned`): the head
registers each as if it had placed it, and the launched job's agent adopts
its ranks (:meth:`pm.spawned_jobs.HeadSpawns.adopt`); a spawn still waiting
for its children is answered first.

Like :mod:`pm.quick`, it imports nothing heavy (it is loaded at the first spawn).
"""

from __future__ import annotations

import time

from pm.agent.pmi_quick import QuickPmi
from pm.agent.shm_reaper import ShmReaper
from pm.agent.spawn import SpawnError, fd_shortage, rank_env, resolve, spawn_dir
from pm.agent.spawn_answer import SpawnAnswer
from pm.agent.started import RankStart, StartedRanks, start_local
from pm.proto.spawn import SpawnCommand, SpawnResult

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pm.agent.pmi_actions import Spawn
    from pm.agent.started import StartedRank

#: Info keys that name other hosts: such a spawn is placed by the full runtime.
HOST_KEYS = ("host", "hosts", "hostfile")


class Spawned:
    """What a spawned job's :class:`QuickPmi` tells its ranks of their origin."""

    __slots__ = ("appnums", "job", "launched", "preput", "spawner")

    def __init__(self, job: int, launched: QuickPmi, spawner: str, preput: Mapping[str, str],
                 appnums: list[int]) -> None:
        self.job = job
        #: The launched job's QuickPmi (the universe and the hot table are its).
        self.launched = launched
        #: The spawner's kvsname (PMI-2's ``spawner-jobid``).
        self.spawner = spawner
        self.preput = dict(preput)
        #: Each rank's command (its appnum).
        self.appnums = appnums


class QuickJob:
    """A job the quick phase spawned: job ``job`` spawned by rank ``rank`` of job
    ``parent`` (0: the launched job), running ``commands``; ``started`` holds its ranks
    and their :class:`QuickPmi`."""

    __slots__ = ("after_init", "answer", "commands", "job", "kvsname", "parent",
                 "parent_ended_at", "preput", "rank", "requested_at", "started", "started_at",
                 "token")

    def __init__(self, job: int, parent: int, rank: int, token: int, kvsname: str,
                 commands: list[SpawnCommand], preput: Mapping[str, str],
                 after_init: bool, started: StartedRanks, answer: SpawnAnswer) -> None:
        self.job = job
        self.parent = parent
        self.rank = rank
        self.token = token
        self.kvsname = kvsname
        self.commands = commands
        self.preput = dict(preput)
        self.after_init = after_init
        self.started = started
        #: When its spawner gets the answer (pending: it waits).
        self.answer = answer
        #: Monotonic times of the request and of the answer (for --profile, after a
        #: hand-over).
        self.requested_at = time.monotonic()
        self.started_at = 0.0
        #: When every rank of the job that spawned it had ended (0: not yet), while it ran.
        self.parent_ended_at = 0.0

    @property
    def size(self) -> int:
        return len(self.started.ranks)

    @property
    def pmi(self) -> QuickPmi:
        pmi = self.started.pmi
        assert pmi is not None
        return pmi


class QuickSpawns:
    """The jobs spawned by the job whose PMI is ``launched`` (every level of nesting).

    ``base``: the launched job's environment (with its topology file), ``wdir`` its
    working directory; ``watch`` registers new ranks with the quick phase's loop;
    ``merge``: their stderr is their stdout, as the launched job's; ``raw``: their output
    passed on as it comes, as the launched job's (srun's ``-u``).
    """

    def __init__(self, launched: QuickPmi, base: Mapping[str, str], wdir: str | None,
                 watch: Callable[[list[StartedRank]], None], merge: bool = False,
                 raw: bool = False) -> None:
        self.launched = launched
        self.base = base
        self.wdir = wdir
        self.merge = merge
        self.raw = raw
        self.watch = watch
        self.jobs: list[QuickJob] = []
        #: Ranks of spawned jobs still running.
        self.running = 0
        #: A rank could not start (the head names it), or a spawner's answer led to what
        #: the full runtime does: the loop hands the job over.
        self.failed = False
        #: The jobs whose spawners wait for their answer.
        self.unanswered: list[QuickJob] = []  # (the poll loop looks at it after each batch)
        launched.on_spawn = self.spawn

    def pmi_of(self, job: int) -> QuickPmi:
        return self.launched if job == 0 else self.jobs[job - 1].pmi

    def ranks(self) -> list[StartedRank]:
        """Every spawned job's ranks."""
        return [r for q in self.jobs for r in q.started.ranks]

    def spawn(self, parent: QuickPmi, rank: int, call: Spawn) -> bool:
        """Start the children rank ``rank`` of ``parent``'s job asks for: True if they
        started (the answer follows), False if the full runtime must do it."""
        req = call.request
        commands = req.commands  # (each program completed as the agent does it)
        if any(c.info.get(k) for c in commands for k in HOST_KEYS):
            return False
        n = sum(c.n for c in commands)
        running = len(self.launched.started.ranks) + self.running
        if fd_shortage(running + n) is not None:
            return False
        launched = self.launched
        job = len(self.jobs) + 1
        kvsname = f"{launched.kvsname}_s{job}"
        todo: list[RankStart] = []
        appnums: list[int] = []
        for appnum, c in enumerate(commands):
            c.argv[0] = c.program
            app_env = {**c.env, "PMI_SPAWNED": "1"}
            wdir = c.wdir or self.wdir
            path = ""
            for _ in range(c.n):
                r = len(todo)
                env = rank_env(self.base, app_env, r, n, launched.host, r, n)
                if not path:
                    try:
                        spawn_dir(c.wdir, c.argv[0])
                        path = resolve(c.argv[0], env, wdir)
                    except SpawnError:
                        return False  # the full runtime answers with the error codes
                todo.append(RankStart(r, r, path, c.argv, env, wdir))
                appnums.append(appnum)
        top = launched.started
        started = StartedRanks(f"{top.job_id}s{job}", top.t0)
        started.guardian, started.shared = top.guardian, True
        started.shm_reaper = ShmReaper()
        start_local(todo, stdin_rank=None, guardian=top.guardian, into=started, job=job,
                    merge=self.merge, raw=self.raw)
        pmi = started.pmi = QuickPmi(
            started, kvsname, n, native=launched.native, host=launched.host,
            spawned=Spawned(job, launched, parent.kvsname, req.preput, appnums))
        pmi.on_spawn, pmi.on_init, pmi.on_close = self.spawn, self._initialized, launched.on_close
        parent_job = parent.spawned.job if parent.spawned is not None else 0
        alive = [r.rank for r in started.ranks if r.pid]

        def report(needed: bool) -> None:
            if needed:
                self._answer(q)

        q = QuickJob(job, parent_job, rank, call.token, kvsname, commands, req.preput,
                     req.after_init, started, SpawnAnswer(alive, req.preput, report))
        self.jobs.append(q)
        self.running += len(alive)
        self.failed = self.failed or started.failed
        self.watch(started.ranks)
        if req.after_init and alive:  # an MPI spawner: once its children need it
            pmi.spawn_answer = q.answer
            self.unanswered.append(q)
        else:  # now (this call being carried out, the parent's QuickPmi sends it after)
            q.answer.report = None
            self._answer(q, now=False)
        return True

    def _initialized(self, pmi: QuickPmi, rank: int) -> bool:
        assert pmi.spawned is not None
        self.jobs[pmi.spawned.job - 1].answer.initialized(rank)
        return not self.failed

    def ended(self, r: StartedRank) -> bool:
        """Rank ``r`` of a spawned job ended well: False if the job must be handed over."""
        self.running -= 1
        self.jobs[r.job - 1].answer.ended(r.rank)
        return not self.failed

    def _answer(self, q: QuickJob, now: bool = True) -> None:
        q.started_at = time.monotonic()
        q.pmi.spawn_answer = None
        if q in self.unanswered:
            self.unanswered.remove(q)
        result = SpawnResult(True, q.job, q.kvsname, "", [0] * q.size)
        if not self.pmi_of(q.parent).finish_call(q.rank, q.token, result, now):
            self.failed = True

    def answer_deadline(self) -> float:
        """When a spawner waiting for children that initialized PMI is answered anyway
        (monotonic; 0: none is)."""
        return min((q.answer.deadline for q in self.unanswered if q.answer.deadline),
                   default=0.0)

    def expire(self) -> bool:
        """Answer the spawners whose :meth:`answer_deadline` passed: False if the job must
        be handed over."""
        now = time.monotonic()
        for q in list(self.unanswered):
            q.answer.expire(now)
        return not self.failed

    def answer_all(self) -> None:
        """Answer every spawner still waiting (the job is handed over: its children are
        started, which is all the full runtime would wait for now)."""
        for q in list(self.unanswered):
            q.answer.report = None
            self._answer(q)  # (a spawner gone meanwhile: its agent names it)

    def orphaned(self, ended: Callable[[StartedRank], bool]) -> bool:
        """Whether a spawned job still runs after every rank of the job that spawned it
        ended (``ended``: whether a rank has); such a job's :attr:`QuickJob.parent_ended_at`
        is set (the head gives it what is left of its grace after a hand-over)."""
        found = False
        for q in self.jobs:
            if q.parent_ended_at or not any(r.pid and not ended(r) for r in q.started.ranks):
                continue
            parent = (self.launched.started if q.parent == 0
                      else self.jobs[q.parent - 1].started)
            if all(not r.pid or ended(r) for r in parent.ranks):
                q.parent_ended_at = time.monotonic()
                found = True
        return found
