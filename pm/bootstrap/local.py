"""Start agents on this machine with fork/exec (``--local-nodes`` and single hosts)."""

from __future__ import annotations

import json
import os
from typing import Any

from pm.agent.spawn import spawn
from pm.bootstrap.base import Bootstrap, agent_command, site_dirs
from pm.jobenv import set_for_agent
from pm.proto.plan import AgentConfig

#: The directory pmrun is imported from.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def agent_env() -> dict[str, str]:
    """A local agent's environment: ours, with pmrun's directory on ``PYTHONPATH`` when
    pmrun is not installed (a checkout imported from the current directory, which the
    agent, started with ``-P``, does not look in): for the agent alone, its ranks get
    ours (:func:`pm.jobenv.set_for_agent`)."""
    env = dict(os.environ)
    if _ROOT not in site_dirs():
        path = env.get("PYTHONPATH")
        if _ROOT not in (path or "").split(os.pathsep):
            set_for_agent(env, "PYTHONPATH", _ROOT + (os.pathsep + path if path else ""))
    return env


def start_with_stdin(argv: list[str], config: AgentConfig, env: dict[str, str] | None = None
                     ) -> tuple[int, int]:
    """Spawn ``argv`` with a pipe on stdin carrying the config as its first line."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        # The agent's stdout must never mix with the job's output: point it at our stderr.
        # Its own process group: what the terminal sends (Ctrl-C, Ctrl-Z) reaches the
        # head alone, which passes it on down the tree; an agent, ssh or srun in the
        # terminal's group would die of a Ctrl-C, or stop at a Ctrl-Z, by itself.
        pid = spawn(argv[0], argv, env if env is not None else agent_env(),
                    fds={0: rfd, 1: 2, 2: 2}, pgid=0)
    finally:
        os.close(rfd)
    os.write(wfd, json.dumps(config.to_wire()).encode() + b"\n")
    return pid, wfd


class LocalBootstrap(Bootstrap):
    name = "local"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return start_with_stdin(agent_command(self.options.get("python"), lean=True), config)
