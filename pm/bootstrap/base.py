"""The interface every way of starting agents implements.

A bootstrap's options travel in ``JobPlan.bootstrap`` (a plain dict) to every
agent of the tree, so each agent starts its own children the same way the
head started the first level (tree spawn).  Keys every bootstrap understands:

``name``
    the module: ``local`` (fork/exec), ``exec`` (a command template),
    ``ssh``, ``slurm`` or ``persistent`` (running ``pm-agent serve`` services).
``join_timeout``
    seconds a child may take to join before the job fails naming it.
``heartbeat``
    seconds of silence after which a tree link counts as lost.
``iface``
    address or interface name agents listen on for their children.
``start``
    who starts which agent (set by ``bootstrap_options``): absent, every agent
    starts its own children (tree spawn); ``"first"``, the head starts vertex 0
    *and* vertex 0's children at once (one hop to the first two levels; those
    children learn vertex 0's address on their stdin); ``"step"``, the head
    starts every agent with one command (one Slurm step), each agent finding its
    vertex and parent itself.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Seconds a tree link may stay silent before its peer counts as lost (``--heartbeat``).
DEFAULT_HEARTBEAT = 5.0
#: Seconds a child agent may take to join the tree (``--join-timeout``).
DEFAULT_JOIN_TIMEOUT = 60.0

#: Bootstraps that start agents on this machine: vertex 0 may run in the head's process.
LOCAL_NAMES = frozenset({"", "local", "fork"})


@dataclass(frozen=True, slots=True)
class AgentConfig:
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

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "vertex": self.vertex, "parent": self.parent, "secret": self.secret,
            "job_id": self.job_id, "host": self.host, "log_level": self.log_level,
            "heartbeat": self.heartbeat}
        for key, unset in (("listen", False), ("up", -1), ("head", ""), ("hosts", ""),
                           ("fanout", 0), ("iface", "")):
            value = getattr(self, key)
            if value != unset:
                wire[key] = value
        return wire


def agent_command(python: str | None = None) -> list[str]:
    """The argv that starts an agent with the same interpreter (-P: never import from the cwd)."""
    return [python or sys.executable, "-P", "-m", "pm.agent.main", "child"]


def heartbeat_of(options: Mapping[str, Any]) -> float:
    """The link timeout the options ask for (``DEFAULT_HEARTBEAT`` if none; 0 disables)."""
    return float(options.get("heartbeat", DEFAULT_HEARTBEAT))


def join_timeout_of(options: Mapping[str, Any]) -> float:
    return float(options.get("join_timeout", DEFAULT_JOIN_TIMEOUT))


def head_relays(options: Mapping[str, Any]) -> bool:
    """Whether the head stays off the nodes: vertex 0 runs on ``hosts[0]`` like any agent.

    True for every bootstrap that reaches other machines (or network
    namespaces): the head then keeps a single tree link, to vertex 0, and runs
    no ranks itself.
    """
    if "head_only" in options:
        return bool(options["head_only"])
    return str(options.get("name", "local")) not in LOCAL_NAMES


class Bootstrap(abc.ABC):
    """Starts one agent process on a host; the agent reads its config from stdin.

    ``start`` returns the pid of a *local* process whose lifetime is the
    agent's (the agent itself, or the ssh/srun/exec command that runs it), and
    the write end of its stdin: closing it tells the agent its parent is gone.
    A bootstrap with no local process (``persistent``) returns ``(0, -1)``.
    """

    name: str = ""
    #: At most this many children of one agent are being started at once (None: no limit).
    limit: int | None = None
    #: True when the head starts every agent of the tree itself (agents then only
    #: listen for the children the head sends them).
    head_driven: bool = False
    #: Set by the caller before ``start``: told ``(vertex, host, why)`` when
    #: starting an agent failed after ``start`` returned.
    on_failure: Callable[[int, str, str], None] | None = None
    #: Set by the caller before ``start``: told ``(vertex, address)`` when a started
    #: agent reports the port it listens on for its children.
    on_report: Callable[[int, str], None] | None = None
    #: Set by the caller: told ``(why, exit status)`` when the resource manager ended the
    #: job (a cancelled allocation, its time limit).
    on_ended: Callable[[str, int], None] | None = None

    @abc.abstractmethod
    def start(self, host: str, config: AgentConfig) -> tuple[int, int]: ...

    def start_tree(self, hosts: list[str], fanout: int, config: AgentConfig
                   ) -> tuple[int, int] | None:
        """Start every agent at once (``start == "step"``); ``None``: not supported."""
        return None

    def explain(self, pid: int) -> str:
        """One line on why the command ``pid`` (started by us, now ended) failed, or ``""``."""
        return ""

    def prepare(self, hosts: list[str], fanout: int) -> None:
        """Told the job's nodes and tree fan-out before the first ``start``."""
        return None

    def close(self) -> None:
        """Release what the bootstrap holds (connections, tasks). Idempotent."""
        return None

    async def aclose(self) -> None:
        """:meth:`close`, and wait for the tasks it had to end. Idempotent."""
        self.close()


