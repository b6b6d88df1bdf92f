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
``-T -x`` (no tty, no X11, as Hydra's ``-x``; not against ``-t``/``-X``/``-Y`` in
``--ssh``), ``ControlMaster=no`` (a master the
user already has is used; none is ever left behind), and, when neither ``--ssh``
nor the configuration files ssh reads (with their ``Include``s) name
``KexAlgorithms``, the classic ``curve25519`` exchange first: OpenSSH 9's
default, ``sntrup761x25519``, costs the client ~90 ms of CPU per connection
(measured here: 105 ms against 15 ms a client), which a head starting many
agents pays on the launch's critical path.  The post-quantum exchange stays in
the list, after it.  ``--ssh 'ssh -o KexAlgorithms=...'`` or a ``KexAlgorithms``
line in the ssh configuration keeps the user's choice.  One ``ssh -G`` (``-F
none``: the client's own defaults) stands for every host; a wrapper given as
``--ssh`` (which may read another file) is asked about each host.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

from pm.bootstrap.base import agent_command, join_timeout_of
from pm.bootstrap.exec import CommandBootstrap
from pm.common.hostlist import is_this_machine
from pm.proto.plan import AgentConfig

log = logging.getLogger("pm.bootstrap.ssh")

#: The default ssh command: no tty (stdin is a pipe), no X11, never prompt for a password.
DEFAULT_SSH = ("ssh", "-T", "-x", "-o", "BatchMode=yes")
#: How many ssh connections one agent starts at once unless told (``--ssh-limit``).
DEFAULT_LIMIT = 32
#: The tree's fan-out over ssh unless told (``--fanout``).  Measured here (bench/hosts.py):
#: an ssh hop 0.28 s, an agent's start 0.13 s, one ssh client 16 ms of its parent's CPU
#: (with :func:`tuning`'s key exchange; 113 ms with OpenSSH 9's default).  The launch model
#: then favours 16 from tens to thousands of hosts (16 hosts: 0.67 s against 1.09 s with 8;
#: 1,024: 2.01 s against 2.17 s; 16,384: 2.68 s against 2.71 s), 8 at 64 hosts (1.09 s
#: against 1.35 s): 16 is never more than 24 % off the best there, 8 up to 63 %.
DEFAULT_FANOUT = 16


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


#: (ssh command words, host) -> what ``ssh -G`` says (``{}``: it could not say).
_CONFIG: dict[tuple[tuple[str, ...], str], dict[str, str]] = {}


def _parse_g(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, value.strip())
    return out


def _ask(pairs: list[tuple[list[str], str]]) -> None:
    """Run ``ssh -G`` (the configuration only, no connection: ~6 ms of CPU) for every
    uncached (command, host) of ``pairs`` at once and cache what each says (``{}`` when
    that ssh cannot say: not OpenSSH, a wrapper that ignores -G)."""
    procs: list[tuple[tuple[tuple[str, ...], str], subprocess.Popen[str] | None]] = []
    for base, host in pairs:
        key = (tuple(base), host)
        if key in _CONFIG or any(k == key for k, _ in procs):
            continue
        try:
            procs.append((key, subprocess.Popen(
                [*base, "-G", host], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)))
        except OSError:
            procs.append((key, None))
    for key, proc in procs:
        out = ""
        if proc is not None:
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            out = out if proc.returncode == 0 else ""
        _CONFIG[key] = _parse_g(out)


def ssh_config(base: list[str], hosts: list[str]) -> dict[str, dict[str, str]]:
    """What ``ssh -G`` says for each of ``hosts`` with the command ``base`` (cached)."""
    _ask([(base, h) for h in hosts])
    return {h: _CONFIG[(tuple(base), h)] for h in hosts}


def _default_base(program: str) -> list[str]:
    """``program`` with no configuration (``-F none``): what it does when nobody chose."""
    return [program, "-F", "none"]


_KEX_LINE = re.compile(r"^\s*kexalgorithms\b", re.IGNORECASE | re.MULTILINE)
_INCLUDE = re.compile(r"^\s*include\s+(.+)$", re.IGNORECASE | re.MULTILINE)


