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
from typing import TYPE_CHECKING, Any

from pm.agent.spawn import resolve
from pm.bootstrap.base import Bootstrap, agent_command
from pm.bootstrap.pipes import Piped

if TYPE_CHECKING:
    from pm.proto.plan import AgentConfig


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


class CommandBootstrap(Bootstrap):
    """A bootstrap that runs a command on this machine per agent (or per tree)."""

    def __init__(self) -> None:
        self._procs: dict[int, Piped] = {}
        self.hosts: list[str] = []

    def prepare(self, hosts: list[str], fanout: int) -> None:
        self.hosts = hosts

    def command(self, host: str) -> list[str]:
        """The argv that starts an agent on ``host``."""
        raise NotImplementedError

    def run(self, argv: list[str], config: AgentConfig) -> tuple[int, int]:
        """Start ``argv`` (looked up on our PATH) with the agent config on its stdin."""
        path = resolve(argv[0], os.environ, None)
        proc = Piped([path, *argv[1:]], None, dict(os.environ))
        return self.adopt(proc, config)

    def launch(self, host: str) -> Piped:
        """Start the agent command for ``host`` now; its config comes later (:meth:`adopt`)."""
        return self.launch_argv(self.command(host))

    @staticmethod
    def launch_argv(argv: list[str]) -> Piped:
        return Piped([resolve(argv[0], os.environ, None), *argv[1:]], None, dict(os.environ))

    def launch_step(self, hosts: list[str]) -> Piped:
        """Start the command that starts every agent of ``hosts`` now (config later)."""
        raise NotImplementedError

    def adopt(self, proc: Piped, config: AgentConfig, send: bool = True) -> tuple[int, int]:
        """Give ``proc`` (started by :meth:`launch`, perhaps before the loop ran) its config
        (unless ``send`` is False: it has it already) and read its output from now on."""
        proc.on_report = self._report
        proc.on_error = self._error
        proc.on_error_line = self.error_line
        if send:
            import json

            proc.write(json.dumps(config.to_wire()).encode() + b"\n")
        proc.attach()
        self._procs[proc.pid] = proc
        return proc.pid, proc.stdin

    def _report(self, vertex: int, address: str) -> None:
        if self.on_report is not None:
            self.on_report(vertex, address)

    def _error(self, vertex: int, text: str) -> None:
        if self.on_failure is not None:
            host = self.hosts[vertex] if 0 <= vertex < len(self.hosts) else ""
            self.on_failure(vertex, host, text)

    def error_line(self, text: str) -> bool:
        """A line the command wrote on stderr; True when it was dealt with (not shown).

        Only the agent's own lines are shown (it speaks as pmrun, or as pm-agent before it
        knows its job): the command's words (ssh's refused key or changed host key, a
        namespace or container that does not exist, ...) end up, as one line, in the
        reason the job gives for losing the node, said once."""
        return not text.startswith(("pmrun: ", "pm-agent"))

    def explain(self, pid: int) -> str:
        proc = self._procs.get(pid)
        if proc is None:
            return ""
        proc.drain()
        return proc.last[-1] if proc.last else ""

    def close(self) -> None:
        for proc in self._procs.values():
            proc.close()


class ExecBootstrap(CommandBootstrap):
    """``options``: ``template`` (required), ``python`` (agent interpreter, default ours)."""

    name = "exec"

    def __init__(self, options: dict[str, Any]) -> None:
        template = options.get("template")
        if not template:
            raise TemplateError("the exec launcher needs --launcher-exec TEMPLATE")
        super().__init__()
        self.template = str(template)
        self.python = options.get("python")
        expand_template(self.template, "h", ["c"])  # fail early on a broken template

    def argv(self, host: str) -> list[str]:
        return expand_template(self.template, host, agent_command(self.python))

    command = argv

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return self.run(self.argv(host), config)
