"""Start the first level's agents before the head has imported its own machinery.

An ssh connection takes longer than anything else in a launch (~0.4 s), and the
head's imports (asyncio, zmq, the agent code) another ~0.2 s before it could
start one.  So the commands that start vertex 0 and its children (``start ==
"first"``) run right after the command line is read, without their config; the
agents import while ssh connects and the head imports, and the head writes each
one's config line on its stdin once it listens (:mod:`pm.agent.child_starts` takes
them with :func:`take`).  If the job never gets that far, our exit closes
their stdin and they leave without a word.

Inside a Slurm allocation (:func:`step_now`) the step's config line goes too, right
after srun starts: a listening socket made here (the head's zmq port adopts it later:
:func:`take_listener`), the job's secret and id (:func:`take_identity`).  The agents then
find their place, vertex 0 opens its port and reports it, and every agent connects
while the head still imports; the kernel holds the connections until the head listens.
"""

from __future__ import annotations

import contextlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see step_now)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from pm.bootstrap.pipes import Piped
    from pm.jobspec import JobSpec
    from pm.options import Parsed

#: vertex -> (host, started command) of the agents started early.
_STARTED: dict[int, tuple[str, Piped]] = {}


class _Head:
    """What the early step's config line told its agents (see the module docstring)."""

    __slots__ = ("address", "job_id", "secret", "sock", "wire")

    def __init__(self, sock: Any, address: str, secret: bytes, job_id: str, wire: object
                 ) -> None:
        self.sock = sock
        self.address = address
        self.secret = secret
        self.job_id = job_id
        self.wire = wire


#: The early step's config, its socket not taken yet (None: no config was written).
_HEAD: _Head | None = None
#: The early step, told a config whose socket is not taken yet: only that port serves it.
_TOLD: list[Piped] = []
#: ... and once the head took that socket (:func:`configured`).
_ADOPTED: list[Piped] = []


def prestart(hosts: list[str], given: list[int | None], options: dict[str, Any],
             spec: JobSpec, fanout: int,
             app_nodes: list[tuple[list[int], list[int | None]]] | None = None,
             deal: list[tuple[int, int]] | None = None) -> None:
    """Start vertex 0's and its children's commands (``start == "first"``), or the one
    command that starts every agent (``"step"``), if the bootstrap is one that can.
    ``app_nodes``: each program's own nodes (``pm.common.nodes.Nodes.app_nodes``);
    ``deal``: Hydra's host list's entries (``Nodes.deal``)."""
    if options.get("start") not in ("first", "step") or not spec.apps or spec.placement:
        return  # (a rankfile's hosts: the plan's nodes are the ranks' own, started later)
    from pm.bootstrap import get_bootstrap
    from pm.bootstrap.exec import CommandBootstrap
    from pm.common.kary_tree import Tree
    from pm.common.mapping import deal as dealt
    from pm.common.mapping import place, programs_nodes
    from pm.jobspec import sequence_slots

    try:
        if app_nodes is not None:  # the plan's hosts as pm.head.JobRun will make them
            kept = programs_nodes([a.n for a in spec.apps], spec.ppn, spec.distribution,
                                  app_nodes)[0]
            hosts, used = [hosts[i] for i in kept], len(kept)
        else:
            node_of_rank = dealt(spec.size, deal) if deal is not None else \
                place(spec.size, sequence_slots(spec, len(hosts), given), spec.distribution)
            used = max(node_of_rank) + 1
        if options.get("exact"):  # srun's --exact: the CPUs the plan will ask for
            if app_nodes is not None:
                return
            from pm.bootstrap.base import step_cpus

            options = {**options, "cpus": step_cpus(node_of_rank, spec.bind_to)}
        boot = get_bootstrap(str(options.get("name")), options)
    except Exception:  # the full path names whatever is wrong
        return
    if not isinstance(boot, CommandBootstrap):
        return
    if options.get("start") == "step":
        if -1 not in _STARTED:  # (pmrun's quick check may have started it: step_now)
            _start_step(boot, hosts[:used])
        return
    first = (0, *Tree(used, max(1, fanout)).children(0))
    prefetch = getattr(boot, "prefetch", None)
    if prefetch is not None:
        with contextlib.suppress(Exception):  # ssh -G for every host at once
            prefetch([hosts[v] for v in first])
    for v in first:
        try:
            _STARTED[v] = (hosts[v], boot.launch(hosts[v]))
        except Exception:  # started the usual way later, which names the failure
            continue


def _start_step(boot: Any, hosts: list[str]) -> None:
    from pm.common.hostlist import compress

    with contextlib.suppress(Exception):  # vertex -1: the step that starts them all
        _STARTED[-1] = (compress(hosts), boot.launch_step(hosts))


def step_now(parsed: Parsed, environ: Mapping[str, str]) -> None:
    """Inside a Slurm allocation, start the agents' step (``start == "step"``) as soon as
    pmrun's quick check has read the command line, before the full path's imports (20 ms
    of CPU), when :func:`step_hosts` can tell its hosts.  The full path takes the step if
    its plan has the same hosts (:func:`take`), else lets it go."""
    if -1 in _STARTED or "do_not_launch" in parsed.values:
        return
    try:
        found = step_hosts(parsed, environ)
        if found is None:
            return
        from pm.bootstrap import get_bootstrap
        from pm.bootstrap.exec import CommandBootstrap

        boot = get_bootstrap("slurm", found[1])
    except Exception:  # the full path names whatever is wrong
        return
    if isinstance(boot, CommandBootstrap):
        _start_step(boot, found[0])
        if -1 in _STARTED:
            # (No socket to be had, ...: the head writes the config, as without this.)
            with contextlib.suppress(Exception):
                _tell_step(_STARTED[-1][1], found[0], found[1], parsed)


