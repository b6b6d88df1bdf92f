"""``pm-agent``: a node agent process.

``pm-agent child`` is what bootstraps start: it reads its config (one JSON
line) from stdin, joins its parent, runs its part of the job and exits.
Its stdin stays open for the job's lifetime: EOF means the parent is gone, and
the agent then kills its ranks and leaves.  So does a parent link that stays
silent for the heartbeat timeout, and a Shutdown from the parent.

``pm-agent serve --listen ADDR --config FILE`` is the persistent service
(``pm.agent.service``); ``pm-agent keygen NAME`` writes a CURVE key pair.
``pm-agent --cleanup`` removes shared-memory segments and topology files of dead jobs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from pm.agent.child_port import ChildPort
    from pm.proto.plan import AgentConfig

log = logging.getLogger("pm.agent")

#: Why an agent leaves when its stdin closes (normal once its part of the job is done).
STDIN_EOF = "parent closed our stdin"
#: What the job's one line says when that happens while the job runs.
STDIN_LOST = "its agent's standard input closed while the job ran (its slurmstepd or " \
             "ssh connection is gone)"
#: ... when a persistent service started it (its stdin is the service's pipe).
SERVICE_LOST = "its pm-agent service stopped while the job ran"
#: How a job's agent speaks: on pmrun's stderr (through ssh or srun, or inherited), to the
#: job's user, as pmrun itself (its lines name the node); the service keeps its own name.
JOB_AGENT_FORMAT = "pmrun: %(message)s"
#: Set by a persistent service in its job agents' environment (the job and vertex): their
#: lines go to the service's log, among other jobs', and name it.  Not passed on.
SERVICE_JOB_VAR = "PM_SERVICE_JOB"
#: When this process reached pmrun's code (its interpreter start-up is before): for --profile.
_T_MAIN = time.time()


def reach_launcher(cfg: AgentConfig, env: Mapping[str, str]) -> None:
    """Where the head listens on every address (under Slurm, for node names DNS does not
    know: :func:`pm.agent.listen_port.listen_endpoint`), reach it where srun ran, the address
    our slurmd saw srun's connection come from.  ``ValueError`` without it."""
    from pm.agent.addresses import ANY_ADDRESS, endpoint_host

    if endpoint_host(cfg.head) != ANY_ADDRESS:
        return
    launcher = env.get("SLURM_LAUNCH_NODE_IPADDR", "")
    if not launcher:
        raise ValueError("cannot tell where pmrun listens (no SLURM_LAUNCH_NODE_IPADDR "
                         "from srun): give pmrun --iface")
    cfg.head = cfg.head.replace(ANY_ADDRESS, launcher, 1)
    if cfg.parent:
        cfg.parent = cfg.parent.replace(ANY_ADDRESS, launcher, 1)


def place_in_step(cfg: AgentConfig, env: Mapping[str, str]) -> None:
    """Fill in our vertex, host, parent and whether we listen, for an agent started by
    one Slurm step over all hosts (``vertex`` -1): our place is our node's place in the
    job's host list; vertex 0's parent is the head, every other parent comes later on
    stdin.  ``ValueError`` when this node is not in the list."""
    from pm.common.hostlist import expand
    from pm.common.kary_tree import Tree

    reach_launcher(cfg, env)
    hosts = expand(cfg.hosts)
    name = env.get("SLURMD_NODENAME") or socket.gethostname()
    if name in hosts:
        vertex = hosts.index(name)
    elif env.get("SLURM_NODEID", "").isdecimal() and int(env["SLURM_NODEID"]) < len(hosts):
        vertex = int(env["SLURM_NODEID"])
    else:
        raise ValueError(f"node {name} is not one of the job's hosts")
    tree = Tree(len(hosts), cfg.fanout)
    cfg.vertex = vertex
    cfg.host = hosts[vertex]
    cfg.listen = bool(tree.children(vertex))
    up = tree.parent(vertex)
    if up is not None:
        cfg.parent = ""
        cfg.up = up


