"""Start agents inside a Slurm allocation (``--launcher slurm``).

Hosts come from ``SLURM_JOB_NODELIST`` (bracket syntax, ``pm.common.hostlist``) and
their slots from ``SLURM_TASKS_PER_NODE`` (``2(x3),1``).  All agents start as
**one** job step, one task per node (``srun --overlap --nodes=N --ntasks=N
--ntasks-per-node=1 --nodelist=HOSTS ... python -S -P -c ... child``, a lean start:
``pm.bootstrap.base.agent_command``): Slurm's own tree starts them, as Hydra's
``-launcher slurm`` does.  srun gives every task the same stdin: the config line
(vertex -1, the host list
and the fan-out), from which each agent finds its vertex (its node's place in
the list) and its parent; agents with children report their port on stdout,
and the head sends those addresses back on the step's stdin
(``agent.main.place_in_step``).  When srun says a task on some node failed
(``srun: error: NODE: task N: ...``), that node is the one named.

Without ``start == "step"`` (an old plan) each agent is a step of its own,
started by its tree parent: ``srun ... --nodes=1 --ntasks=1 --nodelist=HOST``.

Why these srun options: ``--overlap`` lets the agent step share the nodes
with the user's other steps (and with the agents' own sruns); ``--whole``
gives the step every CPU of the node, since the agent spawns all the node's
ranks and binds them itself (``--cpu-bind=none``); ``--mpi=none`` keeps
Slurm's own PMI out of the ranks' way.  No ``--kill-on-bad-exit``: when an
agent fails the others end their ranks themselves (Slurm would kill them
before they clean up).  ``srun`` keeps our stdin open to the agent, so closing
it still tells the agent its parent is gone.  ``options["srun"]`` replaces the
option words (for old Slurm releases without ``--overlap``/``--whole``).

When Slurm ends the job (scancel, the time limit, preemption) every slurmstepd sends its
tasks SIGTERM, and SIGKILL KillWait seconds later (a cancelled step, SIGKILL at once).  The
agents take that SIGTERM: their ranks get it, and have until then to end (to save a
checkpoint), as srun's tasks have; pmrun says Slurm ended the job, in one line (from
slurmstepd's "*** STEP ... CANCELLED ***" line, or slurmctld's word), kills nothing
itself and ends when the ranks have, or Slurm killed what was left
(pm.agent.step_signals, pm.head.JobRun.ended).  An agent that dies of SIGTERM or SIGKILL
all the same (before its job's plan came, or Slurm's SIGKILL) is seen in srun's "task N:
Terminated" (or "Killed") for its node, which may reach us before the first node's
"CANCELLED" line (they travel on different connections), or before pmrun's own SIGTERM (in
a batch script).  So such a node is named lost only after :data:`SIGNAL_GRACE` seconds
without either; any other end (an exit code, a node failure) is named at once.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pm.bootstrap.base import agent_command
from pm.bootstrap.exec import CommandBootstrap
from pm.bootstrap.pipes import Piped
from pm.common.hostlist import HostlistError, compress, expand

if TYPE_CHECKING:
    import asyncio

    from pm.agent.watch import ExitStatus
    from pm.proto.plan import AgentConfig

SRUN_OPTIONS = ("--overlap", "--whole", "--cpu-bind=none", "--mpi=none", "--quiet")
#: What srun says about a task that failed on a node, or a node that failed.
_TASK_FAILED = re.compile(r"^srun: error: ([^\s:]+): tasks? [0-9,\-]+: (.*)$")
_NODE_FAILED = re.compile(r"^srun: error: Node failure on ([^\s,]+)")
#: How srun says a task was killed by SIGTERM or SIGKILL (what slurmstepd sends when Slurm
#: ends a job, or a step: ``scancel STEP`` kills at once).
_TERMINATED = re.compile(r": tasks? [0-9,\-]+: (?:Terminated|Killed)$")
#: Seconds a node whose agent died of such a signal is held before it is named lost:
#: Slurm's word that it ended the job (or pmrun's own SIGTERM) comes in that time if at all
#: (a scancel on a loaded machine here took more than 3 s to reach srun).
SIGNAL_GRACE = 5.0
_SLURM_SIGNALS = (signal.SIGTERM, signal.SIGKILL)
#: What srun says when the tasks of its step outlive the job's end by KillWait + 2 s
#: (``slurm_step_launch_wait_finish``): Slurm kills them, and pmrun named the end already.
_STEP_WAIT = re.compile(r"^srun: error: Timed out waiting for job step to complete$")
#: What slurmstepd says when Slurm ends a job or step (scancel, the time limit, ...).
_CANCELLED = re.compile(r"\*\*\* (JOB|STEP) (\S+) ON (\S+) CANCELLED AT (\S+)(?: DUE TO ([^*]+?))?"
                        r"(?: \*\*\*)")
#: pmrun's exit status when Slurm cancelled the job (as a shell reports SIGTERM), or
#: when the job reached its time limit (as pmrun's own --timeout).
EXIT_CANCELLED = 128 + 15
EXIT_TIME_LIMIT = 124


#: Seconds pmrun waits for slurmctld's word when a SIGTERM reaches it in a Slurm job.
ASK_TIMEOUT = 1.0
#: Seconds pmrun waits for slurmstepd's "CANCELLED" line (:func:`cancelled`) once its agents
#: said Slurm's SIGTERM came, before it asks slurmctld: the line names the end as srun
#: would (node 0's slurmstepd prints it before it signals its tasks).
LINE_FIRST = 1.0


def cancelled(text: str) -> tuple[str, int] | None:
    """``(why, exit status)`` if ``text`` is slurmstepd saying Slurm ended the job (pure)."""
    m = _CANCELLED.search(text)
    if m is None:
        return None
    what = "job" if m.group(1) == "JOB" else "job step"
    due = (m.group(5) or "").strip()
    return _ended(what, m.group(2), "" if due.upper() == "TIME LIMIT" else due.lower(),
                  time_limit=due.upper() == "TIME LIMIT")


def _ended(what: str, ident: str, due: str, time_limit: bool) -> tuple[str, int]:
    if time_limit:
        return f"Slurm ended the {what} {ident}: time limit reached", EXIT_TIME_LIMIT
    return f"Slurm cancelled the {what} {ident}{f' ({due})' if due else ''}", EXIT_CANCELLED


def job_ending(job: str, text: str) -> tuple[str, int] | None:
    """``(why, exit status)`` if ``text``, squeue's ``%T|%r`` for job ``job``, says Slurm is
    ending it (``COMPLETING|TimeLimit`` when its time limit came, ``COMPLETING|None`` after
    a scancel); None while it runs (pure)."""
    state, _, reason = text.strip().partition("|")
    if state != "COMPLETING":
        return None
    due = "" if reason in ("None", "") else reason.lower()
    return _ended("job", job, due, time_limit=reason == "TimeLimit")


async def ask_why(env: Mapping[str, str] | None = None
                  ) -> tuple[bool, tuple[str, int] | None]:
    """Whether Slurm is ending the job we run in (a SIGTERM reached us, or our agents'
    step): ``(True, (why, exit status))`` when slurmctld says it is, ``(True, None)`` when
    it says the job runs on (a SIGTERM of someone else's, ``scancel --signal=TERM``),
    ``(False, None)`` without its word (not in a Slurm job, no answer in ASK_TIMEOUT).

    slurmstepd's own line (:func:`cancelled`) reaches us through an agents' srun, if at
    all: in a batch script srun has the same SIGTERM, and its step may end first."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID", "")
    if not job.isdecimal():
        return False, None
    from pm.bootstrap.slurm_job import slurm_says

    out = await slurm_says(["squeue", "--noheader", f"--jobs={job}", "--format=%T|%r"],
                           ASK_TIMEOUT)
    if out is None or not out.strip():
        return False, None
    return True, job_ending(job, out)

