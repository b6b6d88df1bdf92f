"""The ``pm-agent serve`` service's keys and configuration file.

CURVE key pairs (``pm-agent keygen``: :func:`write_keypair`, :func:`read_keypair`,
:func:`read_public`) and the TOML configuration (:func:`load_config`, see
``deploy/pm-agent.toml``), which is read strictly: an unknown key or a value of
the wrong type is refused with one line naming it, since a service that ignored
``allowroot = true`` or read ``allow_root = "false"`` as true would do what its
administrator did not ask.  Apart from :mod:`pm.agent.service` because the head
reads keys too (``pmrun --agents``) and the service reads its configuration
again on SIGHUP.
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

log = logging.getLogger("pm.agent.service")

#: The service's port unless configured otherwise.
DEFAULT_PORT = 7300
#: PATH of job agents unless the configuration sets ``path``: systemd's default for
#: services, whatever the service's own PATH is.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What a job agent's environment always has; ``pass_env`` cannot replace these.
FIXED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "PYTHONPATH")


class KeyFileError(Exception):
    """A key or configuration file that cannot be used."""


# --------------------------------------------------------------------- keys


def write_keypair(prefix: str) -> str:
    """Write a new CURVE key pair: ``PREFIX.key`` (secret, mode 0600) and ``PREFIX.pub``.

    Refuses to overwrite an existing key file.  Returns the public key (Z85).
    """
    public, secret = zmq.curve_keypair()
    key, pub = Path(prefix + ".key"), Path(prefix + ".pub")
    for path in (key, pub):
        if path.exists():
            raise KeyFileError(f"{path} exists: not overwriting a key")
    # O_EXCL and mode 0600 at creation: the secret is never readable by others.
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# pmrun CURVE key pair: keep this file secret\n"
                f'public = "{public.decode()}"\nsecret = "{secret.decode()}"\n')
    pub.write_text(public.decode() + "\n")
    return public.decode()


def read_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``.key`` file written by :func:`write_keypair`."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None
    try:
        secret = str(data["secret"]).encode()
        public = zmq.curve_public(secret)
    except (KeyError, ValueError, zmq.ZMQError) as exc:
        raise KeyFileError(f"key file {path}: no valid secret key ({exc})") from None
    if "public" in data and str(data["public"]).encode() != public:
        raise KeyFileError(f"key file {path}: public and secret keys do not match")
    return public, secret


def read_public(text: str, base: Path | None = None) -> bytes:
    """A public key given as Z85 text (40 characters) or as the path of a ``.pub`` file."""
    text = text.strip()
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    # Z85 has '/' and '.' in its alphabet: a 40-character text is a key unless it names a file.
    if len(text) == 40 and not path.exists():
        try:
            if len(z85.decode(text.encode())) == 32:
                return text.encode()
        except (ValueError, KeyError):
            pass
    try:
        key = path.read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        raise KeyFileError(f"{text!r} is neither a public key nor a readable .pub file") from None
    try:
        if len(z85.decode(key.encode())) != 32:
            raise ValueError
    except (ValueError, KeyError):
        raise KeyFileError(f"{path}: not a public key") from None
    return key.encode()


# --------------------------------------------------------------------- configuration


@dataclass(slots=True)
class ServiceConfig:
    listen: str                          # tcp://ADDR:PORT
    key: str                             # path of the service's key pair
    clients: dict[bytes, str]            # public key (Z85) -> user the key's jobs run as
    allow_root: bool = False
    iface: str | None = None             # where job agents listen for their children
    ports: tuple[int, int] | None = None  # range of the job agents' ports
    max_agents: int = 256
    python: str = field(default_factory=lambda: sys.executable)
    path: str = DEFAULT_PATH             # PATH of job agents
    pass_env: tuple[str, ...] = ()       # service variables (names, globs) job agents get


def endpoint(listen: str) -> str:
    """``ADDR[:PORT]`` or ``tcp://ADDR:PORT`` -> ``tcp://ADDR:PORT``."""
    rest = listen.split("://", 1)[1] if "://" in listen else listen
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
        host = f"[{host}]"
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    number = int(port) if port else DEFAULT_PORT
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is not one of 0-65535")
    return f"tcp://{host or '0.0.0.0'}:{number}"