def _parent_from(buf: bytearray, up: int) -> str | None:
    """The address of vertex ``up`` in the ``{"addresses": {...}}`` lines of ``buf``
    (consumed up to the last whole line)."""
    found = None
    *lines, rest = bytes(buf).split(b"\n")
    buf[:] = rest
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            found = json.loads(line).get("addresses", {}).get(str(up)) or found
    return found


async def _await_parent(buf: bytearray, up: int) -> str | None:
    """Read stdin until the address of our parent (vertex ``up``) arrives; None on EOF."""
    import asyncio

    from pm.common.output import read_ready

    loop = asyncio.get_running_loop()
    found = _parent_from(buf, up)
    if found:
        return found
    ready: asyncio.Future[str | None] = loop.create_future()

    def readable() -> None:
        data = read_ready(0)
        if data is None:
            return
        if not data:
            ready.set_result(None)
            return
        buf.extend(data)
        address = _parent_from(buf, up)
        if address:
            ready.set_result(address)

    loop.add_reader(0, readable)
    try:
        return await ready
    finally:
        loop.remove_reader(0)


async def run_child(cfg: AgentConfig, stdin_rest: bytes = b"") -> int:
    """Run one vertex of one job as described by ``cfg``.

    ``listen``: open the port for our children before joining and write
    ``{"vertex": V, "address": ...}`` on stdout (whoever started us passes it to
    our children, which started at the same time); a persistent service adds
    ``ports`` (lo, hi).  ``parent`` empty: the parent's address (of vertex
    ``up``) comes on stdin.  ``vertex`` -1: see :func:`place_in_step`.
    ``stdin_rest``: what was read from stdin after the config line.
    """
    import asyncio
    import gc

    from pm.agent.links import ParentLink
    from pm.agent.node import JobAgent
    from pm.agent.step_signals import StepSignals
    from pm.proto import tree_wire as t
    from pm.proto.errors import PMError

    gc.freeze()  # what the imports made lives as long as we do
    gc.enable()
    try:
        if cfg.vertex < 0:
            place_in_step(cfg, os.environ)
        else:
            reach_launcher(cfg, os.environ)
    except ValueError as exc:
        return _cannot_start(cfg.vertex, str(exc))
    secret = bytes.fromhex(cfg.secret)
    vertex = cfg.vertex
    heartbeat = float(cfg.heartbeat)
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
    if cfg.listen:  # (an agent with children of its own: a leaf needs no port)
        from pm.agent.child_port import ChildPort
        from pm.agent.listen_port import listen_endpoint

        ports = cfg.ports
        try:
            bind = listen_endpoint({"name": "tree", "iface": cfg.iface},
                                   cfg.parent or cfg.head or None)
            port = ChildPort(secret, bind, None, None, heartbeat=heartbeat,
                             ports=(int(ports[0]), int(ports[1])) if ports else None)
        except (PMError, OSError) as exc:  # no such interface here, no free port, ...
            return _cannot_start(vertex, str(exc))
        os.write(1, json.dumps({"vertex": vertex, "address": port.address}).encode() + b"\n")
    if not cfg.parent:
        parent = await _await_parent(bytearray(stdin_rest), cfg.up)
        if parent is None:  # the job ended before we knew where to join
            await _close_quietly(port, None)
            return 1
        cfg.parent = parent
    link = ParentLink(secret, cfg.parent, vertex, on_msg, heartbeat=heartbeat, on_lost=gone)
    link.send(t.Hello(vertex, cfg.host or socket.gethostname(), os.getpid()))
    loop.add_reader(0, on_stdin)
    receiving = asyncio.ensure_future(link.recv())
    waiting: list[asyncio.Future[Any]] = [receiving, parent_gone]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not receiving.done():
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        # (secondary: whatever ended the job before its start is named by the head)
        log.info("agent %d: left before the job started: %s", vertex, parent_gone.result())
        await _close_quietly(port, link)
        return 1
    launch = receiving.result()
    if not isinstance(launch, t.Launch):
        # A Kill or Shutdown first: the job ended before its start (a Ctrl-C while it
        # started), which the head names.
        (log.info if isinstance(launch, (t.Kill, t.Shutdown)) else log.error)(
            "agent %d: expected the job plan, got %s", vertex, type(launch).__name__)
        await _close_quietly(port, link)
        return 1
    plan = launch.plan
    if plan.bootstrap.get("name") == "slurm":
        from pm.agent.step_signals import take_term

        take_term()  # (Slurm's end of the job: the ranks' SIGTERM, pm.agent.step_signals)
    agent = JobAgent(plan, vertex, link, host=cfg.host or None)
    if agent.timeline is not None:
        from pm.common.profile import mark_process_start

        mark_process_start(agent, "agent main", _T_MAIN)
        agent.mark("plan received")
    link.start()
    children = None
    said = ""  # the failure already said here (not said again as why we leave)
    try:
        if agent.children:
            from pm.agent.children import Children
            from pm.agent.listen_port import listen_endpoint

            bind = "" if port is not None else listen_endpoint(plan.bootstrap, cfg.parent)
            children = Children(agent, secret, bind=bind, port=port)
            port = None
            agent.children_link = children
            agent.mark("bootstrap start", children=len(agent.children))
            children.spawn_all()  # children start while we spawn our own ranks
        await agent.prepare()
        agent.start_ranks()
        # Signals Slurm sends the step's tasks are the ranks' (noted until now: note_early).
        agent.step_signals = StepSignals(on_term=agent.slurm_term)
        agent.step_signals.attach(loop, agent.slurm_signal)
        if children is not None:
            from pm.bootstrap.base import join_timeout_of

            await children.join(time.monotonic() + join_timeout_of(plan.bootstrap))
            if agent.timeline is not None:
                from pm.common.profile import mark_joined

                mark_joined(agent, children.joined)
        for m in early:
            on_msg(m)
        await asyncio.wait([agent.done, parent_gone], return_when=asyncio.FIRST_COMPLETED)
        if parent_gone.done() and parent_gone.result() == STDIN_EOF and not agent.killing:
            # Whoever started us went away mid-job (a slurmstepd or sshd killed): say so
            # now rather than leave our parent to notice the silence (the heartbeat).
            link.send(t.AgentGone(vertex, agent.host, SERVICE_LOST
                                  if plan.bootstrap.get("name") == "persistent" else STDIN_LOST))
        # Our part is done; stay until the head says the job is over (it may
        # still route messages through us) or our parent goes away.
        why = await parent_gone
    except Exception as exc:  # report, then clean up
        log.error("agent %d: %s", vertex, exc)
        link.send(t.AgentError(vertex, agent.host, str(exc)))
        why = said = str(exc)
    finally:
        agent.kill("agent shutting down", 0.5 if not agent.done.done() else 0)
        await agent.aclose()  # the job's /dev/shm files are gone before we exit
        if children is not None:
            children.close()
            await children.wait_exit()
        await _close_quietly(port, link)
    if why and not (agent.done.done() and why == STDIN_EOF):
        if why != said:
            log.warning("agent %d: %s", vertex, why)
        return 1
    return 0


