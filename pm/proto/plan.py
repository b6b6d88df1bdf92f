"""What an agent is given: its config (how to join the tree) and the job plan (what to run).

Both are typed records (:class:`pm.proto.record.Record`).  The plan travels
down the tree in :class:`pm.proto.tree_wire.Launch` (and ``SpawnLaunch``); the
config on an agent's stdin as one JSON line (it crosses ssh, srun and exec
templates as text) and inside a persistent service's ``Start`` request, and is
checked field by field where it arrives (:meth:`AgentConfig.from_wire`).
"""

from __future__ import annotations

from typing import Any

from pm.proto.errors import ProtocolError
from pm.proto.record import Record

__all__ = ["DEFAULT_HEARTBEAT", "AgentConfig", "AppPlan", "JobPlan", "SpawnOrigin"]

#: Seconds a tree link may stay silent before its peer counts as lost (``--heartbeat``).
DEFAULT_HEARTBEAT = 5.0
#: ``stdin_rank`` of a job whose every rank reads the launcher's stdin (``--stdin all``).
STDIN_ALL = -1


class AppPlan(Record):
    """One program of the job (MPMD: several), run by ``n`` ranks numbered after the
    previous program's."""

    argv: list[str]
    n: int
    #: What the program's ranks add to the job's environment.
    env: dict[str, str]
    wdir: str | None


class BcastFile(Record):
    """A program copied to every node of the job (srun's ``--bcast``, :mod:`pm.common.bcast`)."""

    #: The programs (indexes in the job) that run it: their ranks run the copy.
    apps: list[int]
    #: Its file name (the copy's name ends in it).
    name: str
    data: bytes
    #: srun's ``--send-libs``: the shared libraries it loads from outside the system's
    #: folders (soname -> contents), put in a folder beside the copy that its ranks'
    #: ``LD_LIBRARY_PATH`` starts with.
    libs: dict[str, bytes] = {}


class SpawnOrigin(Record):
    """What a spawned job (``MPI_Comm_spawn``, :mod:`pm.spawned_jobs`) carries of its making."""

    #: Its number in the run.
    job: int
    #: The vertex of each rank.
    placement: list[int]
    #: Keys in its KVS from the start.
    preput: dict[str, str]
    #: The spawner's kvsname.
    spawner: str
    #: The spawner's rank (PMIx's ``PMIX_PARENT_ID``).
    spawner_rank: int = 0
    #: Its agents report when its ranks there need their spawner (pm.agent.spawn_answer):
    #: the spawner is answered then (:attr:`pm.proto.spawn.SpawnRequest.after_init`).
    after_init: bool = False


