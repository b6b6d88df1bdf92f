"""Start agents over ssh (``--launcher ssh``).

Each agent runs ``ssh [-l USER] HOST 'python -S -P -c ... child'`` (a lean start:
``pm.bootstrap.base.agent_command``); ssh carries the agent's config on stdin and
closes it when our end closes, so the ssh process's lifetime is the agent's (the
same contract as the local
bootstrap).  Agents start their own children over ssh too (tree spawn): the
head opens at most ``fanout`` connections, and each agent at most ``limit``
at a time (``--ssh-limit``, default 32; sshd's ``MaxStartups`` refuses bursts).

``--ssh CMD`` (or Hydra's ``-launcher-exec PATH``) replaces the ssh command
(split like a shell line, e.g. ``'ssh -F ~/.ssh/cluster_config'``); the host,
then the remote command line, are appended to it.  Host names are whatever
that ssh understands: its configuration (``Host`` aliases, ``HostName``,
``ProxyJump``) decides where they lead, not DNS.  A host that is this machine
(its name, ``localhost``) runs its agent here without ssh.  The remote command
uses the same interpreter path as ours unless ``python`` is given: pmrun must
be installed there alike.

When ssh itself fails (exit status 255) its last line is the reason the job
gives for losing that node: ``Permission denied (publickey).``, ``Host key
verification failed.``, ``connect to host ... No route to host``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shlex
import socket
import subprocess
from collections.abc import Mapping
from typing import Any

from pm.bootstrap.base import agent_command, join_timeout_of
from pm.bootstrap.exec import CommandBootstrap
from pm.proto.plan import AgentConfig

log = logging.getLogger("pm.bootstrap.ssh")

#: The default ssh command: no tty (stdin is a pipe), no X11, never prompt for a password.
DEFAULT_SSH = ("ssh", "-T", "-x", "-o", "BatchMode=yes")
#: How many ssh connections one agent starts at once unless told (``--ssh-limit``).
DEFAULT_LIMIT = 32
#: The tree's fan-out over ssh unless told (``--fanout``).  Measured here (bench/hosts.py):
#: an ssh hop 0.39 s, an agent's start 0.23 s, one ssh client 75 ms of its parent's CPU;
#: the launch model then favours 8 (64 hosts: 2.5 s against 6.1 s with 32; 16,384: 6.2 s
#: against 9.1 s): a parent's clients cost more than a level's hop beyond that.
DEFAULT_FANOUT = 8


def ssh_argv(host: str, command: list[str], ssh: str | None = None,
             user: str | None = None) -> list[str]:
    """The argv that runs ``command`` on ``host`` through ``ssh`` (pure but for ``~``).

    The remote side gets one shell-quoted command line: ssh joins its words
    with spaces for the remote shell anyway, so quoting here keeps words with
    spaces whole.
    """
    if ssh:
        try:
            # No shell runs it: expand ~ ourselves ('ssh -F ~/.ssh/cluster'), on each host.
            base = [os.path.expanduser(w) if w.startswith("~") else w for w in shlex.split(ssh)]
        except ValueError as exc:
            raise ValueError(f"--ssh {ssh!r}: {exc}") from None
        if not base:
            raise ValueError("--ssh: empty command")
    else:
        base = list(DEFAULT_SSH)
    if user:
        base += ["-l", user]
    return [*base, host, shlex.join(command)]


@functools.cache
def _local_names() -> frozenset[str]:
    names = {"localhost", "localhost.localdomain", "127.0.0.1", "::1"}
    with_domain = socket.gethostname()
    names.update({with_domain, with_domain.split(".")[0]})
    return frozenset(names)


def is_this_machine(host: str) -> bool:
    """Whether ``host`` names the machine we run on (by name only: no DNS, no ssh)."""
    return host in _local_names() or host.startswith("127.")


def resolve_host(host: str, options: Mapping[str, Any]) -> str:
    """Where ssh would connect for ``host``: its ``HostName`` from ``ssh -G`` (the user's
    ssh configuration, aliases included); ``host`` itself when ssh cannot say."""
    if is_this_machine(host):
        return host
    argv = ssh_argv(host, [], options.get("ssh"), options.get("user"))[:-1]
    try:
        # ssh -G reads the configuration only (no connection): a few milliseconds.
        res = subprocess.run([*argv[:-1], "-G", argv[-1]], capture_output=True, text=True,
                             timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return host
    for line in res.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname" and value:
            return value.strip()
    return host


class SshBootstrap(CommandBootstrap):
    """``options``: ``ssh`` (command), ``user``, ``limit``, ``python`` (remote interpreter)."""

    name = "ssh"

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.ssh = options.get("ssh")
        self.user = options.get("user")
        self.python = options.get("python")
        self.limit = int(options.get("limit", DEFAULT_LIMIT))
        # An unreachable host is named by ssh itself, before the join timeout.
        self.connect_timeout = max(1, math.ceil(join_timeout_of(options)))
        ssh_argv("h", ["c"], self.ssh, self.user)  # fail early on a broken --ssh

    def argv(self, host: str) -> list[str]:
        argv = ssh_argv(host, agent_command(self.python, lean=True), self.ssh, self.user)
        if not self.ssh:
            argv[1:1] = ["-o", f"ConnectTimeout={self.connect_timeout}"]
        return argv

    def error_line(self, text: str) -> bool:
        """Only the agent's own lines are shown: ssh's words (a refused key, a changed host
        key, ...) end up, as one line, in the reason the job gives for losing the node."""
        return not text.startswith("pm-agent")

    def command(self, host: str) -> list[str]:
        return agent_command(self.python, lean=True) if is_this_machine(host) else self.argv(host)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return self.run(self.command(host), config)