def _tell_step(proc: Piped, hosts: list[str], options: dict[str, Any], parsed: Parsed) -> None:
    """Write the step's config line now (see the module docstring)."""
    global _HEAD
    import json
    import os
    import socket

    from pm.bootstrap.base import step_config
    from pm.common.hostlist import compress
    from pm.jobenv import new_job_id
    from pm.options import log_level

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Every address, as the head's port when node names do not resolve
        # (pm.agent.listen_port.listen_endpoint): the agents reach it where srun runs.
        sock.bind(("0.0.0.0", 0))
        sock.listen(256)
        address = f"tcp://0.0.0.0:{sock.getsockname()[1]}"
        secret, job_id = os.urandom(32), new_job_id()
        fanout = parsed.values.get("fanout", 32)
        wire = step_config(secret=secret, job_id=job_id, address=address,
                           level=log_level(parsed.verbose), options=options,
                           hosts=compress(hosts),
                           fanout=max(1, int(fanout)),  # type: ignore[call-overload]
                           ).to_wire()
    except BaseException:
        sock.close()
        raise
    _HEAD = _Head(sock, address, secret, job_id, wire)
    if proc.write(json.dumps(wire).encode() + b"\n"):
        _TOLD.append(proc)


def take_identity() -> tuple[bytes, str] | None:
    """The job secret and id the early step's agents were told, if any (the head's now)."""
    return (_HEAD.secret, _HEAD.job_id) if _HEAD is not None else None


def take_listener(wire_of: Callable[[str], object]) -> tuple[int, int] | None:
    """The early step's listening socket as ``(fd, port)``, now the caller's, if the config
    its agents got is the one the head would write (``wire_of(address)``); else the early
    step goes (its agents would look for another port) and None."""
    global _HEAD
    head, _HEAD = _HEAD, None
    if head is None:
        return None
    port = int(head.sock.getsockname()[1])
    if _TOLD and wire_of(head.address) == head.wire:
        _ADOPTED.extend(_TOLD)
        _TOLD.clear()
        return head.sock.detach(), port
    head.sock.close()
    _drop_told()
    return None


def configured(proc: Piped) -> bool:
    """Whether ``proc`` (from :func:`take`) has its config line already."""
    return proc in _ADOPTED


def _drop_told() -> None:
    """Let the steps told a config go: no port of ours serves it."""
    while _TOLD:
        told = _TOLD.pop()
        for vertex, (_, proc) in list(_STARTED.items()):
            if proc is told:
                del _STARTED[vertex]
                proc.abandon()


def step_hosts(parsed: Parsed, environ: Mapping[str, str]
               ) -> tuple[list[str], dict[str, Any]] | None:
    """The hosts of the agents' Slurm step for this command line, and the bootstrap
    options, as the full path finds them (``pm.cli_nodes.hosts_of``, then :func:`prestart`);
    None unless the command line is one program with options the quick path knows (none
    of which changes the hosts, their slots or the launcher) inside an allocation."""
    if parsed.action or len(parsed.sections) != 1:
        return None
    if not all(opt.quick for opt in parsed.used) or \
            {"launcher", "hosts", "hostfile", "nodes"} & parsed.values.keys():
        return None  # (options the quick path takes that choose the hosts: -hosts, -f, -N)
    if not (environ.get("SLURM_JOB_ID") and environ.get("SLURM_JOB_NODELIST")):
        return None
    from pm.bootstrap import bootstrap_options, default_hosts
    from pm.common.mapping import place, slots_per_node

    name = parsed.values.get("job_name")  # (-J: the step's name, as the full path's)
    options = bootstrap_options({"job_name": str(name)} if name else {}, False)
    given = default_hosts(options)
    if options.get("name") != "slurm" or options.get("start") != "step" or not given:
        return None
    values = parsed.sections[0].values
    ppn = int(parsed.values["ppn"]) if "ppn" in parsed.values else None  # type: ignore[call-overload]
    if "n" in values:
        n = int(values["n"])  # type: ignore[call-overload]
    elif ppn:
        n = ppn * len(given)  # no -n: ppn ranks a node (pm.cli_nodes.hosts_of)
    elif all(s is not None for _, s in given):
        n = sum(int(s or 0) for _, s in given)  # no -n: a rank per slot (pm.cli_nodes.hosts_of)
    else:
        return None
    if "distribution" in parsed.values:
        spread = str(parsed.values["distribution"])
    else:
        from pm.options import slurm_distribution

        spread = slurm_distribution(environ)
    used = max(place(n, slots_per_node(n, ppn, len(given), [s for _, s in given]),
                     spread)) + 1
    return [h for h, _ in given][:used], options


def take(vertex: int, host: str) -> Piped | None:
    """The command started early for ``vertex`` on ``host``, now the caller's."""
    entry = _STARTED.pop(vertex, None)
    if entry is None:
        return None
    if entry[0] != host or entry[1] in _TOLD:  # not the plan we guessed: let it go
        entry[1].abandon()
        return None
    return entry[1]


def abandon_all() -> None:
    """Let go of what was started early and not taken (closing its stdin ends it)."""
    global _HEAD
    if _HEAD is not None:
        _HEAD.sock.close()
        _HEAD = None
    _TOLD.clear()
    _ADOPTED.clear()
    while _STARTED:
        _, (_, proc) = _STARTED.popitem()
        proc.abandon()
