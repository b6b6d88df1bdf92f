"""Start agents inside a Slurm allocation (``--launcher slurm``).

Hosts come from ``SLURM_JOB_NODELIST`` (bracket syntax, ``pm.hostlist``) and
their slots from ``SLURM_TASKS_PER_NODE`` (``2(x3),1``).  Each agent is one
job step task: ``srun --overlap --nodes=1 --ntasks=1 --nodelist=HOST ...
python -P -m pm.agent.main child``.  Agents start their own children the same
way (tree spawn; the allocation's environment reaches them through srun), so
the head runs at most ``fanout`` sruns.

Why these srun options: ``--overlap`` lets the agent step share the nodes
with the user's other steps (and with the agents' own sruns); ``--whole``
gives the step every CPU of the node, since the agent spawns all the node's
ranks and binds them itself (``--cpu-bind=none``); ``--mpi=none`` keeps
Slurm's own PMI out of the ranks' way; ``--kill-on-bad-exit`` ends the step
when the agent fails.  ``srun`` keeps our stdin open to the agent, so closing
it still tells the agent its parent is gone.  ``options["srun"]`` replaces the
option words (for old Slurm releases without ``--overlap``/``--whole``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from pm.bootstrap.base import AgentConfig, Bootstrap, agent_command
from pm.bootstrap.exec import start_command
from pm.hostlist import HostlistError, expand

SRUN_OPTIONS = ("--overlap", "--whole", "--kill-on-bad-exit=1", "--cpu-bind=none",
                "--mpi=none", "--quiet")

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


def srun_argv(host: str, command: list[str], srun: str | None = None) -> list[str]:
    """The argv that runs ``command`` as one task on ``host`` (pure)."""
    options = shlex.split(srun) if srun is not None else list(SRUN_OPTIONS)
    return ["srun", *options, "--nodes=1", "--ntasks=1", f"--nodelist={host}",
            "--job-name=pm-agent", *command]


class SlurmBootstrap(Bootstrap):
    """``options``: ``srun`` (option words instead of ``SRUN_OPTIONS``), ``python``, ``limit``."""

    name = "slurm"

    def __init__(self, options: dict[str, Any]) -> None:
        self.srun = options.get("srun")
        self.python = options.get("python")
        # slurmctld handles step creation one by one: a burst only queues there.
        self.limit = int(options.get("limit", 64))

    def argv(self, host: str) -> list[str]:
        return srun_argv(host, agent_command(self.python), self.srun)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return start_command(self.argv(host), config)
