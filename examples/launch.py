"""Launch jobs from Python: blocking, then async with output iteration and a failing job.

    python examples/launch.py
"""

from __future__ import annotations

import asyncio
import sys

import pm


def blocking() -> None:
    # Output goes straight to this process's stdout; the result names each rank's status.
    result = pm.run([sys.executable, "-c", "import os; print('rank', os.environ['PMI_RANK'])"],
                    n=4, local_nodes=2, label=True)
    print("blocking run:", result.returncode, result.exit_codes)


async def with_a_cluster() -> None:
    async with pm.Cluster(local_nodes=2, fanout=2) as cluster:
        job = await cluster.launch(
            [sys.executable, "-c", "import os; print('hello from', os.environ['PMI_RANK'])"], n=4)
        async for rank, stream, line in job.output():
            print(f"rank {rank} {stream}: {line.decode().rstrip()}")
        print("async run:", (await job.wait()).returncode)

        # One rank fails: the result names it first, the other ranks are torn down.
        failing = await cluster.launch(
            [sys.executable, "-c",
             "import os, sys, time\n"
             "if os.environ['PMI_RANK'] == '2': sys.exit(3)\n"
             "time.sleep(60)"], n=4)
        result = await failing.wait()
        print("failing run:", result.returncode, "-", result.cause)


if __name__ == "__main__":
    blocking()
    asyncio.run(with_a_cluster())
