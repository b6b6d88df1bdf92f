"""A Python rank using pmrun's own client: an allgather that overlaps other start-up work.

    pmrun -n 8 --local-nodes 2 python examples/allgather.py
"""

from __future__ import annotations

import asyncio
import os
import socket

from pm.client import connect


async def main() -> None:
    async with connect() as pmi:
        # Announce an address; the exchange progresses while we do other work.
        addresses = pmi.iallgather(f"{socket.gethostname()}:{5000 + pmi.rank}")
        scratch = sum(range(100_000))  # stand-in for other start-up work
        peers = [a.decode() for a in await addresses]
        left, right = await pmi.ring(b"%d" % pmi.rank)
        await pmi.put("pid", str(os.getpid()))
        await pmi.fence()
        pid0 = (await pmi.get("pid", rank=0)).decode()
        if pmi.rank == 0:
            print(f"{pmi.size} ranks; addresses: {peers}")
        print(f"rank {pmi.rank}: ring neighbours {left.decode()},{right.decode()}; "
              f"rank 0 is pid {pid0}; scratch {scratch}")


asyncio.run(main())
