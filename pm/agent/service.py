"""``pm-agent serve``: a node agent service that runs for ever and serves many jobs.

A head (``pmrun --agents FILE``) connects to the service's ROUTER over TCP,
secured with ZeroMQ CURVE: the connection is encrypted, the head checks the
service's public key, and the service admits only the client keys listed in
its configuration (a ZAP handler here; anything else is refused during the
handshake and logged, and the service keeps serving).  For each vertex of a
job the head asks for, the service starts one ``pm-agent child`` process
(``pm.agent.main.run_child``): jobs are isolated from each other as ad-hoc
agents are (own process, KVS, job secret, shared-memory segment), and any
number run at once.  SIGHUP (``systemctl reload``) reads the configuration again
(client keys, limits, job agents' settings) and leaves running jobs alone; keys
and configuration are :mod:`pm.agent.service_config`'s.  See
``deploy/README.md`` for the security model.

Who ranks run as: a client key is bound to a user name in the configuration.
A service running as root starts the job's agents (and so its ranks) as that
user (uid, gid, supplementary groups); it refuses to run them as root unless
``allow_root = true``.  A service running as another user can only run jobs
as itself, and refuses keys bound to anybody else.

What job agents inherit: not the service's environment (whatever systemd or
the administrator gave the service), but a small fixed one made from the
user's passwd entry and the configuration (:func:`agent_env`).  Ranks never
see even that: their environment is the one the head sends in the job plan,
the user's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib.util
import json
import logging
import os
import pwd
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils import z85

from pm.agent.links import allow_ipv6
from pm.agent.owned import Owned
from pm.agent.service_config import (
    DEFAULT_PATH,
    DEFAULT_PORT,
    FIXED_ENV,
    KeyFileError,
    ServiceConfig,
    endpoint,
    load_config,
    read_keypair,
    read_public,
    write_keypair,
)
from pm.jobenv import AGENT_ONLY, set_for_agent
from pm.proto import service_wire as sp
from pm.proto.errors import ProtocolError
from pm.proto.plan import AgentConfig

__all__ = ["DEFAULT_PATH", "DEFAULT_PORT", "FIXED_ENV", "KeyFileError", "ServiceConfig",
           "agent_env", "agent_pythonpath", "credentials", "endpoint", "load_config",
           "read_keypair", "read_public", "serve_main", "write_keypair"]

log = logging.getLogger("pm.agent.service")

#: Seconds a listening job agent may take to report its port.
START_TIMEOUT = 30.0
#: Seconds a job's agents get to leave after their job ended before they are killed.
END_GRACE = 10.0
#: Top-level modules a job agent imports: a PYTHONPATH entry of the service's
#: that one of them comes from is passed on (:func:`agent_pythonpath`).
_AGENT_IMPORTS = ("pm", "zmq", "msgpack", "uvloop", "cffi")
_ZAP = "inproc://zeromq.zap.01"


# --------------------------------------------------------------------- the service


def agent_pythonpath(environ: Mapping[str, str]) -> str | None:
    """The entries of the service's PYTHONPATH (``environ``) that pmrun or a module it
    needs is imported from, made absolute; ``None`` when there are none.

    A job agent is ``PYTHON -P -m pm.agent.main child``: with pmrun installed in
    the interpreter's environment it needs no PYTHONPATH, and then gets none.  A
    service run from a source tree (``PYTHONPATH=/src/pmrun``) must hand that
    entry on or its agents cannot import ``pm``; other entries stay the service's.
    """
    entries = [os.path.abspath(p) for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not entries:
        return None
    origins: list[str] = []
    for name in _AGENT_IMPORTS:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                origins.append(os.path.realpath(spec.origin))
    keep = [e for e in entries
            if any(o.startswith(os.path.join(os.path.realpath(e), "")) for o in origins)]
    return os.pathsep.join(dict.fromkeys(keep)) or None


def agent_env(pw: pwd.struct_passwd, path: str = DEFAULT_PATH, pass_env: Sequence[str] = (),
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a job agent for the user of ``pw`` starts with.

    Minimal and explicit, as sshd and systemd make a session's: PATH (``path``),
    HOME, USER, LOGNAME and SHELL from the passwd entry, PYTHONPATH only where
    the agent needs it to import pmrun (:func:`agent_pythonpath`), and the
    service's variables named in ``pass_env`` (names or globs such as ``LC_*``,
    from ``environ``, the service's environment by default).  Nothing else of
    the service's environment: what systemd or the administrator set for the
    service is theirs, not the user's, and a root service must not hand it to
    another user's processes.  The ranks start from the session's part alone (PATH,
    HOME, USER, LOGNAME, SHELL, as an ssh login's), what the job plan passes over it
    (the user's own, ``-genv``...): PYTHONPATH and ``pass_env``'s are the agent's
    (:func:`pm.jobenv.set_for_agent`).
    """
    environ = os.environ if environ is None else environ
    env = {"PATH": path, "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name,
           "SHELL": pw.pw_shell or "/bin/sh"}
    for name, value in environ.items():
        if name not in (*FIXED_ENV, AGENT_ONLY) and any(
                fnmatch.fnmatchcase(name, pattern) for pattern in pass_env):
            set_for_agent(env, name, value)
    pythonpath = agent_pythonpath(environ)
    if pythonpath:
        set_for_agent(env, "PYTHONPATH", pythonpath)
    return env


