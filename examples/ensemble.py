"""A memory-controlled ensemble: tasks are admitted only while the node stays under
its high memory watermark.

    python examples/ensemble.py
"""

from __future__ import annotations

import asyncio
import sys

import pm

# Each task holds about 50 MiB for a moment.
TASK = [sys.executable, "-c",
        "b = bytearray(50 << 20); import time; time.sleep(0.2); print(len(b))"]


async def main() -> None:
    async with pm.Cluster(local_nodes=1) as cluster:
        tasks = []
        for _ in range(6):
            # Returns once the node admits the task (it blocks while memory is short).
            tasks.append(await cluster.submit(TASK, mem="64M"))
        for task in tasks:
            result = await task.wait()
            print("task exit", result.returncode)


if __name__ == "__main__":
    asyncio.run(main())
    # The same, blocking, from a list of tasks-file lines.
    pm.run_tasks(["[mem=64M] " + " ".join(repr(a) if " " in a else a for a in TASK)] * 3)
