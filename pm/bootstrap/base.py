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
from typing import TYPE_CHECKING, Any

from pm.proto.errors import DEPENDENCIES

if TYPE_CHECKING:
    from pm.agent.watch import ExitStatus
    from pm.proto.plan import AgentConfig

#: Seconds a child agent may take to join the tree (``--join-timeout``).
DEFAULT_JOIN_TIMEOUT = 60.0

#: Bootstraps that start agents on this machine: vertex 0 may run in the head's process.
LOCAL_NAMES = frozenset({"", "local", "fork"})


def step_cpus(node_of_rank: Sequence[int], bind_to: str) -> int:
    """srun's ``--exact``: the CPUs the agents' step asks for on each node, as many as its
    busiest node's ranks take (N each with ``core:N``/``hwthread:N``, ``-c N``; else 1)."""
    counts: dict[int, int] = {}
    for node in node_of_rank:
        counts[node] = counts.get(node, 0) + 1
    each = bind_to.split(":")[1] if ":" in bind_to else ""
    return max(counts.values(), default=1) * (int(each) if each.isdecimal() and int(each) else 1)


def agent_command(python: str | None = None, lean: bool = False) -> list[str]:
    """The argv that starts an agent with the same interpreter (-P: never import from the cwd).

    ``lean``: without the ``site`` module (``-S``), our site directories put on the path
    by hand.  ``site`` reads every ``.pth`` file of every site directory at each start
    (40 ms of CPU here, as much as the interpreter itself), and an agent per node pays it
    on the critical path of a launch.  If pmrun or pyzmq is not found that way (an
    editable install's import hook, other directories there), the agent runs ``site``
    after all.  Only where we know how the argv reaches the interpreter (the local
    launcher starts it, ssh and srun get it quoted by us): the code has spaces and new
    lines, which a user's exec template may hand to one more shell (``ssh {host}
    {command}``).
    """
    exe = python or sys.executable
    if not lean:
        return [exe, "-P", "-m", "pm.agent.main", "child"]
    return [exe, "-S", "-P", "-c", lean_code(site_dirs()), "child"]


def site_dirs() -> list[str]:
    """Our interpreter's site directories (where pyzmq and msgpack live)."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]


#: How a lean agent that lacks pmrun, or a dependency of its, says so (its last words).
NOT_INSTALLED = " is not installed for "


def lean_code(dirs: Sequence[str], module: str = "pm.agent.main", who: str = "pm-agent"
              ) -> str:
    """The ``-c`` program of a lean agent (see :func:`agent_command`): ``module``'s
    ``main(argv)`` run with the program's arguments, ``who`` naming it if pmrun or a
    dependency is missing."""
    # (importlib.machinery is loaded at every start; importlib.util would cost 4 ms of CPU.
    # No garbage collection while the agent imports: nothing to collect, 1 ms of CPU of
    # passes over what the imports made; the agent turns it back on.)
    return (f"import gc,sys;gc.disable();sys.path+={list(dirs)!r};from importlib.machinery "
            "import PathFinder as f\n"
            "if not all(map(f.find_spec,('pm','zmq','msgpack'))):import site;site.main()\n"
            f"try:from {module} import main;c=main(sys.argv[1:])\n"
            # pmrun, or a dependency of its, missing on this host: said in one line.
            "except ModuleNotFoundError as e:\n"
            f" n=(e.name or'').split('.')[0];d={dict(DEPENDENCIES, pm='pmrun')!r}\n"
            " if n not in d:raise\n"
            f" sys.exit({who + ': %s' + NOT_INSTALLED + '%s on this host (No module named %r)'!r}"
            "%(d[n],sys.executable,n))\n"
            "sys.exit(c)")


def step_config(*, secret: bytes, job_id: str, address: str, level: int,
                options: Mapping[str, Any], hosts: str, fanout: int) -> AgentConfig:
    """The config line of every agent of one Slurm step (``start == "step"``, vertex -1),
    the head listening at ``address``: what pmrun's quick check tells an early step
    (:mod:`pm.bootstrap.early`) and what the head would tell it must be the same line."""
    from pm.proto.plan import AgentConfig

    return AgentConfig(-1, secret=secret.hex(), job_id=job_id, host="", log_level=level,
                       heartbeat=heartbeat_of(options), head=address,
                       iface=str(options.get("iface") or ""), hosts=hosts, fanout=fanout,
                       parent=address)


def heartbeat_of(options: Mapping[str, Any]) -> float:
    """The link timeout the options ask for (``DEFAULT_HEARTBEAT`` if none; 0 disables)."""
    from pm.proto.plan import DEFAULT_HEARTBEAT

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

    def late(self, vertex: int) -> str:
        """Why ``vertex``'s agent has not joined within the join timeout, if the bootstrap
        knows better than that it did not (``""``)."""
        return ""

    def explain(self, pid: int) -> str:
        """One line on why the command ``pid`` (started by us, now ended) failed, or ``""``."""
        return ""

    def hold(self, pid: int, status: ExitStatus) -> float:
        """Seconds to wait before naming the end of the command ``pid`` (0: at once): a
        resource manager's word on why may be on its way (``pm.bootstrap.slurm``)."""
        return 0.0

    def release(self) -> None:
        """Name the failures held back (the job is ending anyway). Idempotent."""
        return None

    def prepare(self, hosts: list[str], fanout: int) -> None:
        """Told the job's nodes and tree fan-out before the first ``start``."""
        return None

    def close(self) -> None:
        """Release what the bootstrap holds (connections, tasks). Idempotent."""
        return None

    async def aclose(self) -> None:
        """:meth:`close`, and wait for the tasks it had to end. Idempotent."""
        self.close()
