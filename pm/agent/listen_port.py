"""Where an agent's children reach it: the endpoint it listens on, or the early step's socket.

:func:`listen_endpoint` is the address (``tcp://ADDR``, no port) an agent or the head
listens on for its children: loopback for a local tree, ``--iface``'s, the source
address of the route to the parent (or, for the head, to its first child's host), or
every address when Slurm's node names do not resolve.  :func:`step_port` is the head's
port on the socket an early Slurm step was told (:mod:`pm.bootstrap.early`), when that
step's config is this plan's.  Both are for :class:`~pm.agent.children.Children`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from pm.agent.addresses import ANY_ADDRESS, endpoint_host, iface_address, is_ip, route_source
from pm.agent.child_port import ChildPort
from pm.bootstrap.base import LOCAL_NAMES, heartbeat_of, step_config
from pm.common.hostlist import compress
from pm.proto.errors import PMError
from pm.proto.plan import AgentConfig, JobPlan

log = logging.getLogger("pm.agent.children")


def listen_endpoint(options: dict[str, Any], parent: str | None,
                    toward: str | None = None) -> str:
    """The endpoint (``tcp://ADDR``, no port) an agent listens on for its children.

    Local trees use loopback.  ``--iface`` names an interface (used on every
    host) or an address (used by the head only: agents elsewhere listen on the
    address they reach their parent through).  The head without ``--iface``
    uses its address on the route to ``toward`` (its first child's host).
    """
    if str(options.get("name", "local")) in LOCAL_NAMES:
        return "tcp://127.0.0.1"
    iface = options.get("iface")
    if iface and (parent is None or not is_ip(str(iface))):
        return f"tcp://{iface_address(str(iface))}"
    src, unresolved = None, ""
    if parent is not None:
        src = route_source(endpoint_host(parent))
    else:
        if toward and str(options.get("name")) == "ssh":
            from pm.bootstrap.ssh import resolve_host

            # Where ssh goes for that name (Host aliases), which DNS may not know.
            toward = resolve_host(toward, options)
        src = route_source(toward) if toward else None
        if src is None and str(options.get("name")) == "slurm":
            # A node name DNS does not know (Slurm's NodeAddr only): asking slurmctld
            # costs a round trip on the launch's path.  Listen on every address instead;
            # the agents reach us where srun runs (SLURM_LAUNCH_NODE_IPADDR, what their
            # slurmd saw srun's connection come from: agent.main.reach_launcher).
            return f"tcp://{ANY_ADDRESS}"
        unresolved = toward if toward and src is None else ""
        if src is None:
            src = route_source(socket.getfqdn())
    if src is None or src.startswith("127."):
        # Under a parent on loopback (``--iface 127.0.0.1``) the whole tree is on this
        # machine by the user's choice: nothing to warn about.
        if parent is None or not endpoint_host(parent).startswith("127."):
            why = f"{unresolved} does not resolve here: " if unresolved else ""
            log.warning("%slistening for agents on loopback: agents on other hosts cannot "
                        "reach it (give -localhost ADDRESS: this machine's address they "
                        "reach)", why)
        src = src or "127.0.0.1"
    return f"tcp://{src}"


async def find_listen_endpoint(options: dict[str, Any], parent: str | None,
                               toward: str | None = None) -> str:
    """:func:`listen_endpoint` off the loop: finding it may run ``ssh -G`` or ``scontrol``
    and ask DNS, which can take seconds.  A local tree's is known at once."""
    if str(options.get("name", "local")) in LOCAL_NAMES:
        return "tcp://127.0.0.1"
    return await asyncio.to_thread(listen_endpoint, options, parent, toward)


def plan_step_config(plan: JobPlan, secret: bytes, address: str, level: int) -> AgentConfig:
    """This plan's :func:`~pm.bootstrap.base.step_config`."""
    return step_config(secret=secret, job_id=plan.job_id, address=address, level=level,
                       options=plan.bootstrap, hosts=compress(plan.hosts), fanout=plan.fanout)


def step_port(plan: JobPlan, secret: bytes) -> ChildPort | None:
    """The head's port on the socket whose address the early Slurm step was told
    (:mod:`pm.bootstrap.early`), if the config it was told is this plan's; else None (and
    that step is let go)."""
    if plan.bootstrap.get("start") != "step":
        return None
    from pm.bootstrap.early import abandon_all, take_listener

    level = logging.getLogger("pm").getEffectiveLevel()
    taken = take_listener(lambda address: plan_step_config(plan, secret, address, level).to_wire())
    if taken is None:
        return None
    try:
        return ChildPort(secret, f"tcp://{ANY_ADDRESS}", None, None,
                         heartbeat=heartbeat_of(plan.bootstrap), listening=taken)
    except (PMError, OSError) as exc:
        log.info("cannot serve the early step's socket (%s): starting the agents anew", exc)
        with contextlib.suppress(OSError):
            os.close(taken[0])
        abandon_all()
        return None
