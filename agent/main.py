"""``pm-agent``: a node agent process.

``pm-agent child`` is what bootstraps start: it reads its config (one JSON
line) from stdin, joins its parent, runs its part of the job and exits.
Its stdin stays open for the job's lifetime: EOF means the parent is gone, and
the agent then kills its ranks and leaves.  So does a parent link that stays
silent for the heartbeat timeout, and a Shutdown from the parent.

``pm-agent serve --listen ADDR --config FILE`` is the persistent service
(``pm.agent.serve``); ``pm-agent keygen NAME`` writes a CURVE key pair.
``pm-agent --cleanup`` removes shared-memory segments and topology files of dead jobs.
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
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("pm.agent")

#: Why an agent leaves when its stdin closes (normal once its part of the job is done).
STDIN_EOF = "parent closed our stdin"
#: When this process reached pmrun's code (its interpreter start-up is before): for --profile.
_T_MAIN = time.time()


async def run_child(cfg: dict[str, Any]) -> int:
    """Run one vertex of one job as described by ``cfg`` (see ``AgentConfig``).

    Extra keys a persistent service adds: ``listen`` (open the port for our
    children before joining and write ``{"address": ...}`` on stdout, since
    the head must know it to send us children) with ``ports`` (lo, hi) and
    ``iface``.
    """
    import gc

    from pm.agent.children import Children, listen_endpoint
    from pm.agent.links import ChildPort, ParentLink
    from pm.agent.node import JobAgent
    from pm.proto import tree as t

    from pm.jobspec import JobPlan

    gc.freeze()  # what the imports made lives as long as we do
    gc.enable()
    secret = bytes.fromhex(cfg["secret"])
    vertex = int(cfg["vertex"])
    heartbeat = float(cfg.get("heartbeat", 0))
    loop = asyncio.get_running_loop()
    parent_gone: asyncio.Future[str] = loop.create_future()

    def gone(why: str) -> None:
        if not parent_gone.done():
            parent_gone.set_result(why)

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            gone(STDIN_EOF)

    agent: JobAgent | None = None
    early: list[t.Msg] = []

    def on_msg(msg: t.Msg) -> None:
        if isinstance(msg, t.Shutdown):
            gone("")
        elif agent is None:
            early.append(msg)
        else:
            agent.from_parent(msg)

    port: ChildPort | None = None
    if cfg.get("listen"):
        ports = cfg.get("ports")
        port = ChildPort(secret, listen_endpoint({"name": "persistent", "iface": cfg.get("iface")},
                                                 cfg["parent"]),
                         None, None, heartbeat=heartbeat,
                         ports=(int(ports[0]), int(ports[1])) if ports else None)
        os.write(1, json.dumps({"address": port.address}).encode() + b"\n")
    link = ParentLink(secret, cfg["parent"], vertex, on_msg, heartbeat=heartbeat, on_lost=gone)
    link.send(t.Hello(vertex, cfg.get("host") or socket.gethostname(), os.getpid()))
    loop.add_reader(0, on_stdin)
    receiving = asyncio.ensure_future(link.recv())
    waiting: list[asyncio.Future[Any]] = [receiving, parent_gone]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not receiving.done():
        receiving.cancel()
        log.warning("agent %d: left before the job started: %s", vertex, parent_gone.result())
        _close_quietly(port, link)
        return 1
    launch = receiving.result()
    if not isinstance(launch, t.Launch):
        log.error("agent %d: expected the job plan, got %s", vertex, type(launch).__name__)
        _close_quietly(port, link)
        return 1
    plan = JobPlan.from_wire(launch.plan)
    agent = JobAgent(plan, vertex, link, host=cfg.get("host"))
    if agent.timeline is not None:
        from pm.profile import mark_process_start

        mark_process_start(agent, "agent main", _T_MAIN)
        agent.mark("plan received")
    link.start()
    children = None
    try:
        if agent.children:
            bind = "" if port is not None else listen_endpoint(plan.bootstrap, cfg["parent"])
            children = Children(agent, secret, bind=bind, port=port)
            port = None
            agent.children_link = children
            agent.mark("bootstrap start", children=len(agent.children))
            children.spawn_all()  # children start while we spawn our own ranks
        await agent.prepare()
        agent.start_ranks()
        if children is not None:
            from pm.bootstrap.base import join_timeout_of

            await children.join(time.monotonic() + join_timeout_of(plan.bootstrap))
            if agent.timeline is not None:
                from pm.profile import mark_joined

                mark_joined(agent, children.joined)
        for m in early:
            on_msg(m)
        await asyncio.wait([agent.done, parent_gone], return_when=asyncio.FIRST_COMPLETED)
        # Our part is done; stay until the head says the job is over (it may
        # still route messages through us) or our parent goes away.
        why = await parent_gone
    except Exception as exc:  # report, then clean up
        log.error("agent %d: %s", vertex, exc)
        link.send(t.AgentError(vertex, agent.host, str(exc)))
        why = str(exc)
    finally:
        agent.kill("agent shutting down", 0.5 if not agent.done.done() else 0)
        agent.close()
        if children is not None:
            children.close()
            await children.wait_exit()
        _close_quietly(port, link)
    if why and not (agent.done.done() and why == STDIN_EOF):
        log.warning("agent %d: %s", vertex, why)
        return 1
    return 0


def _close_quietly(port: Any, link: Any) -> None:
    if port is not None:
        port.close(linger=0)
    link.close()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))
    except ImportError:
        return int(asyncio.run(coro))


def _version() -> str:
    from pm import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pm-agent", description="pmrun node agent")
    p.add_argument("mode", nargs="?", choices=["child", "serve", "keygen"],
                   help="child: started by a bootstrap; serve: the persistent service; "
                        "keygen NAME: write the CURVE key pair NAME.key / NAME.pub")
    p.add_argument("name", nargs="?", help="keygen: path prefix of the key files")
    p.add_argument("--listen", help="serve: ADDR:PORT to listen on (overrides the config)")
    p.add_argument("--config", help="serve: configuration file (TOML)")
    p.add_argument("--cleanup", action="store_true",
                   help="remove shared-memory segments and topology files left by dead jobs, "
                        "then exit")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--version", action="version", version=f"pm-agent {_version()}")
    args = p.parse_args(argv)
    level = logging.WARNING if not args.verbose else (
        logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(format="pm-agent[%(process)d]: %(message)s", level=level)
    if args.cleanup:
        from pm.agent.shm_reaper import sweep_node

        # pmrun's KVS segments, topology copies and MPI segments nobody uses any more.
        for path in sweep_node():
            print(f"removed {path}")
        return 0
    if args.mode == "keygen":
        from pm.agent.serve import KeyFileError, write_keypair

        if not args.name:
            p.error("keygen needs a NAME (the key files are NAME.key and NAME.pub)")
        try:
            public = write_keypair(args.name)
        except (KeyFileError, OSError) as exc:
            sys.stderr.write(f"pm-agent keygen: {exc}\n")
            return 1
        print(public)
        return 0
    if args.mode == "serve":
        from pm.agent.serve import serve_main

        # A service says what it did (jobs, refusals) unless told to say more.
        logging.getLogger("pm").setLevel(min(level, logging.INFO))
        return serve_main(args.config, args.listen)
    if args.mode == "child":
        line = sys.stdin.buffer.readline()
        cfg = json.loads(line)
        logging.getLogger("pm").setLevel(int(cfg.get("log_level", logging.WARNING)))
        from pm.agent.spawn import raise_fd_limit

        raise_fd_limit()
        import gc

        gc.disable()  # imports ahead: nothing worth collecting (run_child turns it back on)
        code = _run(run_child(cfg))
        # Our part of the job is over and closed: skip the interpreter's teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
