"""Micro-benchmark of the shared-memory KVS table alone (no agent, no ranks).

    python bench/kvs_table.py [--keys N] [--rounds R] [--json] [--no-socket]

Fills a table with N 16-byte keys and 64-byte values, then reports medians:

* per-call latencies (each call timed alone; the cost of reading the clock,
  measured the same way, is subtracted) for inserts, first-time gets (a
  fresh reader each round, so every key is probed and checked), repeated
  gets (served from the reader's cache of views), uncached gets
  (``cache=False``), misses and repeated ``get_view``;
* the same as the mean over whole rounds (no clock in the loop), median
  over rounds;
* for contrast, a get as a round trip over a Unix socketpair to another
  process (what a per-get request to the node agent costs at the least).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pm.agent.shmkvs import ShmKVSWriter
from pm.client.shmkvs import ShmKVSReader

_clock = time.perf_counter_ns

_ECHO = """
import os, socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
value = bytes(64)
while True:
    k = s.recv(4096)
    if not k:
        break
    s.sendall(value)
"""


def key(i: int) -> bytes:
    return b"P%07d-bc-addr" % i


def value(i: int) -> bytes:
    return (b"%08d" % i) * 8


def per_call(fn: Callable[[bytes], object], keys: list[bytes], overhead: float) -> float:
    """Median of single-call times in ns, clock overhead removed."""
    times = []
    for k in keys:
        t0 = _clock()
        fn(k)
        times.append(_clock() - t0)
    return max(0.0, statistics.median(times) - overhead)


def per_round(fn: Callable[[bytes], object], keys: list[bytes]) -> float:
    t0 = _clock()
    for k in keys:
        fn(k)
    return (_clock() - t0) / len(keys)


def clock_overhead() -> float:
    times = []
    for _ in range(20000):
        t0 = _clock()
        times.append(_clock() - t0)
    return statistics.median(times)


def socket_rtt(rounds: int) -> float:
    """Median ns of a 16-byte request / 64-byte reply over a socketpair to another process."""
    a, b = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", _ECHO, str(b.fileno())], pass_fds=[b.fileno()])
    b.close()
    try:
        req = key(1)
        times = []
        for _ in range(rounds):
            t0 = _clock()
            a.sendall(req)
            a.recv(4096)
            times.append(_clock() - t0)
        return statistics.median(times[rounds // 10 :])
    finally:
        a.close()
        proc.wait()


def run(nkeys: int, rounds: int, with_socket: bool) -> dict[str, float]:
    job = f"bench{os.getpid()}"
    keys = [key(i) for i in range(nkeys)]
    absent = [b"Q%07d-bc-addr" % i for i in range(nkeys)]
    overhead = clock_overhead()
    out: dict[str, float] = {"keys": nkeys, "clock_overhead_ns": overhead}
    firsts, first_rounds, inserts = [], [], []
    for _ in range(rounds):
        # A fresh, minimally sized table each round: the inserts include its growth.
        with ShmKVSWriter(job, 0, slots=8, heap=4096) as w:
            times = []
            for i, k in enumerate(keys):
                v = value(i)
                t0 = _clock()
                w.insert(k, v)
                times.append(_clock() - t0)
            inserts.append(statistics.mean(times))
            with ShmKVSReader(w.name) as r:
                firsts.append(per_call(r.get, keys, overhead))
            with ShmKVSReader(w.name) as r:
                first_rounds.append(per_round(r.get, keys))
    out["insert_mean_ns_incl_growth"] = statistics.median(inserts)
    out["first_get_ns"] = statistics.median(firsts)
    out["first_get_round_mean_ns"] = statistics.median(first_rounds)

    with ShmKVSWriter(job, 0, slots=2 * nkeys) as w:
        w.insert_many((k, value(i)) for i, k in enumerate(keys))
        out["segment_bytes"] = w.segment_bytes
        out["bytes_used"] = w.bytes_used
        with ShmKVSReader(w.name) as r, ShmKVSReader(w.name, cache=False) as rn:
            for k in keys:
                r.get(k)  # warm the cache
            cases: list[tuple[str, Callable[[bytes], object], list[bytes]]] = [
                ("repeated_get", r.get, keys),
                ("repeated_get_view", r.get_view, keys),
                ("uncached_get", rn.get, keys),
                ("miss", rn.get, absent),
            ]
            for name, fn, ks in cases:
                out[f"{name}_ns"] = statistics.median(
                    per_call(fn, ks, overhead) for _ in range(rounds))
                out[f"{name}_round_mean_ns"] = statistics.median(
                    per_round(fn, ks) for _ in range(rounds))
            assert all(r.get(k) == value(i) for i, k in enumerate(keys))
    if with_socket:
        out["socket_round_trip_ns"] = socket_rtt(max(2000, nkeys // 5))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-socket", action="store_true", help="skip the socket comparison")
    args = ap.parse_args()
    res = run(args.keys, args.rounds, not args.no_socket)
    if args.json:
        print(json.dumps(res))
        return
    print(f"shm KVS table: {res['keys']} keys of 16 B, values of 64 B; medians in ns "
          f"(clock overhead {res['clock_overhead_ns']:.0f} ns removed from per-call)")
    print(f"  {'':28} {'per call':>9} {'round mean':>11}")
    print(f"  {'insert (incl. growth)':28} {'':>9} {res['insert_mean_ns_incl_growth']:11.0f}")
    rows = [("first-time get", "first_get"), ("repeated get (cached)", "repeated_get"),
            ("repeated get_view", "repeated_get_view"), ("uncached get (cache=False)",
                                                          "uncached_get"), ("miss", "miss")]
    for label, k in rows:
        print(f"  {label:28} {res[k + '_ns']:9.0f} {res[k + '_round_mean_ns']:11.0f}")
    if "socket_round_trip_ns" in res:
        print(f"  {'socketpair round trip':28} {res['socket_round_trip_ns']:9.0f}")
    print(f"  segment bytes {res['segment_bytes']:.0f}, KVS data bytes {res['bytes_used']:.0f}")


if __name__ == "__main__":
    main()