def get_bootstrap(name: str, options: dict[str, Any]) -> Bootstrap:
    """The bootstrap called ``name``, configured by ``options`` (``JobPlan.bootstrap``)."""
    if name in LOCAL_NAMES:
        from pm.bootstrap.local import LocalBootstrap

        return LocalBootstrap(options)
    if name == "exec":
        from pm.bootstrap.exec import ExecBootstrap

        return ExecBootstrap(options)
    if name == "ssh":
        from pm.bootstrap.ssh import SshBootstrap

        return SshBootstrap(options)
    if name == "slurm":
        from pm.bootstrap.slurm import SlurmBootstrap

        return SlurmBootstrap(options)
    if name == "persistent":
        from pm.bootstrap.persistent import PersistentBootstrap

        return PersistentBootstrap(options)
    raise ValueError(f"unknown bootstrap {name!r}")


def _number(extra: Mapping[str, str], key: str, opt: str, kind: type[float] | type[int],
            minimum: float) -> float | int | None:
    text = extra.get(key)
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{opt} takes a number, not {text!r}") from None
    if value < minimum:
        raise ValueError(f"{opt} must be at least {minimum:g}")
    return value


def is_template(text: str) -> bool:
    """Whether a ``--launcher-exec`` value is pmrun's template (``{host}``/``{command}``)
    rather than Hydra's meaning, the path of the ssh program to use."""
    return "{host}" in text or "{command}" in text


def bootstrap_options(extra: Mapping[str, str],
                      hosts_given: bool | Sequence[str] = False) -> dict[str, Any]:
    """The bootstrap dict (``JobPlan.bootstrap``) for the launcher options of the command line.

    ``extra`` holds the raw option values (``launcher``, ``launcher_exec``,
    ``ssh``, ``user``, ``ssh_limit``, ``agents``, ``iface``, ``join_timeout``,
    ``heartbeat``).  Without ``--launcher`` the launcher follows from the other
    options: ``--launcher-exec TEMPLATE`` means exec (``--launcher-exec PROGRAM``
    without ``{host}``/``{command}`` is Hydra's: the ssh program), ``--ssh``
    ssh, ``--agents`` persistent, hosts (``hosts_given``: their names) of which
    one is another machine ssh, as Hydra does, and a Slurm allocation (when no
    hosts are given) slurm.  ``ValueError`` names a bad option.
    """
    import os

    from pm.hostlist import batch_hostfile

    name = extra.get("launcher")
    exec_value = extra.get("launcher_exec")
    batch = False
    if not name:
        if exec_value is not None and is_template(exec_value):
            name = "exec"
        elif exec_value is not None or "ssh" in extra:
            name = "ssh"
        elif "agents" in extra:
            name = "persistent"
        elif hosts_given and not isinstance(hosts_given, bool):
            from pm.bootstrap.ssh import is_this_machine

            name = "local" if all(map(is_this_machine, hosts_given)) else "ssh"
        elif not hosts_given and os.environ.get("SLURM_JOB_NODELIST") and os.environ.get(
                "SLURM_JOB_ID"):
            name = "slurm"
        elif not hosts_given and batch_hostfile(os.environ):
            name = "ssh"  # a PBS/Torque or LSF job: its host file, reached over ssh
            batch = True
        else:
            name = "local"
    known = ("local", "fork", "ssh", "slurm", "exec", "persistent")
    if name not in known:
        raise ValueError(f"--launcher takes one of {', '.join(known)}, not {name!r}")
    opts: dict[str, Any] = {"name": name}
    for key, opt, kind, minimum in (("join_timeout", "--join-timeout", float, 0.001),
                                    ("heartbeat", "--heartbeat", float, 0.0),
                                    ("ssh_limit", "--ssh-limit", int, 1)):
        value = _number(extra, key, opt, kind, minimum)
        if value is not None:
            opts["limit" if key == "ssh_limit" else key] = value
    if "iface" in extra:
        opts["iface"] = extra["iface"]
    if name == "exec":
        if not extra.get("launcher_exec"):
            raise ValueError("--launcher exec needs --launcher-exec TEMPLATE")
        opts["template"] = extra["launcher_exec"]
        opts["start"] = "first"
    elif name == "ssh":
        if "ssh" in extra:
            opts["ssh"] = extra["ssh"]
        elif exec_value:
            opts["ssh"] = exec_value  # Hydra's -launcher-exec: the ssh program
        opts["start"] = "first"
        if "user" in extra:
            opts["user"] = extra["user"]
    elif name == "slurm":
        opts["start"] = "step"
    if batch:
        opts["batch"] = True
    elif name == "persistent":
        if not extra.get("agents"):
            raise ValueError("--launcher persistent needs --agents FILE")
        from pm.bootstrap.persistent import read_agents_file

        # The services' addresses and public keys, and the path of our key pair
        # (the secret key itself is read by the head only, never put in the plan).
        opts.update(read_agents_file(extra["agents"]))
    return opts


def default_hosts(options: Mapping[str, Any]) -> list[tuple[str, int | None]] | None:
    """Hosts a launcher brings along when none are given: the Slurm allocation, a PBS/LSF
    job's host file, or the services of an ``--agents`` file.  ``None`` for the others."""
    name = options.get("name")
    if options.get("batch"):
        import os

        from pm.hostlist import batch_hosts

        return [(h.host, h.slots) for h in batch_hosts(os.environ) or []]
    if name == "slurm":
        from pm.bootstrap.slurm import allocation_hosts

        return allocation_hosts()
    if name == "persistent":
        return [(host, None) for host in options.get("services", {})]
    return None