_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def tasks_per_node(text: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE`` expanded: ``2(x3),1`` -> [2, 2, 2, 1] (pure)."""
    out: list[int] = []
    for part in text.split(","):
        m = _TASKS.match(part.strip())
        if m is None:
            raise HostlistError(f"SLURM_TASKS_PER_NODE: cannot read {part!r} in {text!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def allocation_hosts(env: Mapping[str, str] | None = None) -> list[tuple[str, int | None]]:
    """The allocation's nodes and their task slots, from Slurm's environment.

    ``HostlistError`` when we are not inside an allocation or its variables
    cannot be read.  Slots are ``None`` when Slurm gives no per-node count (or
    a count that does not match the node list).
    """
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise HostlistError("--launcher slurm: not inside a Slurm allocation "
                            "(no SLURM_JOB_NODELIST); give the hosts with -hosts or -f")
    hosts = expand(nodelist)
    slots: list[int | None] = [None] * len(hosts)
    tasks = env.get("SLURM_TASKS_PER_NODE")
    if tasks:
        counts = tasks_per_node(tasks)
        if len(counts) == len(hosts):
            slots = list(counts)
    return list(zip(hosts, slots, strict=True))


#: srun's options for a step that pmrun gives the agents' step, and so its ranks (the
#: bootstrap option of each): the frequency slurmd sets for the step's CPUs, what Slurm's
#: profiling samples of it, how often its accounting samples, slurmstepd's log level.
STEP_OPTIONS = {"cpu_freq": "--cpu-freq", "profile": "--profile",
                "acctg_freq": "--acctg-freq", "slurmd_debug": "--slurmd-debug"}


def step_options(options: Mapping[str, Any]) -> list[str]:
    """The user's srun options for the agents' step among ``options`` (pure); with
    ``no_kill`` (srun's --no-kill), a node's failure does not end the step's other tasks;
    ``exec_args``: more of them, as a shell would split them."""
    more = ["--no-kill"] if options.get("no_kill") else []
    if options.get("exec_args"):  # (Intel MPI's -bootstrap-exec-args)
        more += shlex.split(str(options["exec_args"]))
    return [f"{opt}={options[key]}" for key, opt in STEP_OPTIONS.items() if options.get(key)
            ] + more


def step_argv(hosts: list[str], command: list[str], srun: str | None = None,
              name: str | None = None, exact: int = 0, more: Sequence[str] = ()
              ) -> list[str]:
    """The argv that runs ``command`` once on every host of ``hosts``, as one step (pure);
    ``name``: the step's (the job's ``-J``), else pm-agents; ``exact``: srun's --exact, the
    CPUs of its own the step asks for on each node, instead of sharing all of them;
    ``more``: the user's options for the step (:func:`step_options`)."""
    options = shlex.split(srun) if srun is not None else list(SRUN_OPTIONS)
    if exact and srun is None:
        options = [o for o in options if o not in ("--overlap", "--whole")]
        options += ["--exact", f"--cpus-per-task={exact}"]
    options += more
    n = len(hosts)
    return ["srun", *options, f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1",
            f"--nodelist={compress(hosts)}", f"--job-name={name or 'pm-agents'}", *command]


def srun_argv(host: str, command: list[str], srun: str | None = None,
              name: str | None = None, more: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``command`` as one task on ``host`` (pure); ``more``: as
    :func:`step_argv`'s."""
    options = [*(shlex.split(srun) if srun is not None else SRUN_OPTIONS), *more]
    return ["srun", *options, "--nodes=1", "--ntasks=1", f"--nodelist={host}",
            f"--job-name={name or 'pm-agent'}", *command]


class SlurmBootstrap(CommandBootstrap):
    """``options``: ``srun`` (option words instead of ``SRUN_OPTIONS``), ``python``, ``limit``."""

    name = "slurm"

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.srun = options.get("srun")
        self.python = options.get("python")
        #: The steps' name (the job's -J), else pm-agents.
        self.job_name = options.get("job_name")
        #: srun's --exact: the CPUs the agents' step asks for on each node (0: it shares all).
        self.exact = int(options.get("cpus", 1)) if options.get("exact") else 0
        #: srun's --cpu-freq, --profile..., for the agents' step (and so their ranks).
        self.step_options = step_options(options)
        # slurmctld handles step creation one by one: a burst only queues there.
        self.limit = int(options.get("limit", 64))
        #: Slurm said it ended the job: later task failures are its doing.
        self.ended = False
        #: Failures held back (see the module docstring): (vertex, host, line).
        self._held: list[tuple[int, str, str]] = []
        self._hold_until = 0.0
        #: No more holding: a failure held has been named, or the job is ending anyway.
        self._named = False
        self._timer: asyncio.TimerHandle | None = None

    def argv(self, host: str) -> list[str]:
        return srun_argv(host, agent_command(self.python, lean=True), self.srun, self.job_name,
                         self.step_options)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return self.run(self.argv(host), config)

    def start_tree(self, hosts: list[str], fanout: int, config: AgentConfig
                   ) -> tuple[int, int] | None:
        from pm.bootstrap.early import configured, take

        early = take(-1, compress(hosts))  # started before the head's imports
        if early is not None:
            return self.adopt(early, config, send=not configured(early))
        return self.run(self._step(hosts), config)

    def launch_step(self, hosts: list[str]) -> Piped:
        return self.launch_argv(self._step(hosts))

    def _step(self, hosts: list[str]) -> list[str]:
        return step_argv(hosts, agent_command(self.python, lean=True), self.srun,
                         self.job_name, self.exact, self.step_options)

    def error_line(self, text: str) -> bool:
        """Name the node of a failed task: the job's one line says it (with srun's words)."""
        if "lacks support for cpu binding" in text:
            return True  # our --cpu-bind=none on a cluster without task/affinity: harmless
        if self.ended and _STEP_WAIT.search(text):
            return True  # (srun waited KillWait + 2 s for ranks that outlive Slurm's end)
        ended = cancelled(text)
        if ended is not None:
            self.ended = True
            if self.on_ended is not None:
                self.on_ended(*ended)
            self.release()  # named already: what was held is only bookkeeping now
            return True
        m = _TASK_FAILED.match(text) or _NODE_FAILED.match(text)
        if m is not None and self.on_failure is not None and m.group(1) in self.hosts:
            vertex = self.hosts.index(m.group(1))
            if not self.ended and _TERMINATED.search(text):
                self._hold(vertex, m.group(1), text)
            else:
                self.on_failure(vertex, m.group(1), text)
            return True
        return False

    def _hold(self, vertex: int, host: str, text: str) -> None:
        import asyncio

        if not self._held:
            self._hold_until = time.monotonic() + SIGNAL_GRACE
            self._timer = asyncio.get_running_loop().call_later(SIGNAL_GRACE, self.release)
        self._held.append((vertex, host, text))

    def release(self) -> None:
        """Name the held failures now (the grace is over, or the job's end is known)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        self._named = True
        for vertex, host, text in held:
            if self.on_failure is not None:
                self.on_failure(vertex, host, text)

    def hold(self, pid: int, status: ExitStatus) -> float:
        """srun ended: seconds to wait before naming that, if its tasks (or srun itself)
        died of SIGTERM and Slurm has not said yet that it ended the job."""
        if self.ended or self._named:
            return 0.0
        if self._held:
            return max(0.0, self._hold_until - time.monotonic())
        if status.signal in _SLURM_SIGNALS or status.code - 128 in _SLURM_SIGNALS:
            return SIGNAL_GRACE
        return 0.0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = []
        super().close()