def credentials(user: str, allow_root: bool, me: int | None = None, *,
                path: str = DEFAULT_PATH, pass_env: Sequence[str] = (),
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """How a service running as uid ``me`` starts a job agent for ``user`` (subprocess
    keywords), or ``PermissionError`` saying why it may not (see the module docstring).

    The agent's environment is :func:`agent_env`'s (``path``, ``pass_env`` and
    ``environ`` go there), never the service's own.
    """
    me = os.geteuid() if me is None else me
    if not user:
        raise PermissionError("the client's key is bound to no user")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PermissionError(f"no such user {user!r} on this node") from None
    if pw.pw_uid == 0 and not allow_root:
        raise PermissionError("this service refuses to run jobs as root "
                              "(allow_root = true in its configuration)")
    env = agent_env(pw, path, pass_env, environ)
    if pw.pw_uid == me:
        return {"env": env, "cwd": pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"}
    if me != 0:
        raise PermissionError(f"this service runs as uid {me} and cannot run jobs as "
                              f"{user!r}")
    return {"env": env, "cwd": "/", "user": pw.pw_uid, "group": pw.pw_gid,
            "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid)}


@dataclass(slots=True)
class JobAgentProc:
    job: str
    vertex: int
    client: bytes                 # ROUTER identity of the head that asked for it
    proc: asyncio.subprocess.Process
    ended: bool = False


class Service:
    """The ROUTER heads talk to, its ZAP handler, and the job agents it started."""

    def __init__(self, cfg: ServiceConfig, config_path: str | None = None,
                 listen: str | None = None) -> None:
        self.cfg = cfg
        self._config_path, self._listen = config_path, listen
        self.public, secret = read_keypair(cfg.key)
        self.ctx = zmq.asyncio.Context()
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.linger = 0
        self.zap.bind(_ZAP)  # before the ROUTER binds: no handshake without a verdict
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 1000
        self.sock.curve_server = True
        self.sock.curve_secretkey = secret
        self.sock.curve_publickey = self.public
        self.sock.zap_domain = b"pmrun"
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # a start request is < 1 KiB
        self.agents: dict[tuple[str, int], JobAgentProc] = {}
        #: fds of connections that sent a request (log_refused_handshakes' ``joined``).
        self._clients: set[int] = set()
        #: Handling requests, watching agents, reloads: ended with the service.
        self.owned = Owned()
        self.stopping = asyncio.get_running_loop().create_future()
        allow_ipv6(self.sock, cfg.listen)
        self.sock.bind(cfg.listen)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        me = pwd.getpwuid(os.geteuid()).pw_name
        log.info("pm-agent service %s listening on %s as %s, %d client keys", self.public.decode(),
                 self.address, me, len(cfg.clients))

    def _spawn_task(self, coro: Any) -> None:
        self.owned.spawn(coro)

    async def run(self) -> None:
        from pm.agent.refusals import log_refused_handshakes

        self._spawn_task(self._zap_loop())
        self._spawn_task(log_refused_handshakes(
            self.sock, "pm-agent service", self._clients,
            dropped="dropped before any request (not a pmrun client, or a frame over the size "
                    "bound)"))
        recv = self.owned.spawn(self._recv_loop())
        try:
            await asyncio.wait([recv, self.stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            recv.cancel()
            await self._end_all()
            # Let their finally blocks close what they own (the monitor socket) first.
            await self.owned.aclose()
            self.sock.close(linger=0)
            self.zap.close(linger=0)
            self.ctx.destroy(linger=0)

    def reload(self) -> None:
        """SIGHUP (``systemctl reload``): read the configuration again."""
        self._spawn_task(self._reload())

    async def _reload(self) -> None:
        """New client keys, limits and job agents' settings apply to the next start
        request; running job agents are not touched.  A configuration that cannot be
        read leaves the running one in place."""
        try:
            cfg = await asyncio.to_thread(load_config, self._config_path, self._listen)
        except KeyFileError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        for name in ("listen", "key"):
            if getattr(cfg, name) != getattr(self.cfg, name):
                log.warning("reload: %s changed: it applies at the next restart (which ends "
                            "the running jobs)", name)
        cfg.listen, cfg.key = self.cfg.listen, self.cfg.key
        self.cfg = cfg
        log.info("reloaded %s: %d client keys; %d job agents running, untouched",
                 self._config_path, len(cfg.clients), len(self.agents))

    def stop(self, why: str) -> None:
        if not self.stopping.done():
            log.info("stopping: %s", why)
            self.stopping.set_result(None)

    # ------------------------------------------------------------ authentication
    async def _zap_loop(self) -> None:
        """Answer libzmq's ZAP requests: admit CURVE clients whose key is listed."""
        while True:
            frames = await self.zap.recv_multipart()
            if len(frames) < 6:
                continue
            version, request_id, _domain, address, _identity, mechanism = frames[:6]
            creds = frames[6:]
            peer = address.decode(errors="replace")
            user = ""
            if mechanism == b"CURVE" and creds and len(creds[0]) == 32:
                key = z85.encode(creds[0])
                user = self.cfg.clients.get(key, "")
                if not user:
                    log.warning("refused a client from %s: key %s is not allowed", peer,
                                key.decode())
            else:
                log.warning("refused a client from %s: mechanism %s", peer,
                            mechanism.decode(errors="replace"))
            if user:
                log.info("client from %s admitted as %s", peer, user)
                reply = [version, request_id, b"200", b"OK", user.encode(), b""]
            else:
                reply = [version, request_id, b"400", b"not allowed", b"", b""]
            await self.zap.send_multipart(reply)

    # ------------------------------------------------------------ requests
    async def _recv_loop(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            if len(frames) != 2:
                log.warning("dropped a malformed request (%d parts)", len(frames))
                continue
            ident, frame = frames[0].bytes, frames[1]
            with contextlib.suppress(Exception):  # a client: its leaving is no refusal
                self._clients.add(int(frame.get(zmq.SRCFD)))
            user = ""
            with contextlib.suppress(Exception):
                user = str(frame.get("User-Id") or "")
            try:
                msg = sp.decode(frame.bytes)
                self._handle(ident, user, msg)
            except ProtocolError as exc:
                peer = ""
                with contextlib.suppress(Exception):
                    peer = str(frame.get("Peer-Address") or "")
                log.warning("refused a request from %s: %s", peer or "a client", exc)
                self._reply(ident, sp.encode(sp.Error(str(exc))))

    def _reply(self, ident: bytes, data: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):
            fut = self.sock.send_multipart([ident, data])
            if isinstance(fut, asyncio.Future):
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _handle(self, ident: bytes, user: str, msg: sp.ServiceMsg) -> None:
        if isinstance(msg, sp.Start):
            self._spawn_task(self._start(ident, user, msg))
        elif isinstance(msg, sp.End):
            self._end_job(msg.job)
        else:
            raise ProtocolError(f"not a request: {type(msg).__name__}")

    async def _start(self, ident: bytes, user: str, req: sp.Start) -> None:
        job, vertex = req.cfg.job_id, req.cfg.vertex

        def failed(why: str) -> None:
            log.warning("job %s vertex %d: not started: %s", job, vertex, why)
            self._reply(ident, sp.encode(sp.Failed(job, vertex, why)))

        if (job, vertex) in self.agents:
            return failed("this vertex of the job runs here already")
        if len(self.agents) >= self.cfg.max_agents:
            return failed(f"the service runs {self.cfg.max_agents} job agents already")
        if user not in self.cfg.clients.values():
            # Admitted at the handshake, but its key left the configuration since (reload).
            return failed(f"no key of {user or 'this client'} is listed any more")
        try:
            creds = credentials(user, self.cfg.allow_root, path=self.cfg.path,
                                pass_env=self.cfg.pass_env)
        except PermissionError as exc:
            return failed(str(exc))
        # What the head may say, and where this service lets its agents listen.
        got = req.cfg
        cfg = AgentConfig(vertex, got.parent, got.secret, job, got.host, got.log_level,
                          got.heartbeat, listen=req.listen, iface=self.cfg.iface or "",
                          ports=list(self.cfg.ports) if self.cfg.ports else None)
        # Its lines go to this service's log, among other jobs': they name the job.
        from pm.agent.main import SERVICE_JOB_VAR

        creds["env"] = {**creds["env"], SERVICE_JOB_VAR: job}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.cfg.python, "-P", "-m", "pm.agent.main", "child",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True, **creds)
        except OSError as exc:
            return failed(f"cannot start an agent: {exc}")
        assert proc.stdin is not None and proc.stdout is not None
        entry = JobAgentProc(job, vertex, ident, proc)
        self.agents[(job, vertex)] = entry
        self._spawn_task(self._watch(entry))
        proc.stdin.write(json.dumps(cfg.to_wire()).encode() + b"\n")
        address = ""
        if cfg.listen:
            try:
                first = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
                address = str(json.loads(first)["address"])
            except (TimeoutError, ValueError, KeyError, TypeError):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return failed("the job agent did not report its port")
        self._spawn_task(self._drain(proc.stdout))
        log.info("job %s vertex %d: agent pid %d as %s%s", job, vertex, proc.pid, user,
                 f", port {address}" if address else "")
        self._reply(ident, sp.encode(sp.Started(job, vertex, address)))

    @staticmethod
    async def _drain(stdout: asyncio.StreamReader) -> None:
        # Nothing else comes on an agent's stdout, but a full pipe must never block it.
        while await stdout.read(65536):
            pass

    async def _watch(self, entry: JobAgentProc) -> None:
        code = await entry.proc.wait()
        entry.ended = True
        self.agents.pop((entry.job, entry.vertex), None)
        if code:
            log.warning("job %s vertex %d: agent ended with %s", entry.job, entry.vertex,
                        f"code {code}" if code > 0 else f"signal {-code}")
        self._reply(entry.client, sp.encode(sp.Exited(entry.job, entry.vertex,
                                                      code if code >= 0 else -1,
                                                      -code if code < 0 else 0)))

    def _end_job(self, job: str) -> None:
        """The head says the job is over: close its agents' stdin, kill them after a grace."""
        mine = [e for (j, _), e in self.agents.items() if j == job]
        for entry in mine:
            if entry.proc.stdin is not None:
                entry.proc.stdin.close()
        if mine:
            self._spawn_task(self._reap(mine, END_GRACE))

    async def _reap(self, entries: list[JobAgentProc], grace: float) -> None:
        waits = [asyncio.ensure_future(e.proc.wait()) for e in entries]
        _, pending = await asyncio.wait(waits, timeout=grace)
        for e in entries:
            if not e.ended and e.proc.returncode is None:
                log.warning("job %s vertex %d: agent still there %g s after its job: killing it",
                            e.job, e.vertex, grace)
                with contextlib.suppress(ProcessLookupError):
                    e.proc.kill()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=5)
        for w in pending:  # not ours to wait for any longer
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _end_all(self) -> None:
        entries = list(self.agents.values())
        for e in entries:
            if e.proc.stdin is not None:
                e.proc.stdin.close()
        if entries:
            await self._reap(entries, 5.0)


async def serve(cfg: ServiceConfig, config_path: str | None = None,
                listen: str | None = None) -> int:
    service = Service(cfg, config_path, listen)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop, signal.Signals(sig).name)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    await service.run()
    return 0


def serve_main(config: str | None, listen: str | None) -> int:
    """``pm-agent serve``: run until SIGTERM (the systemd unit's stop); SIGHUP (its
    reload) reads the configuration again without touching running jobs."""
    try:
        cfg = load_config(config, listen)
        read_keypair(cfg.key)
    except KeyFileError as exc:
        sys.stderr.write(f"pm-agent serve: {exc}\n")
        return 2
    if not zmq.has("curve"):
        sys.stderr.write("pm-agent serve: this libzmq has no CURVE support\n")
        return 2
    # What agents killed with SIGKILL (a service restart) left on this node.
    from pm.agent.shm_reaper import sweep_node

    sweep_node()
    # The default loop, not uvloop: job agents start with user/group switches that
    # uvloop's subprocess support does not take.  (Job agents run on it too: pm.agent.main.)
    try:
        return asyncio.run(serve(cfg, config, listen))
    except zmq.ZMQError as exc:
        sys.stderr.write(f"pm-agent serve: cannot listen on {cfg.listen}: {exc}\n")
        return 1
