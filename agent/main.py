"""``pm-agent``: a node agent process.

``pm-agent child`` is what bootstraps start: it reads its config (one JSON
line) from stdin, joins its parent, runs its part of the job and exits.
Its stdin stays open for the job's lifetime: EOF means the parent is gone, and
the agent then kills its ranks and leaves.

``pm-agent --cleanup`` removes shared-memory segments of dead jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from typing import Any

log = logging.getLogger("pm.agent")


async def run_child(cfg: dict[str, Any]) -> int:
    from pm.agent.links import ParentLink
    from pm.agent.node import JobAgent
    from pm.jobspec import JobPlan
    from pm.proto import tree as t

    secret = bytes.fromhex(cfg["secret"])
    vertex = int(cfg["vertex"])
    loop = asyncio.get_running_loop()
    parent_gone = loop.create_future()

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            if not parent_gone.done():
                parent_gone.set_result(None)

    agent: JobAgent | None = None
    early: list[t.Msg] = []

    def on_msg(msg: t.Msg) -> None:
        if agent is None:
            early.append(msg)
        elif isinstance(msg, t.Shutdown):
            if not parent_gone.done():
                parent_gone.set_result(None)
        else:
            agent.from_parent(msg)

    link = ParentLink(secret, cfg["parent"], vertex, on_msg)
    link.send(t.Hello(vertex, cfg.get("host") or socket.gethostname(), os.getpid()))
    loop.add_reader(0, on_stdin)
    first = await asyncio.wait(
        [asyncio.ensure_future(link.recv()), parent_gone], return_when=asyncio.FIRST_COMPLETED)
    got = [f for f in first[0] if f is not parent_gone]
    if not got:
        link.close()
        return 1
    launch = got[0].result()
    if not isinstance(launch, t.Launch):
        log.error("agent %d: expected the job plan, got %s", vertex, type(launch).__name__)
        link.close()
        return 1
    plan = JobPlan.from_wire(launch.plan)
    agent = JobAgent(plan, vertex, link, host=cfg.get("host"))
    link.start()
    children = None
    try:
        if agent.children:
            from pm.agent.children import Children

            children = Children(agent, secret, bind=_bind_of(cfg["parent"]))
            agent.children_link = children
            children.spawn_all()  # children start while we spawn our own ranks
        await agent.prepare()
        agent.start_ranks()
        if children is not None:
            await children.join(time.monotonic() + float(plan.bootstrap.get("join_timeout", 60)))
        for m in early:
            on_msg(m)
        await asyncio.wait([agent.done, parent_gone], return_when=asyncio.FIRST_COMPLETED)
        if not parent_gone.done():
            # Our part is done; stay until the head says the job is over (it may
            # still route messages through us) or our parent goes away.
            await parent_gone
    except Exception as exc:  # report, then clean up
        log.error("agent %d: %s", vertex, exc)
        link.send(t.AgentError(vertex, agent.host, str(exc)))
    finally:
        agent.kill("agent shutting down", 0.5 if not agent.done.done() else 0)
        agent.close()
        if children is not None:
            children.close()
            await children.wait_exit(5.0)
        link.close()
    return 0


def _bind_of(parent: str) -> str:
    """Listen on the interface we reach our parent through (loopback for local trees)."""
    host = parent.rsplit(":", 1)[0]
    return host if host.startswith("tcp://") else "tcp://127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pm-agent", description="pmrun node agent")
    p.add_argument("mode", nargs="?", choices=["child"], help="started by a bootstrap")
    p.add_argument("--cleanup", action="store_true",
                   help="remove shared-memory segments left by dead jobs, then exit")
    args = p.parse_args(argv)
    logging.basicConfig(format="pm-agent[%(process)d]: %(message)s", level=logging.WARNING)
    if args.cleanup:
        from pm.agent.shmkvs import cleanup_stale

        for name in cleanup_stale():
            print(f"removed /dev/shm/{name}")
        return 0
    if args.mode == "child":
        line = sys.stdin.buffer.readline()
        cfg = json.loads(line)
        logging.getLogger("pm").setLevel(int(cfg.get("log_level", logging.WARNING)))
        from pm.agent.spawn import raise_fd_limit

        raise_fd_limit()
        try:
            import uvloop

            return uvloop.run(run_child(cfg))
        except ImportError:
            return asyncio.run(run_child(cfg))
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
