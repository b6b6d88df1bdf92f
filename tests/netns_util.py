"""Hosts for multi-node tests: network namespaces on a bridge of their own.

``NetnsHosts(n)`` makes ``n`` namespaces ``pm<k>h1 .. pm<k>hN``, each with
``lo`` up and one veth (``eth0`` inside, ``pm<k>v<i>`` outside) enslaved to a
bridge ``pm<k>br`` in the root namespace.  Addresses come from
``10.213.<k>.0/24``: host i is ``.i``, the bridge (where the head listens) is
``.254``.  ``k`` starts at 7 and moves on when a bridge of that name exists, so
two test runs do not collide.  All traffic stays between these namespaces and
the root namespace.

``close()`` kills every process left in the namespaces (``ip netns pids``),
then removes them and the bridge; use the object as a context manager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

EXEC_TEMPLATE = "ip netns exec {host} {command}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def netns_missing() -> str | None:
    """Why namespace hosts cannot be made here (``None`` when they can)."""
    if os.geteuid() != 0:
        return "network namespace hosts need root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = f"pmprobe{uuid.uuid4().hex[:6]}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"ip netns add failed: {res.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    res = _ip("link", "add", f"{probe}b", "type", "bridge", check=False)
    if res.returncode != 0:
        return f"cannot create a bridge: {res.stderr.strip()}"
    _ip("link", "del", f"{probe}b", check=False)
    return None


class NetnsHosts:
    """``n`` namespace hosts on a private bridge (see the module docstring)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.names: list[str] = []
        self.k = 0
        self.bridge = ""
        self._made: list[str] = []
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        for k in range(7, 250):
            bridge = f"pm{k}br"
            if _ip("link", "add", bridge, "type", "bridge", check=False).returncode == 0:
                self.k, self.bridge = k, bridge
                break
        else:
            raise RuntimeError("no free pm<k>br bridge name")
        _ip("addr", "add", f"{self.bridge_addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.n + 1):
            ns = f"pm{self.k}h{i}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            self.names.append(ns)
            veth = self.veth(i - 1)
            _ip("link", "del", veth, check=False)  # an orphan of an earlier run, if any
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i - 1)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    # ------------------------------------------------------------------ facts
    @property
    def bridge_addr(self) -> str:
        """The root namespace's address on the bridge (give it to ``--iface``)."""
        return f"10.213.{self.k}.254"

    def addr(self, i: int) -> str:
        """Address of host ``i`` (0-based)."""
        return f"10.213.{self.k}.{i + 1}"

    def veth(self, i: int) -> str:
        """Root-side end of host ``i``'s link."""
        return f"pm{self.k}v{i + 1}"

    def pids(self, ns: str) -> list[int]:
        """Processes living in namespace ``ns``."""
        res = _ip("netns", "pids", ns, check=False)
        return [int(p) for p in res.stdout.split()]

    def all_pids(self) -> dict[str, list[int]]:
        return {ns: pids for ns in self.names if (pids := self.pids(ns))}

    def agent_pids(self, ns: str) -> list[int]:
        """Processes in ``ns`` that are pmrun agents."""
        out = []
        for pid in self.pids(ns):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"pm.agent.main" in cmd:
                    out.append(pid)
        return out

    def wait_empty(self, timeout: float = 15.0) -> dict[str, list[str]]:
        """Poll until no process is left in any namespace; what is left after ``timeout``."""
        deadline = time.monotonic() + timeout
        left = self.all_pids()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.all_pids()
        return {ns: [f"{p}: {_describe(p)}" for p in pids] for ns, pids in left.items()}

    # ------------------------------------------------------------------ faults
    def link_down(self, i: int) -> None:
        """Cut host ``i`` off (its root-side veth goes down)."""
        _ip("link", "set", self.veth(i), "down")

    # ------------------------------------------------------------------ ending
    def close(self) -> None:
        """Kill what runs in the namespaces, delete them and the bridge. Idempotent."""
        for ns in self._made:
            for _ in range(3):
                pids = self.pids(ns)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _settle(pids)
            # The kernel drops a namespace's veths when the namespace is freed, which
            # may come later than the del: remove our ends now.
            _ip("link", "del", self.veth(self.names.index(ns)), check=False)
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
            self.bridge = ""

    def __enter__(self) -> NetnsHosts:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return "?"


def _settle(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.02)


@contextlib.contextmanager
def netns_hosts(n: int) -> Iterator[NetnsHosts]:
    """``with netns_hosts(3) as hosts:`` (always cleaned up)."""
    hosts = NetnsHosts(n)
    try:
        yield hosts
    finally:
        hosts.close()


def exec_launcher_args(hosts: NetnsHosts, fanout: int = 2) -> list[str]:
    """pmrun options that run one agent per namespace host with the exec launcher."""
    return ["--launcher", "exec", "--launcher-exec", EXEC_TEMPLATE,
            "-hosts", ",".join(hosts.names), "--fanout", str(fanout),
            "--iface", hosts.bridge_addr]


if __name__ == "__main__":  # python tests/netns_util.py N: make hosts, wait for Enter
    with netns_hosts(int(sys.argv[1]) if len(sys.argv) > 1 else 3) as h:
        print(" ".join(h.names), h.bridge_addr)
        sys.stdin.readline()
