"""A rank for ``bench/faults.py`` (run by pmrun, one process per rank).

    python bench/_fault_rank.py MODE [ARG]

MPI modes (mpi4py on MPICH): ``exit CODE``, ``signal SIG``, ``abort CODE``,
``pmi-close`` (the last rank does it after ``MPI_Init``; the others wait in a
barrier), ``wait`` (every rank prints ``READY rank agent-pid`` and waits for
the file ``ARG`` to exist, then finalizes), ``hello``; with a spawn (each rank of
the job spawns 2 children running the same mode): ``spawn-exit CODE`` (child
rank 1 exits with CODE), ``spawn-wait`` (as ``wait``, children included).
Other modes: ``garbage FILE`` (send FILE's bytes on ``PMI_FD``, read what
comes back until the agent closes or goes quiet, exit 0), ``stdin`` (print how
many bytes stdin held), ``flood`` (write lines for ever).
"""

from __future__ import annotations

import os
import select
import sys
import time
from typing import Any


def mpi_mode(mode: str, arg: str) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    last = rank == size - 1
    comm.Barrier()
    if mode.startswith("spawn-"):
        return spawn_mode(MPI, mode, arg)
    if mode == "wait":
        print(f"READY {rank} {os.getppid()}", flush=True)
        while not os.path.exists(arg):
            time.sleep(0.05)  # a rank polling for its go-file
        comm.Barrier()
        return 0
    if mode == "hello":
        total = comm.allreduce(rank)
        print(f"hello {rank} {total}", flush=True)
        return 0
    if last:
        if mode == "exit":
            os._exit(int(arg))
        if mode == "signal":
            os.kill(os.getpid(), int(arg))
        if mode == "abort":
            comm.Abort(int(arg))
        if mode == "pmi-close":
            os.close(int(os.environ["PMI_FD"]))
            time.sleep(30)  # alive, PMI gone: pmrun must name it and end the job
            return 0
    comm.Barrier()  # the others wait here until the job is ended for them
    return 0


def spawn_mode(MPI: Any, mode: str, arg: str) -> int:
    """The job spawns 2 children (running this mode too); they go on with it together."""
    comm = MPI.COMM_WORLD
    parent = MPI.Comm.Get_parent()
    spawned = parent != MPI.COMM_NULL
    if spawned:
        inter = parent
    else:
        inter = comm.Spawn(sys.executable, [os.path.abspath(__file__), mode, arg], maxprocs=2)
    if mode == "spawn-wait":
        print(f"READY {comm.Get_rank()} {os.getppid()}", flush=True)
        while not os.path.exists(arg):
            time.sleep(0.05)  # a rank polling for its go-file
    elif spawned and comm.Get_rank() == 1:
        os._exit(int(arg))
    inter.Barrier()  # parents and children wait here until the job is ended for them
    inter.Disconnect()
    return 0


def garbage(path: str) -> int:
    fd = int(os.environ["PMI_FD"])
    with open(path, "rb") as f:
        data = f.read()
    try:
        os.write(fd, data) if len(data) < 65536 else _write_all(fd, data)
    except OSError:
        return 0  # the agent closed on us: fine, it refused the input
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            break  # quiet: nothing more to read
        try:
            if not os.read(fd, 65536):
                break
        except OSError:
            break
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main() -> int:
    import signal

    # Die of SIGINT as a C program would (Python's KeyboardInterrupt prints a traceback).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    mode = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else ""
    if mode == "garbage":
        return garbage(arg)
    if mode == "stdin":
        total = 0  # counted chunk by chunk: the rank's memory is not the figure measured
        while chunk := sys.stdin.buffer.read1(1 << 20):
            total += len(chunk)
        print(total, flush=True)
        return 0
    if mode == "flood":
        line = b"y" * 79 + b"\n"
        block = line * 1000
        try:
            while True:
                os.write(1, block)
        except BrokenPipeError:
            # Python ignores SIGPIPE: a closed stdout is this error (a traceback otherwise).
            return 1
    return mpi_mode(mode, arg)


if __name__ == "__main__":
    sys.exit(main())