class JobPlan(Record):
    """Everything an agent needs to run its part of a job; travels in ``Launch``."""

    _nested = {"apps": [AppPlan], "spawned": SpawnOrigin, "bcast": [BcastFile]}

    job_id: str
    kvsname: str
    size: int
    #: One entry per node (tree vertex): host name, and how many ranks it may take per pass.
    hosts: list[str]
    slots: list[int]
    fanout: int
    #: The programs; ranks are numbered program after program.
    apps: list[AppPlan]
    #: What pmrun passes every rank (:func:`pm.jobenv.passed_env`), over its agent's own
    #: environment (:func:`pm.jobenv.own_env`, as Hydra's proxies give theirs).
    env: dict[str, str]
    mapping: str
    label: bool = False
    kvs: str = "shm"
    bind_to: str = "none"
    #: The option the binding came from, as given (:attr:`pm.jobspec.JobSpec.bind_spelled`).
    bind_spelled: str = ""
    map_by: str = "core"
    report_bindings: bool = False
    #: Each rank's stderr is its stdout (one pipe: the order it wrote them).
    merge_stderr: bool = False
    #: Output passed on as it comes, partial lines too (srun's -u).
    unbuffered: bool = False
    timeout: float | None = None
    profile: bool = False
    #: How child agents are started: bootstrap name and its options (each launcher's own).
    bootstrap: dict[str, Any] = {}
    #: Ranks emulated in-process per agent (0: real processes).
    sim_ranks: int = 0
    #: The simulation's settings (:class:`pm.agent.sim.SimOptions` as a map).
    sim: dict[str, Any] = {}
    #: Memory watermarks for ``reserve`` on each node, as in JobSpec.
    mem_high: str | None = None
    mem_low: str | None = None
    mem_overrun: str = "warn"
    #: The universe size ranks are told (None: the job's size).
    universe_size: int | None = None
    #: Serve PMIx to the ranks too (pm.agent.pmix_job).
    pmix: bool = False
    #: Set for a job made by a spawn.
    spawned: SpawnOrigin | None = None
    #: The rank that reads the launcher's stdin (:data:`STDIN_ALL`: every rank).
    stdin_rank: int = 0
    #: A file every rank reads as its stdin instead ("": none).
    stdin_file: str = ""
    #: How ranks are dealt to the nodes' slots: "block", "cyclic" or "plane=N"
    #: (:func:`pm.common.mapping.place`).
    distribution: str = "block"
    #: Programs with hosts of their own (Open MPI's ``--host`` per app context): each
    #: program's nodes and its slots on them (:func:`pm.common.mapping.place_apps`); empty:
    #: every program on every node, by ``slots``.
    app_nodes: list[list[int]] = []
    app_slots: list[list[int]] = []
    #: The launcher's working directory: where a program without a ``wdir`` runs, on
    #: every node where it exists (as Hydra, Open MPI and srun do); "": the agent's own.
    cwd: str = ""
    #: Open MPI's ``--rank-by``: how each node's ranks are numbered once placed, "block" or
    #: "cyclic" (:func:`pm.common.mapping.ranked`); "": as placed.
    rank_by: str = ""
    #: Each rank's node, given (Open MPI's rankfile); empty: placed as above.
    placement: list[int] = []
    #: Each rank's rankfile slot (its cores on its node, :mod:`pm.common.rankfile`; ""
    #: unbound); empty: no rankfile binding.
    rank_slots: list[str] = []
    #: srun's ``--task-prolog``: a program each rank runs first, in its own process and
    #: environment (:data:`pm.agent.spawn.TASK_PROLOG`); "": none.
    task_prolog: str = ""
    #: srun's ``--task-epilog``: a program the agent runs once a rank ended, with the
    #: rank's environment, before it reports the end (:mod:`pm.agent.ranks`); "": none.
    task_epilog: str = ""
    #: srun's ``--propagate``: soft resource limits (name -> value, -1 unlimited) the ranks
    #: get on every node (:mod:`pm.agent.rlimits`).
    rlimits: dict[str, int] = {}
    #: srun's ``--gpus-per-task``: GPUs dealt to each rank of a node (:mod:`pm.agent.gpus`);
    #: 0: the ranks see what they would.
    gpus_per_task: int = 0
    #: srun's ``--mem-bind`` / Hydra's ``-membind``: the ranks' NUMA memory policy, as
    #: :mod:`pm.agent.membind` spells it; "": the kernel's default.
    mem_bind: str = ""
    #: PMI job attributes the agents answer as given (Hydra's ``-memory-alloc-kinds``:
    #: ``PMI_mpi_memory_alloc_kinds``), besides those they know themselves.
    job_attrs: dict[str, str] = {}
    #: srun's ``--bcast``: the programs every node runs a copy of, and where the copies go
    #: (:func:`pm.common.bcast.dest_path`: "" the node's temporary directory).
    bcast: list[BcastFile] = []
    bcast_dest: str = ""
    #: srun's ``--pty``: the stdin rank runs on a pseudo-terminal of this size (rows,
    #: columns; 0 0: the terminal's default) that its agent makes; []: none.
    pty: list[int] = []
    #: The ranks' file mode creation mask on every node (pmrun's own unless told: a host
    #: reached over ssh would give its session's); -1: the agent's own.
    umask: int = -1
    #: Hydra's ``-pmi-port``: each node's ranks connect to its agent's loopback port
    #: (``PMI_PORT``) as ``PMI_ID`` instead of inheriting a socket (``PMI_FD``).
    pmi_port: bool = False
    #: The ranks start from their agent's own environment, ``env`` over it; False: from
    #: ``env`` alone (srun's ``--export``, Flux's ``--env`` rules: nothing of the host's).
    host_env: bool = True

    def node_of_rank(self) -> list[int]:
        """The node (index into :attr:`hosts`) of each rank."""
        from pm.common.mapping import job_placement

        return job_placement([a.n for a in self.apps], self.slots, self.distribution,
                             self.app_nodes, self.app_slots, self.rank_by, self.placement)

    def app_of_rank(self, rank: int) -> int:
        first = 0
        for i, app in enumerate(self.apps):
            first += app.n
            if rank < first:
                return i
        raise IndexError(rank)


class AgentConfig(Record):
    """What a new agent needs to join the tree; sent on its stdin, never on argv."""

    vertex: int
    parent: str          # zmq address of the parent's ROUTER
    secret: str          # hex job secret
    job_id: str
    host: str
    log_level: int
    heartbeat: float = DEFAULT_HEARTBEAT
    #: Open our port for children before joining and report its address on stdout.
    listen: bool = False
    #: With ``parent == ""``: the vertex whose address comes later on our stdin.
    up: int = -1
    #: The head's address (where to route from when our parent is not known yet).
    head: str = ""
    #: ``start == "step"``: all hosts (compressed list) and the fan-out, to find our place.
    hosts: str = ""
    fanout: int = 0
    iface: str = ""
    #: Ports a persistent service's job agent may listen on (``None``: any).
    ports: list[int] | None = None

    @classmethod
    def from_wire(cls, values: Any) -> Any:
        """The config in ``values``, each field of the type it must have; :class:`ProtocolError`
        names the first that is not (a service takes these from the network)."""
        cfg = super().from_wire(values)
        for name in cls._fields:
            value = getattr(cfg, name)
            kind = _KINDS[name]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ProtocolError(f"agent config: bad field {name!r}")
        if cfg.ports is not None and (len(cfg.ports) != 2 or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in cfg.ports)):
            raise ProtocolError("agent config: bad field 'ports'")
        return cfg


_KINDS: dict[str, type | tuple[type, ...]] = {
    "vertex": int, "parent": str, "secret": str, "job_id": str, "host": str, "log_level": int,
    "heartbeat": (int, float), "listen": bool, "up": int, "head": str, "hosts": str,
    "fanout": int, "iface": str, "ports": (list, type(None)),
}
