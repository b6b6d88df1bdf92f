"""Start agents through a command template (``--launcher-exec``).

The template is split like a shell command line; in each word ``{host}``
becomes the host name and ``{command}`` the agent's command.  A word that is
exactly ``{command}`` becomes the agent's argv (one word each); inside a longer
word it becomes the shell-quoted command line.  Without ``{command}`` the
agent's argv is appended.  Examples::

    ip netns exec {host} {command}          network namespaces (the tests' hosts)
    docker exec -i {host} {command}         containers
    sh -c 'exec ssh -T {host} {command}'    anything a shell can say

The command runs on this machine, so its lifetime is the agent's and closing
its stdin reaches the agent: the same contract as the local bootstrap.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from pm.agent.spawn import resolve
from pm.bootstrap.base import AgentConfig, Bootstrap, agent_command
from pm.bootstrap.local import start_with_stdin


class TemplateError(ValueError):
    """An exec template that cannot be used."""


def expand_template(template: str, host: str, command: list[str]) -> list[str]:
    """The argv ``template`` gives for ``host`` and the agent ``command`` (pure)."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise TemplateError(f"--launcher-exec {template!r}: {exc}") from None
    if not words:
        raise TemplateError("--launcher-exec: empty template")
    argv: list[str] = []
    placed = False
    joined = shlex.join(command)
    for word in words:
        if word == "{command}":
            argv.extend(command)
            placed = True
            continue
        if "{command}" in word:
            placed = True
        argv.append(word.replace("{host}", host).replace("{command}", joined))
    if not placed:
        argv.extend(command)
    return argv


def start_command(argv: list[str], config: AgentConfig) -> tuple[int, int]:
    """Start ``argv`` (looked up on our PATH) with the agent config on its stdin."""
    path = resolve(argv[0], os.environ, None)
    return start_with_stdin([path, *argv[1:]], config)


class ExecBootstrap(Bootstrap):
    """``options``: ``template`` (required), ``python`` (agent interpreter, default ours)."""

    name = "exec"

    def __init__(self, options: dict[str, Any]) -> None:
        template = options.get("template")
        if not template:
            raise TemplateError("the exec launcher needs --launcher-exec TEMPLATE")
        self.template = str(template)
        self.python = options.get("python")
        expand_template(self.template, "h", ["c"])  # fail early on a broken template

    def argv(self, host: str) -> list[str]:
        return expand_template(self.template, host, agent_command(self.python))

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return start_command(self.argv(host), config)
