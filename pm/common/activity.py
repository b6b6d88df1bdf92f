"""How busy a host is, as GNU parallel's ``--load``, ``--noswap`` and ``--limit``'s
builtins judge it: from ``/proc``, sampled with the host's memory.

- **load**: the threads running or waiting for a disk *now* (``procs_running`` +
  ``procs_blocked`` of ``/proc/stat``, less the one reading it) -- parallel's instant
  load (``ps`` in state R or D), not the minutes-long load average, so that it starts at
  most the tasks that bring the load to the limit;
- **swapping**: pages were both swapped in and out since the previous sample
  (``pswpin``/``pswpout`` of ``/proc/vmstat``; parallel's ``vmstat`` si x so);
- **io**: the busiest disk's share of time with I/O under way since the previous
  sample, in percent (``io_ticks`` of ``/proc/diskstats``; parallel's ``iostat -x`` %util).

The first read compares with the figures at the probe's creation.
"""

from __future__ import annotations

import time
from typing import NamedTuple

__all__ = ["Activity", "ActivityProbe", "blocked_io", "running_threads", "swap_counts"]


class Activity(NamedTuple):
    load: int
    swapping: bool
    io: int


def running_threads(stat: str) -> int:
    """Threads running or in uninterruptible sleep, from ``/proc/stat``'s text (pure)."""
    count = 0
    for line in stat.splitlines():
        if line.startswith(("procs_running ", "procs_blocked ")):
            count += int(line.split()[1])
    return count


def swap_counts(vmstat: str) -> tuple[int, int]:
    """Pages swapped in and out since boot, from ``/proc/vmstat``'s text (pure)."""
    seen = {"pswpin": 0, "pswpout": 0}
    for line in vmstat.splitlines():
        key, _, value = line.partition(" ")
        if key in seen:
            seen[key] = int(value)
    return seen["pswpin"], seen["pswpout"]


def blocked_io(diskstats: str) -> dict[str, int]:
    """Each block device's milliseconds with I/O under way, from ``/proc/diskstats``'s
    text (pure); RAM disks left out, as ``iostat``'s report leaves them."""
    ticks: dict[str, int] = {}
    for line in diskstats.splitlines():
        words = line.split()
        if len(words) >= 13 and not words[2].startswith("ram"):
            ticks[words[2]] = int(words[12])
    return ticks


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # (a /proc without it: nothing to count)
        return ""


class ActivityProbe:
    """Reads a host's :class:`Activity` (this machine's ``/proc``)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._swaps = swap_counts(_read(f"{proc}/vmstat"))
        self._ticks = blocked_io(_read(f"{proc}/diskstats"))
        self._at = time.monotonic()

    def read(self) -> Activity:
        proc = self._proc
        load = max(running_threads(_read(f"{proc}/stat")) - 1, 0)  # (less our own)
        swaps = swap_counts(_read(f"{proc}/vmstat"))
        ticks = blocked_io(_read(f"{proc}/diskstats"))
        now = time.monotonic()
        elapsed = max((now - self._at) * 1000, 1.0)
        busiest = max((t - self._ticks.get(dev, t) for dev, t in ticks.items()), default=0)
        swapping = swaps[0] > self._swaps[0] and swaps[1] > self._swaps[1]
        self._swaps, self._ticks, self._at = swaps, ticks, now
        return Activity(load, swapping, min(round(100 * busiest / elapsed), 100))
