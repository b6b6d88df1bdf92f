"""What the user asked for (JobSpec); what the tree executes is its plan (pm.proto.plan.JobPlan)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pm.common.mapping import slots_per_node
from pm.jobenv import base_env, passed_env
from pm.options import MOST_LOCAL_NODES, MOST_RANKS
from pm.proto.errors import PMError, too_many
from pm.proto.plan import STDIN_ALL


class JobSpecError(PMError, ValueError):
    """The job cannot be run as described (no program, more ranks than allowed, ...)."""


@dataclass(slots=True)
class AppSpec:
    """One program of an (MPMD) job: ``argv`` on ``n`` ranks."""

    argv: list[str]
    n: int = 1
    env: dict[str, str] = field(default_factory=dict)
    wdir: str | None = None
    #: Hydra's -envall/-envnone/-envlist for this program (None: the job's -genv* mode).
    env_mode: str | None = None
    envlist: list[str] = field(default_factory=list)
    #: This program's own hosts (``-host`` after the first program, Open MPI's ``--host``
    #: of an app context; a host list as -hosts takes); None: the job's.
    hosts: str | None = None


@dataclass(slots=True)
class JobSpec:
    """A job as the user describes it (CLI or ``pm.run``)."""

    apps: list[AppSpec]
    genv: dict[str, str] = field(default_factory=dict)
    #: What of the launcher's environment the ranks get over their agent's own (the host's,
    #: as Hydra's proxies give theirs: :func:`pm.jobenv.own_env`): "all", all of it
    #: (Hydra's -genvall, the default); "none", none (-genvnone); "list", genvlist's
    #: (-genvlist).  "only": genvlist's alone, nothing of the hosts' (srun's --export,
    #: Flux's --env rules).  -genv/-env set theirs on top.
    env_mode: str = "all"
    genvlist: list[str] = field(default_factory=list)
    wdir: str | None = None
    label: bool = False
    #: Hydra's -prepend-pattern (``%r`` rank, ``%h`` host, ...) when labelling; None: ``[%r] ``.
    prepend: str | None = None
    #: The universe size ranks are told (PMI, MPI_UNIVERSE_SIZE); None: the job's size.
    universe_size: int | None = None
    timeout: float | None = None
    #: At the timeout, before the kill: 1, each running rank's state (PMI, process); 2, and
    #: its stack (pm.agent.state_report).
    timeout_report: int = 0
    #: srun's --open-mode=append: --output/--error files are appended to, not truncated.
    output_append: bool = False
    #: srun's --task-prolog: a program each rank runs first (pm.agent.spawn.TASK_PROLOG).
    task_prolog: str = ""
    #: srun's --task-epilog: a program run after each rank, with its environment.
    task_epilog: str = ""
    #: srun's --gpus-per-task: GPUs dealt to each rank on its node (0: none dealt).
    gpus_per_task: int = 0
    #: The ranks' NUMA memory policy (srun's ``--mem-bind`` words, e.g. "local", "rank",
    #: "map_mem:0,1"; :mod:`pm.agent.membind`); "": the kernel's default.
    mem_bind: str = ""
    #: Hydra's -memory-alloc-kinds: the memory kinds MPI is asked to support (MPI 4.1's
    #: mpi_memory_alloc_kinds, e.g. "mpi,system"; "": MPI's default).
    memory_alloc_kinds: str = ""
    #: The ranks' umask (Intel MPI's -umask); None: pmrun's own, on every host (as srun).
    umask: int | None = None
    #: Hydra's -pmi-port: ranks reach their agent at PMI_PORT as PMI_ID (no PMI_FD).
    pmi_port: bool = False
    #: Hydra's -output-from: only these ranks' output is written ("0,4-7"; "": every rank's).
    output_from: str = ""
    #: srun's --propagate: the resource limits (pm.agent.rlimits names) the ranks get from
    #: pmrun's process on every node.
    propagate: list[str] = field(default_factory=list)
    #: srun's --signal: (signal, seconds before the timeout) every rank gets it then.
    signal_before_end: tuple[int, float] | None = None
    #: ... inside a Slurm job without a timeout: the job's end, (seconds left, when they
    #: were asked, as time.monotonic()); slurmctld's word (pm.bootstrap.slurm_job).
    slurm_end: tuple[float, float] | None = None
    #: srun's -W (--wait): seconds the other ranks may run on once one ended (None: as
    #: long as they take).
    wait_after_first: float | None = None
    #: srun's --quit-on-interrupt: the first Ctrl-C kills the job at once (as a second does).
    quit_on_interrupt: bool = False
    ppn: int | None = None
    #: srun's --bcast: the programs are copied to the nodes, whose ranks run the copies
    #: (:mod:`pm.common.bcast`); None: not, "": to each node's temporary directory, a path
    #: ending in / to that directory, another path to that file.
    bcast: str | None = None
    #: srun's --pty: the stdin rank runs on a pseudo-terminal (pm.agent.spawn.RankFds).
    pty: bool = False
    #: srun's --send-libs: the programs' shared libraries go along (outside the system's).
    send_libs: bool = False
    #: What --bcast copies (:func:`pm.common.bcast.read_programs`, read once by pmrun).
    bcast_files: list[Any] = field(default_factory=list)
    #: srun's --no-kill: a lost node (its agent gone) is named and the other nodes' ranks
    #: run on, the first failure's status the job's.
    no_kill: bool = False
    #: A rank that fails ends the job (srun's -K, Hydra's default); False: the others run
    #: on (Hydra's -disable-auto-cleanup), the first failure's status the job's.
    kill_on_bad_exit: bool = True
    #: srun's rank distribution over the nodes: "block", "cyclic" or "plane=N"
    #: (:func:`pm.common.mapping.place`).
    distribution: str = "block"
    #: How the ranks a node got are numbered (Open MPI's --rank-by): "" as the
    #: distribution lays them, "block" a node's consecutive, "cyclic" one a node in turn.
    rank_by: str = ""
    #: Each rank's node, given (Open MPI's rankfile): placement and numbering alone say
    #: nothing then; and each rank's cores there (a rankfile's slot=, "" for none).
    placement: list[int] = field(default_factory=list)
    rank_slots: list[str] = field(default_factory=list)
    kvs: str = "shm"
    bind_to: str = "none"
    #: The option --bind-to came from, as given (``--cpu-list 0,2``), for its errors.
    bind_spelled: str = ""
    map_by: str = "core"
    report_bindings: bool = False
    #: Each rank's stderr is its stdout (Open MPI's --merge-stderr-to-stdout).
    merge_stderr: bool = False
    #: The ranks' output passed on as it comes, not line by line (srun's -u).
    unbuffered: bool = False
    profile: str | None = None
    #: Files for the ranks' stdout / stderr instead of the launcher's (pm.common.outfiles patterns).
    output: str | None = None
    error: str | None = None
    #: Every output line starts with the time it is written (Open MPI's --timestamp-output).
    timestamp: bool = False
    #: Node memory watermarks for the ranks' ``pmi.reserve`` (sizes or "NN%"; None: 90/80 %),
    #: and what to do with a reservation's rank using more than it reserved.
    mem_high: str | None = None
    mem_low: str | None = None
    mem_overrun: str = "warn"
    #: Which PMI the ranks need beyond PMI-1/PMI-2: "pmix" also serves PMIx, "pmi" (or
    #: "none") does not, "auto" looks at the programs (pm.agent.pmix_detect).
    mpi: str = "auto"
    #: The rank that reads the launcher's stdin (the others read /dev/null);
    #: ``pm.proto.plan.STDIN_ALL``: every rank reads it.
    stdin_rank: int = 0
    #: A file every rank reads as its stdin, opened on its node (srun's ``-i FILE``).
    stdin_file: str | None = None

    @property
    def size(self) -> int:
        return sum(a.n for a in self.apps)

    def validate(self) -> None:
        if not self.apps:
            raise JobSpecError("no program to run")
        for i, app in enumerate(self.apps):
            if not app.argv:
                raise JobSpecError(f"program {i} has no command")
            if not all(isinstance(word, str) for word in app.argv):
                raise JobSpecError(f"program {i}: its words must be strings: {app.argv!r}")
            counted(f"program {app.argv[0]}: -n", app.n, MOST_RANKS)
            check_env(app.env)
        check_env(self.genv)
        for mode in (self.env_mode, *(a.env_mode for a in self.apps if a.env_mode)):
            if mode not in ("all", "none", "list", "only"):
                raise JobSpecError(f"bad environment mode {mode!r}")
        if self.kvs not in ("shm", "socket"):
            raise JobSpecError(f"--kvs takes shm or socket, not {self.kvs!r}")
        if self.universe_size is not None and self.universe_size < 1 and self.universe_size != -1:
            raise JobSpecError("the universe size must be at least 1 (or -1: no limit)")
        d = self.distribution
        if d not in ("block", "cyclic") and not (
                d.startswith("plane=") and d[len("plane="):].isdecimal() and int(d[6:]) >= 1):
            raise JobSpecError(f"the distribution is block, cyclic or plane=N, not {d!r}")
        if self.mpi not in ("auto", "pmix", "pmi", "none"):
            raise JobSpecError(f"--mpi takes pmix, pmi, none or auto, not {self.mpi!r}")
        if self.timeout is not None and not (
                isinstance(self.timeout, int | float) and 0 < self.timeout < float("inf")):
            raise JobSpecError(f"--timeout must be a positive number of seconds, not "
                               f"{self.timeout!r}")
        w = self.wait_after_first
        if w is not None and not (isinstance(w, int | float) and 0 < w < float("inf")):
            raise JobSpecError(f"the wait after a rank's end (-W) must be a positive number "
                               f"of seconds, not {w!r}")
        if not 0 <= self.stdin_rank < self.size and self.stdin_rank != STDIN_ALL:
            raise JobSpecError(f"stdin goes to rank {self.stdin_rank}, not one of the job's "
                               f"{self.size} ranks")
        if self.mem_bind:
            from pm.agent.membind import parse

            try:
                parse(self.mem_bind)
            except ValueError as exc:
                raise JobSpecError(f"--mem-bind: {exc}") from None
        if self.mem_overrun not in ("warn", "kill", "suspend"):
            raise JobSpecError(
                f"--mem-overrun takes warn, kill or suspend, not {self.mem_overrun!r}")
        for opt, size in (("--mem-high", self.mem_high), ("--mem-low", self.mem_low)):
            if size is not None:
                from pm.agent.admission import SizeError, parse_size

                try:
                    parse_size(size, total=1 << 40)  # the node's total is known on the node
                except SizeError as exc:
                    raise JobSpecError(f"{opt}: {exc}") from None

    def base_env(self, launcher_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The whole environment of what runs with no agent's own underneath: the task
        runner's tasks (:func:`pm.jobenv.base_env`)."""
        src = os.environ if launcher_env is None else launcher_env
        return base_env(self.env_mode, self.genvlist, self.genv, src)

    def plan_env(self, launcher_env: Mapping[str, str] | None = None
                 ) -> tuple[dict[str, str], list[dict[str, str]]]:
        """What pmrun passes the ranks (:func:`pm.jobenv.passed_env`), as the job's part
        and each program's own part (``JobPlan.env`` and the apps' env): a rank gets the
        job's, updated with its program's, over its agent's environment."""
        src = os.environ if launcher_env is None else launcher_env
        base = passed_env(self.env_mode, self.genvlist, self.genv, src)
        if not any(a.env_mode for a in self.apps):
            return base, [a.env for a in self.apps]
        # A program with its own -env* mode: what all programs share goes in the job's
        # environment, the rest in each program's (the agents merge them as always).
        full = [{**(passed_env(a.env_mode, a.envlist, self.genv, src) if a.env_mode
                    else base), **a.env} for a in self.apps]
        common = {k: val for k, val in full[0].items()
                  if all(f.get(k) == val for f in full[1:])}
        # A variable every program has, but not with the same value, or one some lack: the
        # programs that have it carry it.
        return common, [{k: val for k, val in f.items() if k not in common} for f in full]