@functools.cache
def _config_mentions_kex(base: tuple[str, ...]) -> bool | None:
    """Whether the ssh command ``base`` or a configuration file it reads names
    ``KexAlgorithms`` anywhere (for any host); None when we cannot tell: not the ssh
    program itself (a wrapper may read another file), an unreadable file.  When it
    does not, no host's key exchange was chosen and one ``ssh -G`` stands for all."""
    if os.path.basename(base[0]) != "ssh":
        return None
    words = list(base[1:])
    if any("kexalgorithms" in w.lower() for w in words):
        return True
    files: list[str] = []
    for i, w in enumerate(words):
        if w == "-F" and i + 1 < len(words):
            files = [words[i + 1]]
        elif w.startswith("-F") and len(w) > 2:
            files = [w[2:]]
    if files == ["none"]:
        return False
    user_dir = os.path.expanduser("~/.ssh")
    todo = [(f, user_dir) for f in files] or [
        (os.path.join(user_dir, "config"), user_dir), ("/etc/ssh/ssh_config", "/etc/ssh")]
    seen: set[str] = set()
    while todo:
        path, rel = todo.pop()
        if path in seen or len(seen) > 64:
            continue
        seen.add(path)
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if _KEX_LINE.search(text):
            return True
        for line in _INCLUDE.findall(text):
            try:
                patterns = shlex.split(line)
            except ValueError:  # ssh would refuse it: let ssh -G say for each host
                return None
            for pattern in patterns:
                pattern = os.path.join(rel, os.path.expanduser(pattern))
                todo += [(p, rel) for p in sorted(glob.glob(pattern))]
    return False


def _kex_choice(base: list[str], host: str) -> tuple[bool, str]:
    """(whether ``base`` is an OpenSSH client, the key exchanges pmrun puts first for
    ``host``: ``""`` when it keeps what the user's ssh does)."""
    mentions = _config_mentions_kex(tuple(base))
    default = _default_base(base[0])
    if mentions is None:
        _ask([(base, host), (default, "h")])
        kex = _CONFIG[(tuple(base), host)].get("kexalgorithms", "")
    else:
        _ask([(default, "h")])
        kex = _CONFIG[(tuple(default), "h")].get("kexalgorithms", "")
    if not kex:
        return False, ""
    algos = kex.split(",")
    fast = [a for a in algos if a not in SLOW_KEX]
    if mentions or algos[0] not in SLOW_KEX or not fast or \
            kex != _CONFIG[(tuple(default), "h")].get("kexalgorithms"):
        return True, ""
    return True, ",".join(fast + [a for a in algos if a in SLOW_KEX])


def tuning(base: list[str], host: str) -> list[str]:
    """The options pmrun adds for ``host`` after ``base`` (see the module docstring);
    none for an ssh that does not answer ``-G`` like OpenSSH."""
    openssh, kex = _kex_choice(base, host)
    if not openssh:
        return []
    # Not against the user's own words: -t (a tty), -X/-Y (X11 forwarding).
    extra = [] if {"-T", "-t", "-tt"} & set(base) else ["-T"]
    extra += [] if {"-x", "-X", "-Y"} & set(base) else ["-x"]
    if "ControlMaster=no" not in base:
        extra += ["-o", "ControlMaster=no"]
    if kex:
        extra += ["-o", "KexAlgorithms=" + kex]
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
        """Ask ``ssh -G`` what it must about all of ``hosts`` at once (before they start one
        by one): once in all, or once a host when the configuration cannot be read here."""
        base = ssh_base(self.ssh, self.user)
        pairs = [(_default_base(base[0]), "h")]
        if _config_mentions_kex(tuple(base)) is None:
            pairs += [(base, h) for h in hosts if not is_this_machine(h)]
        _ask(pairs)

    def argv(self, host: str) -> list[str]:
        argv = ssh_argv(host, agent_command(self.python, lean=True), self.ssh, self.user)
        extra = tuning(argv[:-2], host)
        if not self.ssh:
            extra += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        argv[-2:-2] = extra
        return argv

    def command(self, host: str) -> list[str]:
        # (This machine's agent: our own interpreter, whatever --agent-python says of others.)
        return agent_command(lean=True) if is_this_machine(host) else self.argv(host)

    def start(self, host: str, config: AgentConfig) -> tuple[int, int]:
        return self.run(self.command(host), config)
