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

Options pmrun adds (:func:`tuning`), to an OpenSSH client only (one that answers
``ssh -G``), after the user's words so the ssh configuration still decides the rest:
``-T -x`` (no tty, no X11, as Hydra's ``-x``), ``ControlMaster=no`` (a master the
user already has is used; none is ever left behind), and, when neither the
configuration nor ``--ssh`` chose the key exchange, the classic ``curve25519``
exchange first: OpenSSH 9's default, ``sntrup761x25519``, costs the client ~90 ms
of CPU per connection (measured here: 105 ms against 15 ms a client), which a
head starting many agents pays on the launch's critical path.  The post-quantum
exchange stays in the list, after it.  ``--ssh 'ssh -o KexAlgorithms=...'`` or
the ssh configuration's ``KexAlgorithms`` keeps the user's choice.
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


#: Key exchanges that cost the client far more CPU than curve25519 (post-quantum hybrids).
SLOW_KEX = ("sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com",
            "mlkem768x25519-sha256")


def ssh_base(ssh: str | None = None, user: str | None = None) -> list[str]:
    """The ssh command's words before the host (``--ssh`` split, ``-l USER``)."""
    return ssh_argv("h", [], ssh, user)[:-2]


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


#: (ssh command words, host) -> what ``ssh -G`` says (``{}``: it could not say).
_CONFIG: dict[tuple[tuple[str, ...], str], dict[str, str]] = {}


def _parse_g(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, value.strip())
    return out


def ssh_config(base: list[str], hosts: list[str]) -> dict[str, dict[str, str]]:
    """What ``ssh -G`` (the configuration only, no connection: ~6 ms of CPU) says for each
    of ``hosts`` with the command ``base``; cached, and run for all uncached hosts at once.
    ``{}`` for a host when that ssh cannot say (not OpenSSH, a wrapper that ignores -G)."""
    key = tuple(base)
    todo = [h for h in dict.fromkeys(hosts) if (key, h) not in _CONFIG]
    procs: list[tuple[str, subprocess.Popen[str] | None]] = []
    for host in todo:
        try:
            procs.append((host, subprocess.Popen(
                [*base, "-G", host], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)))
        except OSError:
            procs.append((host, None))
    for host, proc in procs:
        out = ""
        if proc is not None:
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            out = out if proc.returncode == 0 else ""
        _CONFIG[(key, host)] = _parse_g(out)
    return {h: _CONFIG[(key, h)] for h in hosts}


def _default_kex(program: str) -> str:
    """The key exchanges ``program`` uses when no configuration chooses (``-F none``)."""
    return ssh_config([program, "-F", "none"], ["h"])["h"].get("kexalgorithms", "")


def tuning(base: list[str], host: str) -> list[str]:
    """The options pmrun adds for ``host`` after ``base`` (see the module docstring);
    none for an ssh that does not answer ``-G`` like OpenSSH."""
    conf = ssh_config(base, [host])[host]
    kex = conf.get("kexalgorithms")
    if not kex:
        return []
    extra = [w for w in ("-T", "-x") if w not in base]
    if "ControlMaster=no" not in base:
        extra += ["-o", "ControlMaster=no"]
    algos = kex.split(",")
    if algos[0] in SLOW_KEX and kex == _default_kex(base[0]):
        fast = [a for a in algos if a not in SLOW_KEX]
        if fast:
            extra += ["-o", "KexAlgorithms=" + ",".join(fast + [a for a in algos
                                                               if a in SLOW_KEX])]
    return extra


def resolve_host(host: str, options: Mapping[str, Any]) -> str:
    """Where ssh would connect for ``host``: its ``HostName`` from ``ssh -G`` (the user's
    ssh configuration, aliases included); ``host`` itself when ssh cannot say."""
    if is_this_machine(host):
        return host
    base = ssh_base(options.get("ssh"), options.get("user"))
    return ssh_config(base, [host])[host].get("hostname") or host


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

    def prefetch(self, hosts: list[str]) -> None:
        """Ask ``ssh -G`` about all of ``hosts`` at once (before they are started one by one)."""
        ssh_config(ssh_base(self.ssh, self.user), [h for h in hosts if not is_this_machine(h)])

    def argv(self, host: str) -> list[str]:
        argv = ssh_argv(host, agent_command(self.python, lean=True), self.ssh, self.user)
        extra = tuning(argv[:-2], host)
        if not self.ssh:
            extra += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        argv[-2:-2] = extra
        return argv

    def error_line(self, text: str) -> bool:
        """Only the agent's own lines are shown: ssh's words (a refused key, a changed host
        key, ...) end up, as one line, in the reason the job gives for losing the node."""
        return not text.startswith("pm-agent")

    def command(self, host: str) -> list[str]:
        return agent_command(self.python, lean=True) if is_this_machine(host) else self.argv(host)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return self.run(self.command(host), config)