def _cannot_start(vertex: int, why: str) -> int:
    """Say why we cannot join the job, on stdout: whoever started us names it in one line."""
    try:
        os.write(1, json.dumps({"vertex": vertex, "error": why}).encode() + b"\n")
    except OSError:
        log.error("agent %d: %s", vertex, why)
    return 1


async def _close_quietly(port: Any, link: Any) -> None:
    if port is not None:
        await port.aclose(linger=0)
    if link is not None:
        await link.aclose()


def _preimport() -> None:
    """What every child agent imports, imported before its config is read.

    Not ``pm.agent.children`` and ``pm.agent.child_port`` (only an agent with children of
    its own needs them), nor
    uvloop, nor ssl: a child agent runs on asyncio's own loop, which starts 9 ms of CPU
    cheaper (uvloop imports ssl, and so does asyncio when it can: an agent never speaks
    TLS); every host of a launch pays that on the launch's critical path.
    """
    import gc

    gc.disable()
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    import asyncio  # noqa: F401

    import pm.agent.links
    import pm.agent.node
    import pm.proto.plan  # noqa: F401


def _first_line() -> tuple[bytes, bytes]:
    """The config line from stdin, and what came after it (unbuffered: stdin stays ours)."""
    buf = b""
    while b"\n" not in buf:
        data = os.read(0, 65536)
        if not data:
            break
        buf += data
    line, _, rest = buf.partition(b"\n")
    return line, rest


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a child agent's coroutine on asyncio's loop (see :func:`_preimport`)."""
    import asyncio

    from pm.agent.owned import checked

    return int(asyncio.run(checked(coro)))


def _version() -> str:
    from pm import __version__

    return __version__


def _child() -> int:
    """``pm-agent child``: read our config on stdin, run our part of the job, exit."""
    _preimport()  # while the config may still be on its way (pm.bootstrap.early)
    from pm.agent.step_signals import note_early

    note_early()  # (Slurm's USR1 to the step, say, is the ranks': pm.agent.step_signals)
    line, rest = _first_line()
    if not line.strip():
        os._exit(0)  # whoever started us gave up before telling us anything
    from pm.proto.errors import ProtocolError
    from pm.proto.plan import AgentConfig

    try:
        cfg = AgentConfig.from_wire(json.loads(line))
    except ValueError:
        sys.stderr.write("pm-agent child: no configuration on stdin\n")
        return 2
    except ProtocolError as exc:
        sys.stderr.write(f"pm-agent child: {exc}\n")
        return 2
    logging.getLogger("pm").setLevel(cfg.log_level)
    from pm.agent.spawn import raise_fd_limit

    raise_fd_limit()
    import gc

    gc.disable()  # imports ahead: nothing worth collecting (run_child turns it back on)
    code = _run(run_child(cfg, rest))
    note_early()  # (the closed loop let go of them: a late one must not kill us now)
    # Our part of the job is over and closed: skip the interpreter's teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _agent_format() -> str:
    """How this job agent's lines start: a service's name their job (SERVICE_JOB_VAR)."""
    job = os.environ.pop(SERVICE_JOB_VAR, "")
    return f"pmrun: job {job.replace('%', '%%')}: %(message)s" if job else JOB_AGENT_FORMAT


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["child"]:
        # What every bootstrap runs: no argparse to import on the launch's critical path.
        logging.basicConfig(format=_agent_format(), level=logging.WARNING)
        return _child()
    import gc

    gc.enable()  # (off if a lean agent's program started us: pm.bootstrap.base.lean_code)
    import argparse

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
    from pm.options import log_level

    level = log_level(args.verbose)
    logging.basicConfig(format="pm-agent[%(process)d]: %(message)s", level=level)
    if args.cleanup:
        from pm.agent.shm_reaper import sweep_node

        # pmrun's KVS segments, topology copies and MPI segments nobody uses any more.
        for path in sweep_node():
            print(f"removed {path}")
        from pm.agent.pmix_dir import cleanup_stale as pmix_dirs  # PMIx servers' files

        for path in pmix_dirs():
            print(f"removed {path}")
        return 0
    if args.mode == "keygen":
        from pm.agent.service import KeyFileError, write_keypair

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
        from pm.agent.service import serve_main

        # A service says what it did (jobs, refusals) unless told to say more.
        logging.getLogger("pm").setLevel(min(level, logging.INFO))
        return serve_main(args.config, args.listen)
    if args.mode == "child":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(_agent_format()))
        return _child()
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
