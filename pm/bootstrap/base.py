"""The interface every way of starting agents implements."""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What a new agent needs to join the tree; sent on its stdin, never on argv."""

    vertex: int
    parent: str          # zmq address of the parent's ROUTER
    secret: str          # hex job secret
    job_id: str
    host: str
    log_level: int

    def to_wire(self) -> dict[str, Any]:
        return {"vertex": self.vertex, "parent": self.parent, "secret": self.secret,
                "job_id": self.job_id, "host": self.host, "log_level": self.log_level}


def agent_command(python: str | None = None) -> list[str]:
    """The argv that starts an agent with the same interpreter (-P: never import from the cwd)."""
    return [python or sys.executable, "-P", "-m", "pm.agent.main", "child"]


class Bootstrap(abc.ABC):
    """Starts one agent process on a host; the agent reads its config from stdin.

    ``start`` returns the pid of a *local* process whose lifetime is the
    agent's (the agent itself, or the ssh/srun/exec command that runs it), and
    the write end of its stdin: closing it tells the agent its parent is gone.
    """

    name: str = ""

    @abc.abstractmethod
    def start(self, host: str, config: AgentConfig) -> tuple[int, int]: ...


def get_bootstrap(name: str, options: dict[str, Any]) -> Bootstrap:
    if name in ("", "local", "fork"):
        from pm.bootstrap.local import LocalBootstrap

        return LocalBootstrap(options)
    raise ValueError(f"unknown bootstrap {name!r}")
