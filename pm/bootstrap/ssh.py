"""Start agents over ssh (``--launcher ssh``).

Each agent runs ``ssh [-l USER] HOST 'python -P -m pm.agent.main child'``; ssh
carries the agent's config on stdin and closes it when our end closes, so the
ssh process's lifetime is the agent's (the same contract as the local
bootstrap).  Agents start their own children over ssh too (tree spawn): the
head opens at most ``fanout`` connections, and each agent at most ``limit``
at a time (``--ssh-limit``, default 32; sshd's ``MaxStartups`` refuses bursts).

``--ssh CMD`` replaces the ssh command (split like a shell line, e.g.
``'ssh -p 2222 -i ~/.ssh/cluster'``); the host, then the remote command line,
are appended to it.  The remote command uses the same interpreter path as
ours unless ``python`` is given: pmrun must be installed there alike.
"""

from __future__ import annotations

import shlex
from typing import Any

from pm.bootstrap.base import AgentConfig, Bootstrap, agent_command
from pm.bootstrap.exec import start_command

#: The default ssh command: no tty (stdin is a pipe), no X11, never prompt for a password.
DEFAULT_SSH = ("ssh", "-T", "-x", "-o", "BatchMode=yes")
#: How many ssh connections one agent starts at once unless told (``--ssh-limit``).
DEFAULT_LIMIT = 32


def ssh_argv(host: str, command: list[str], ssh: str | None = None,
             user: str | None = None) -> list[str]:
    """The argv that runs ``command`` on ``host`` through ``ssh`` (pure).

    The remote side gets one shell-quoted command line: ssh joins its words
    with spaces for the remote shell anyway, so quoting here keeps words with
    spaces whole.
    """
    if ssh:
        try:
            base = shlex.split(ssh)
        except ValueError as exc:
            raise ValueError(f"--ssh {ssh!r}: {exc}") from None
        if not base:
            raise ValueError("--ssh: empty command")
    else:
        base = list(DEFAULT_SSH)
    if user:
        base += ["-l", user]
    return [*base, host, shlex.join(command)]


class SshBootstrap(Bootstrap):
    """``options``: ``ssh`` (command), ``user``, ``limit``, ``python`` (remote interpreter)."""

    name = "ssh"

    def __init__(self, options: dict[str, Any]) -> None:
        self.ssh = options.get("ssh")
        self.user = options.get("user")
        self.python = options.get("python")
        self.limit = int(options.get("limit", DEFAULT_LIMIT))
        ssh_argv("h", ["c"], self.ssh, self.user)  # fail early on a broken --ssh

    def argv(self, host: str) -> list[str]:
        return ssh_argv(host, agent_command(self.python), self.ssh, self.user)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return start_command(self.argv(host), config)