#: The configuration's keys and what each must be (for the one-line refusals).
_KEYS = {
    "listen": "an address (\"ADDR:PORT\")", "key": "a file name",
    "iface": "an interface name or address",
    "ports": "[LOW, HIGH]", "allow_root": "true or false", "max_agents": "a whole number from 1",
    "python": "a file name", "path": "a PATH string (DIR:DIR...)",
    "pass_env": "a list of variable names", "clients": "a table of user = [keys]",
}


def _check(path: str, data: dict[str, Any]) -> None:
    """Refuse what the service would misread: unknown keys (a misspelt one would be
    ignored) and values of the wrong type (``allow_root = "false"`` is a string)."""
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise KeyFileError(f"config {path}: unknown key {unknown[0]!r} (known: "
                           f"{', '.join(_KEYS)})")

    def bad(key: str) -> KeyFileError:
        value = data[key]
        what = f"the string {value!r}" if isinstance(value, str) else repr(value)
        return KeyFileError(f"config {path}: {key} must be {_KEYS[key]}, not {what}")

    for key in ("listen", "key", "iface", "python", "path"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            raise bad(key)
    if "allow_root" in data and not isinstance(data["allow_root"], bool):
        raise bad("allow_root")
    max_agents = data.get("max_agents", 1)
    if type(max_agents) is not int or max_agents < 1:
        raise bad("max_agents")
    ports = data.get("ports")
    if ports is not None and (not isinstance(ports, list) or len(ports) != 2
                              or not all(type(p) is int and 0 < p < 65536 for p in ports)
                              or ports[0] > ports[1]):
        raise bad("ports")
    pass_env = data.get("pass_env", [])
    if not isinstance(pass_env, list) or not all(isinstance(n, str) and n for n in pass_env):
        raise bad("pass_env")
    fixed = [n for n in pass_env if n in FIXED_ENV]
    if fixed:
        raise KeyFileError(f"config {path}: pass_env cannot pass {fixed[0]}: job agents "
                           "always get their own (PATH: the path key)")
    table = data.get("clients", {})
    if not isinstance(table, dict):
        raise bad("clients")
    for user, keys in table.items():
        if not (isinstance(keys, str) or (isinstance(keys, list)
                                          and all(isinstance(k, str) for k in keys))):
            raise KeyFileError(f"config {path}: [clients] {user} must be a key or a list of "
                               f"keys (.pub files or Z85 text), not {keys!r}")


def load_config(path: str | None, listen: str | None = None) -> ServiceConfig:
    """The service configuration (TOML; see ``deploy/pm-agent.toml``), checked strictly:
    :class:`KeyFileError` names the first unknown key or value of the wrong type."""
    if path is None:
        raise KeyFileError("no --config FILE given (the service's configuration: see "
                           "deploy/pm-agent.toml)")
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"config {path}: {exc}") from None
    _check(path, data)
    base = file.resolve().parent
    if "key" not in data:
        raise KeyFileError(f"config {path}: no key (the service's key pair, pm-agent keygen)")
    key = Path(data["key"]).expanduser()
    clients: dict[bytes, str] = {}
    for user, keys in data.get("clients", {}).items():
        for k in [keys] if isinstance(keys, str) else keys:
            try:
                clients[read_public(k, base)] = str(user)
            except KeyFileError as exc:
                raise KeyFileError(f"config {path}: [clients] {user}: {exc}") from None
    ports = data.get("ports")
    where = listen or data.get("listen", f"0.0.0.0:{DEFAULT_PORT}")
    try:
        address = endpoint(where)
    except ValueError:
        said = "--listen" if listen else f"config {path}: listen"
        raise KeyFileError(f"{said} must be {_KEYS['listen']} with a port of 0-65535, "
                           f"not {where!r}") from None
    cfg = ServiceConfig(
        listen=address,
        key=str(key if key.is_absolute() else base / key), clients=clients,
        allow_root=data.get("allow_root", False), iface=data.get("iface"),
        ports=(ports[0], ports[1]) if ports else None,
        max_agents=data.get("max_agents", 256),
        python=data.get("python", sys.executable),
        path=data.get("path", DEFAULT_PATH), pass_env=tuple(data.get("pass_env", ())))
    if not cfg.clients:
        log.warning("config %s: no client keys in [clients]: every job will be refused", path)
    return cfg