def counted(what: str, value: object, most: int, least: int = 1) -> int:
    """``value`` if it is a whole number from ``least`` to ``most``, else
    :class:`JobSpecError` naming ``what`` (a Python caller's ``n=2.5`` or ``"4"`` too)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise JobSpecError(f"{what} must be a whole number, not {value!r}")
    if value < least:
        raise JobSpecError(f"{what} must be at least {least}, got {value}")
    if value > most:
        raise JobSpecError(too_many(what, value, most))
    return value


def check_env(env: Mapping[Any, Any]) -> None:
    """:class:`JobSpecError` unless ``env`` maps variable names to strings a process can
    be given (no ``=`` in a name, no NUL byte anywhere)."""
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise JobSpecError(f"{name!r} is not an environment variable name")
        if not isinstance(value, str) or "\0" in value:
            raise JobSpecError(f"environment variable {name}: its value must be a string "
                               f"without NUL bytes, not {value!r}")


def check_nodes(local_nodes: object, fanout: object) -> None:
    """A Python caller's ``local_nodes`` and ``fanout``, checked as the command line's."""
    counted("local_nodes", local_nodes, MOST_LOCAL_NODES)
    counted("fanout", fanout, MOST_RANKS)


def sequence_slots(spec: JobSpec, nodes: int, given: Sequence[int | None]) -> list[int]:
    """Slots per node: -ppn wins, then the host list's slots, else an even block split."""
    if spec.ppn is not None and spec.ppn < 1:
        raise JobSpecError("-ppn must be at least 1")
    return slots_per_node(spec.size, spec.ppn, nodes, given)
