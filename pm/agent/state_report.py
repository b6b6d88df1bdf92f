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
from pm.agent.rank_proc import PmiPhase
from pm.proto.errors import rank_at
from pm.proto.tree_wire import REPORT_STACKS

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.rank_proc import RankProc

#: How long one rank's stack may take (gdb attaching, reading symbols).
STACK_TIMEOUT = 20.0
#: gdbs at the same time on a node at most (each takes its share of the ranks in turn), and
#: no more than the agent's CPUs: 16 stacks here (2 CPUs) took 3.3 s with one gdb, 2.2 s
#: with 2, 2.4 s with 4 and 2.7 s with 8, against 3.0 s for a gdb a rank, 4 at once.
STACKS_AT_ONCE = 8
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
    if waits:
        return f"in the {name} {waits}"
    other = proc.session.waits() if proc.session is not None else ""
    return f"{name} initialized, {other}" if other else f"{name} initialized"


#: What gdb is told to print before each rank's stack, to tell them apart.
_MARK = "@@@ pm-stack "


async def stacks(pids: list[int]) -> dict[int, list[str]]:
    """What gdb prints of each of ``pids``' threads (``Thread`` and frame lines), or why
    not: one gdb for them all, attaching to one after the other (a gdb's start and the
    symbols of a program shared by the ranks cost most of a stack: ~0.4 s of CPU for the
    first rank here, ~0.1 s for each other one)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return {pid: ["no stack: gdb is not installed here"] for pid in pids}
    argv = [gdb, "-nx", "-batch", "-ex", "set pagination off"]
    for pid in pids:
        argv += ["-ex", f"echo {_MARK}{pid}\\n", "-ex", f"attach {pid}",
                 "-ex", "thread apply all bt", "-ex", "detach"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,  # (in order: an attach's error in its part)
            env={**os.environ, "LC_ALL": "C"}, start_new_session=True)
    except OSError as exc:
        return {pid: [f"no stack: cannot run gdb: {exc.strerror or exc}"] for pid in pids}
    assert proc.stdout is not None
    limit = STACK_TIMEOUT * len(pids)
    out = bytearray()

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            out.extend(chunk)

    reading = asyncio.ensure_future(read())
    late = False
    try:
        await asyncio.wait_for(asyncio.shield(reading), limit)
    except TimeoutError:
        late = True
    except asyncio.CancelledError:  # (the job is killed at once after all: gdb goes too)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        reading.cancel()
        raise
    if late:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await reading  # what it printed before (EOF once it is gone)
    await proc.wait()
    parts = _parts(out.decode(errors="replace"))
    return {pid: _stack_of(parts.get(pid, []), late, limit) for pid in pids}


def _parts(text: str) -> dict[int, list[str]]:
    """gdb's output, rank by rank (the lines after each of its marks)."""
    parts: dict[int, list[str]] = {}
    mine: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            with contextlib.suppress(ValueError):
                mine = parts.setdefault(int(line[len(_MARK):]), [])
            continue
        if mine is not None:
            mine.append(line.rstrip())
    return parts


def _stack_of(part: list[str], late: bool, limit: float) -> list[str]:
    """One rank's stack from its part of gdb's output, or why there is none."""
    lines = [line for line in part if line.startswith(("Thread ", "#"))]
    if not lines:
        text = "\n".join(part)
        if late and not part:
            return [f"no stack: gdb took more than {limit:g} s"]
        if "ptrace" in text and "Operation not permitted" in text:
            return ["no stack: gdb may not attach to it (ptrace is restricted here: "
                    "kernel.yama.ptrace_scope)"]
        last = next((ln for ln in part if ln.strip()), "no output")
        return [f"no stack: gdb: {last.strip()}"]
    if len(lines) > STACK_LINES:
        lines = [*lines[:STACK_LINES], f"... {len(lines) - STACK_LINES} more lines"]
    return lines


async def report_lines(agent: JobAgent, level: int) -> list[str]:
    """The lines about ``agent``'s ranks still running, and those of the jobs they spawned
    on its node; their stacks at ``REPORT_STACKS``."""
    jobs = [(0, agent)]
    if agent.spawns is not None:
        jobs += sorted(agent.spawns.jobs.items())
    running = [(job, sub, p) for job, sub in jobs for p in sub.ranks.values()
               if p.pid and p.status is None]
    names: dict[int, str] = {}  # pid -> the rank's name
    heads: list[str] = []
    procs: list[RankProc] = []
    for job, sub, p in running:
        state = process_state(p.pid)
        if not state:
            continue  # (ended meanwhile: its exit says how)
        where = rank_at(p.rank, agent.vertex, agent.host)
        if job:
            where = where.replace(f"rank {p.rank} ", f"rank {p.rank} of spawned job {job} ", 1)
        names[p.pid] = f"{where}, pid {p.pid}"
        heads.append(f"{names[p.pid]}: {state}; {pmi_state(sub, p)}")
        procs.append(p)
    if level < REPORT_STACKS:
        return heads
    # A gdb a CPU at most, each taking its share of the ranks one after the other.
    at_once = max(1, min(STACKS_AT_ONCE, len(os.sched_getaffinity(0))))
    shares = [[p.pid for p in procs[i::at_once]] for i in range(at_once)]
    found: dict[int, list[str]] = {}
    for got in await asyncio.gather(*(stacks(pids) for pids in shares if pids)):
        found.update(got)
    lines: list[str] = []
    for head, p in zip(heads, procs, strict=True):
        st = found[p.pid]
        lines.append(head)
        where = names[p.pid]
        if len(st) == 1 and st[0].startswith("no stack"):
            lines.append(f"{where}: {st[0]}")
        else:
            lines.append(f"{where}: stack:")
            lines += [f"  {line}" for line in st]
    return lines
