"""What an agent says of its running ranks before a timeout ends them.

``--report-state-on-timeout`` and ``--get-stack-traces`` (Open MPI's): when the
job's time is up, every agent names each of its ranks that still runs, with
what the process is doing and how far it got with PMI, and, with stacks, what
``gdb`` prints of its threads, before the ranks are killed.  A hang in CI then
says which rank hangs and where, instead of "timed out" alone::

    rank 3 (node 1, n2), pid 4242: sleeping, 0.01 s of CPU; in the PMI fence 1
    rank 3 (node 1, n2), pid 4242: stack:
      Thread 1 (Thread 0x7f... (LWP 4242) "app"):
      #0  0x00007f... in __GI___poll (...)

The lines go up the tree as a :class:`~pm.proto.tree_wire.Report`; the head
writes them to its standard error.  A stack needs ``gdb`` on the node and the
right to attach to the rank (``kernel.yama.ptrace_scope``); where either is
missing, one line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from typing import TYPE_CHECKING

from pm.agent.pmi_actions import Wire
from pm.agent.ranks import PmiPhase
from pm.proto.errors import rank_at
from pm.proto.tree_wire import REPORT_STACKS

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.ranks import RankProc

#: How long one rank's stack may take (gdb attaching, reading symbols).
STACK_TIMEOUT = 20.0
#: Stacks taken at the same time on a node.
STACKS_AT_ONCE = 4
#: Lines of one rank's stack at most (the rest are counted).
STACK_LINES = 200

_STATES = {"R": "running", "S": "sleeping", "D": "waiting for I/O (uninterruptible)",
           "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie", "X": "dead",
           "I": "idle"}


def process_state(pid: int) -> str:
    """``sleeping, 0.01 s of CPU`` from /proc (empty when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()  # (the name may hold spaces and ')')
    if len(fields) < 13:
        return ""
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return f"{_STATES.get(fields[0], fields[0])}, {cpu:.2f} s of CPU"


def pmi_state(agent: JobAgent, proc: RankProc) -> str:
    """How far ``proc`` got with PMI, and the collective it waits in."""
    if proc.pmi is PmiPhase.NONE:
        return "no PMI init yet"
    # A PMIx client (Open MPI's) never spoke on its PMI socket: its fences ride the tree's
    # allgather.
    pmix = agent.pmix is not None and (proc.session is None
                                       or proc.session.protocol is Wire.UNKNOWN)
    name = "PMIx" if pmix else "PMI"
    if proc.pmi is PmiPhase.FINALIZED:
        return f"{name} finalized"
    waits = agent.coll.pending(proc.rank)
    if pmix and waits.startswith("allgather "):
        waits = "fence " + waits.split()[1]
    return f"in the {name} {waits}" if waits else f"{name} initialized"


async def stack(pid: int) -> list[str]:
    """What gdb prints of ``pid``'s threads (``Thread`` and frame lines), or why not."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return ["no stack: gdb is not installed here"]
    try:
        proc = await asyncio.create_subprocess_exec(
            gdb, "-nx", "-batch", "-p", str(pid), "-ex", "set pagination off",
            "-ex", "thread apply all bt", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"}, start_new_session=True)
    except OSError as exc:
        return [f"no stack: cannot run gdb: {exc.strerror or exc}"]
    try:
        out, err = await asyncio.wait_for(proc.communicate(), STACK_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return [f"no stack: gdb took more than {STACK_TIMEOUT:g} s"]
    except asyncio.CancelledError:  # (the job is killed at once after all: gdb goes too)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    lines = [line.rstrip() for line in out.decode(errors="replace").splitlines()
             if line.startswith(("Thread ", "#"))]
    if not lines:
        text = err.decode(errors="replace")
        if "ptrace" in text or "Operation not permitted" in text:
            return ["no stack: gdb may not attach to it (ptrace is restricted here: "
                    "kernel.yama.ptrace_scope)"]
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
        return [f"no stack: gdb: {last.strip()}"]
    if len(lines) > STACK_LINES:
        lines = [*lines[:STACK_LINES], f"... {len(lines) - STACK_LINES} more lines"]
    return lines


async def report_lines(agent: JobAgent, level: int) -> list[str]:
    """The lines about ``agent``'s ranks still running; their stacks at ``REPORT_STACKS``."""
    running = [p for p in agent.ranks.values() if p.pid and p.status is None]
    names: dict[int, str] = {}
    heads: list[str] = []
    for p in running:
        state = process_state(p.pid)
        if not state:
            continue  # (ended meanwhile: its exit says how)
        names[p.rank] = f"{rank_at(p.rank, agent.vertex, agent.host)}, pid {p.pid}"
        heads.append(f"{names[p.rank]}: {state}; {pmi_state(agent, p)}")
    if level < REPORT_STACKS:
        return heads
    gate = asyncio.Semaphore(STACKS_AT_ONCE)

    async def one(p: RankProc) -> list[str]:
        async with gate:
            return await stack(p.pid)

    procs = [p for p in running if p.rank in names]
    stacks = await asyncio.gather(*(one(p) for p in procs))
    lines: list[str] = []
    for head, p, st in zip(heads, procs, stacks, strict=True):
        lines.append(head)
        where = names[p.rank]
        if len(st) == 1 and st[0].startswith("no stack"):
            lines.append(f"{where}: {st[0]}")
        else:
            lines.append(f"{where}: stack:")
            lines += [f"  {line}" for line in st]
    return lines
