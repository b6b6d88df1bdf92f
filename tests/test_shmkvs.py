"""Shared-memory KVS: writer (pm.agent.shmkvs) and reader (pm.client.shmkvs) on real /dev/shm."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pm.agent.shmkvs import ShmKVSWriter, cleanup_stale
from pm.client.shmkvs import ShmKVSReader
from pm.proto import shm_layout as L
from pm.proto.errors import PMError, ProtocolError, ResourceLimit

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def job() -> Iterator[str]:
    """A job id no one else uses; whatever is left under its prefix is removed at the end."""
    job_id = "t" + uuid.uuid4().hex[:12]
    yield job_id
    for name in os.listdir(L.SHM_DIR):
        if name.startswith(f"pmrun.{job_id}."):
            os.unlink(os.path.join(L.SHM_DIR, name))


def files(job_id: str) -> list[str]:
    return sorted(n for n in os.listdir(L.SHM_DIR) if n.startswith(f"pmrun.{job_id}."))


def key(i: int) -> bytes:
    return b"P%07d-bc-addr" % i  # 16 bytes


def value(i: int) -> bytes:
    """Derived from the index so that a reader can check it; lengths vary, NUL and 0xff inside."""
    return key(i)[::-1] * (1 + i % 5) + b"\x00\xff" + bytes([i % 256]) * (i % 7)


@pytest.mark.timeout(20)
def test_insert_and_lookup(job: str) -> None:
    with ShmKVSWriter(job, 0) as w, ShmKVSReader(w.name) as r:
        assert w.name == f"pmrun.{job}.0"
        assert w.insert(b"alpha", b"one")
        assert w.insert(b"beta", b"two")
        assert b"alpha" in w and b"gamma" not in w
        assert r.get(b"alpha") == b"one"
        assert r.get(b"beta") == b"two"
        assert r.get(b"gamma") is None
        view = r.get_view(b"beta")
        assert isinstance(view, memoryview) and view.readonly and bytes(view) == b"two"
        assert r.get_view(b"gamma") is None
        assert b"alpha" in r and b"gamma" not in r
        # Inserted after the reader looked: found on the next get (no negative caching).
        assert w.insert(b"gamma", b"three")
        assert r.get(b"gamma") == b"three"
        assert r.get(bytearray(b"gamma")) == b"three"  # type: ignore[arg-type]
        assert len(w) == 3
        assert w.bytes_used == len(b"alphaonebetatwogammathree")
        assert w.segment_bytes == sum(
            os.stat(os.path.join(L.SHM_DIR, n)).st_size for n in files(job))


@pytest.mark.timeout(20)
def test_duplicates_keep_the_first_value(job: str) -> None:
    with ShmKVSWriter(job, 1) as w, ShmKVSReader(w.name) as r:
        assert w.insert(b"k", b"first")
        assert not w.insert(b"k", b"second")
        assert r.get(b"k") == b"first"
        assert w.insert_many([(b"k", b"x"), (b"a", b"1"), (b"b", b"2"), (b"a", b"3")]) == 2
        assert r.get(b"a") == b"1" and r.get(b"b") == b"2" and r.get(b"k") == b"first"
        assert len(w) == 3


def test_replace_publishes_a_generation_readers_follow(job: str) -> None:
    with ShmKVSWriter(job, 1) as w, ShmKVSReader(w.name) as r, \
            ShmKVSReader(w.name, cache=False) as plain:
        w.insert_many([(b"k", b"v1"), (b"other", b"o")])
        assert r.get(b"k") == b"v1" and bytes(r.get_view(b"k") or b"") == b"v1"  # now cached
        held = r.get_view(b"k")
        gen = w.generation
        # Same value: nothing changes; new value: a new generation with it.
        assert w.insert_many([(b"k", b"v1")], replace=True) == 0 and w.generation == gen
        assert w.insert_many([(b"k", b"v2"), (b"new", b"n")], replace=True) == 1
        assert w.generation == gen + 1 and len(w) == 3
        assert r.get(b"k") == b"v2" and plain.get(b"k") == b"v2"
        assert bytes(r.get_view(b"k") or b"") == b"v2"
        assert r.get(b"other") == b"o" and r.get(b"new") == b"n"
        # A view taken before the switch still reads what it read.
        assert held is not None and bytes(held) == b"v1"
        held.release()
        assert files(job) == sorted([w.name, L.data_name(w.name, gen + 1)])


def test_a_retired_table_says_so_and_still_serves_what_it_holds(job: str) -> None:
    """retire(): readers learn that a rank's key may be out of date there (the agent
    serves them); what it holds stays readable (an allgather's values, which never
    change), until the writer closes."""
    with ShmKVSWriter(job, 1) as w, ShmKVSReader(w.name) as r:
        w.insert_many([(b"ag", b"v")])
        assert r.get(b"ag") == b"v" and not r.retired
        w.retire()
        assert r.retired and r.get(b"ag") == b"v"
        with ShmKVSReader(w.name) as late:
            assert late.retired and late.get(b"ag") == b"v"


def _same_home(n: int, mask: int) -> list[bytes]:
    """``n`` keys whose hashes share their low bits (same home slot for ``mask``)."""
    buckets: dict[int, list[bytes]] = {}
    i = 0
    while True:
        k = b"c%d" % i
        b = buckets.setdefault(zlib.crc32(k) & mask, [])
        b.append(k)
        if len(b) == n:
            return b
        i += 1


def _full_hash_collision() -> tuple[bytes, bytes]:
    """Two different keys with the same 32-bit hash (birthday search; deterministic)."""
    seen: dict[int, bytes] = {}
    rng = random.Random(7)  # random keys: CRC-32 keeps similar strings apart for long
    while True:
        k = rng.randbytes(8)
        h = zlib.crc32(k)
        if h in seen:
            return seen[h], k
        seen[h] = k


@pytest.mark.timeout(30)
def test_collisions(job: str) -> None:
    clustered = _same_home(40, 1023)
    a, b = _full_hash_collision()
    assert a != b and L.key_hash(a) == L.key_hash(b)
    with ShmKVSWriter(job, 0, slots=1024) as w, ShmKVSReader(w.name, cache=False) as r:
        for k in clustered:
            assert w.insert(k, k * 3)
        assert w.insert(a, b"value-a")
        assert w.generation == 1  # 41 entries in 1024 slots: no growth, one long probe run
        assert r.get(b) is None  # same hash, different key
        assert w.insert(b, b"value-b")
        for k in clustered:
            assert r.get(k) == k * 3
        assert r.get(a) == b"value-a" and r.get(b) == b"value-b"
        # Same home slot, not inserted: the probe walks the cluster and stops at a hole.
        assert r.get(_same_home(41, 1023)[-1]) is None
        # Many keys in a tiny table: grows, and the collided entries move along.
        many = [(b"m%d" % i, b"v%d" % i) for i in range(3000)]
        assert w.insert_many(many) == 3000
        assert w.generation > 1
        for k, v in many:
            assert r.get(k) == v
        for k in clustered:
            assert r.get(k) == k * 3
        assert r.get(a) == b"value-a" and r.get(b) == b"value-b"


@pytest.mark.timeout(30)
def test_growth_readers_opened_before_find_old_and_new(job: str) -> None:
    with ShmKVSWriter(job, 2, slots=8, heap=4096) as w:
        early = [ShmKVSReader(w.name), ShmKVSReader(w.name, cache=False)]
        for i in range(3):
            w.insert(key(i), value(i))
        assert all(r.get(key(1)) == value(1) for r in early)  # cached in gen 1
        gens = [w.generation]
        for i in range(3, 6000):
            w.insert(key(i), value(i))
            if w.generation != gens[-1]:
                gens.append(w.generation)
        assert len(gens) >= 5, gens
        # Only the header and the current generation exist; older ones are unlinked.
        assert files(job) == sorted([w.name, L.data_name(w.name, w.generation)])
        for r in early:
            assert r.generation == 1
            assert r.get(key(1)) == value(1)  # still served from the old mapping
            assert r.get(key(5999)) == value(5999)  # a miss there moves it on
            assert r.generation == w.generation
            for i in range(0, 6000, 7):
                assert r.get(key(i)) == value(i)
            r.close()


@pytest.mark.timeout(30)
def test_binary_keys_and_values(job: str) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    items = [
        (b"\x00", b"nul key"),
        (b"\x00\x00\x00", b"\x00" * 100),
        (b"\xff" * 16, b"\xff" * 64),
        (b"k\x00with\nnl\r", b"v\x00\xff\x00"),
        (b"empty-value", b""),
        (b"", b"empty key"),
        (b"big", big),
    ]
    with ShmKVSWriter(job, 0, slots=8, heap=4096) as w:
        with ShmKVSReader(w.name) as r:
            for k, v in items:
                assert w.insert(k, v)
            assert w.generation > 1  # the 1 MiB value did not fit the first heap
            for k, v in items:
                assert r.get(k) == v, k
                view = r.get_view(k)
                assert view is not None and view.tobytes() == v
            assert r.get(b"\x00\x00") is None and r.get(b"\xff" * 15) is None
            held = r.get_view(b"big")
        assert held is not None and held.tobytes() == big  # a view outlives the reader
        held.release()
        assert w.bytes_used == sum(len(k) + len(v) for k, v in items)


@pytest.mark.timeout(20)
def test_segments_are_mode_0600_and_close_removes_them(job: str) -> None:
    old = os.umask(0)
    try:
        w = ShmKVSWriter(job, 3, slots=8, heap=4096)
    finally:
        os.umask(old)
    r = ShmKVSReader(w.name)
    seen: set[str] = set()
    for i in range(500):
        w.insert(key(i), value(i))
        for n in files(job):
            seen.add(n)
            assert stat.S_IMODE(os.stat(os.path.join(L.SHM_DIR, n)).st_mode) == 0o600
    assert len(seen) > 3  # several generations came and went
    assert len(files(job)) == 2
    probing = ShmKVSReader(w.name, cache=False)
    assert r.get(key(499)) == value(499)
    w.close()
    assert files(job) == []
    w.close()  # idempotent
    with pytest.raises(PMError):
        w.insert(b"x", b"y")
    # Readers that mapped the table keep working on what they mapped.
    assert r.get(key(499)) == value(499)
    assert probing.get(key(3)) == value(3) and probing.get(b"absent") is None
    probing.close()
    r.close()
    r.close()
    with pytest.raises(PMError):
        ShmKVSReader(w.name)


@pytest.mark.timeout(20)
def test_resource_limit_when_max_bytes_exceeded(job: str) -> None:
    with pytest.raises(ResourceLimit, match="max_bytes"):
        ShmKVSWriter(job, 0, slots=4096, heap=1 << 20, max_bytes=256 << 10)
    assert files(job) == []
    limit = 512 << 10
    with ShmKVSWriter(job, 0, slots=8, heap=4096, max_bytes=limit) as w:
        inserted = 0
        with pytest.raises(ResourceLimit) as info:
            for i in range(100_000):
                w.insert(key(i), value(i))
                inserted += 1
                assert w.segment_bytes <= limit
        msg = str(info.value)
        assert f"max_bytes={limit}" in msg and f"{L.SHM_DIR}/{w.name}" in msg
        assert inserted > 1000
        # The table is unchanged and still serves what it had.
        assert len(w) == inserted
        with ShmKVSReader(w.name) as r:
            assert r.get(key(inserted - 1)) == value(inserted - 1)
            assert r.get(key(inserted)) is None
    assert files(job) == []


@pytest.fixture
def tiny_shm(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real 256 KiB tmpfs used as the shm directory (needs root and mount)."""
    mnt = tempfile.mkdtemp(prefix="pmrun-shm-")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=1777", "tmpfs", mnt],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    monkeypatch.setattr(L, "SHM_DIR", mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)


@pytest.mark.timeout(20)
def test_full_shm_is_a_resource_limit_not_sigbus(job: str, tiny_shm: str) -> None:
    with ShmKVSWriter(job, 0, slots=8, heap=4096, max_bytes=1 << 30) as w:
        with pytest.raises(ResourceLimit) as info:
            for i in range(100_000):
                w.insert(key(i), value(i))
        assert tiny_shm in str(info.value) and "No space left" in str(info.value)
        with ShmKVSReader(w.name) as r:
            assert r.get(key(0)) == value(0)
        # The half-made generation was removed: only header + current remain.
        assert sorted(os.listdir(tiny_shm)) == sorted(
            [w.name, L.data_name(w.name, w.generation)])
    assert os.listdir(tiny_shm) == []


_OWNER = """
import sys
from pm.agent.shmkvs import ShmKVSWriter
w = ShmKVSWriter(sys.argv[1], int(sys.argv[2]), slots=8, heap=4096)
for i in range(100):
    w.insert(b"k%d" % i, b"v%d" % i)
print(w.name, flush=True)
sys.stdin.read()
"""


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()


def _start_owner(job_id: str, node: int) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen([sys.executable, "-c", _OWNER, job_id, str(node)], env=ENV,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, p.stdout.readline().strip()


@pytest.mark.timeout(30)
def test_cleanup_stale_removes_dead_owners_only(job: str) -> None:
    prefix = f"pmrun.{job}."
    dead, dead_name = _start_owner(job, 0)
    live, live_name = _start_owner(job, 1)
    mine = ShmKVSWriter(job, 2)
    junk = os.path.join(L.SHM_DIR, f"{prefix}junk")
    Path(junk).write_bytes(b"not a segment" * 1000)
    try:
        assert dead_name and live_name
        dead_files = [n for n in files(job) if n.startswith(dead_name)]
        assert len(dead_files) == 2  # header + a grown generation
        dead.kill()
        assert dead.wait() == -signal.SIGKILL
        assert sorted(cleanup_stale(prefix)) == sorted(dead_files)
        left = files(job)
        assert not any(n.startswith(dead_name + ".") or n == dead_name for n in left)
        assert len([n for n in left if n.startswith(live_name)]) == 2
        assert len([n for n in left if n.startswith(mine.name)]) == 2
        assert f"{prefix}junk" in left
        assert cleanup_stale(prefix) == []
        # A live owner's name cannot be taken; a dead owner's can.
        with pytest.raises(PMError, match="alive"):
            ShmKVSWriter(job, 1)
        live.kill()
        live.wait()
        again = ShmKVSWriter(job, 1)
        assert again.insert(b"fresh", b"1")
        with ShmKVSReader(again.name) as r:
            assert r.get(b"fresh") == b"1" and r.get(b"k1") is None
        again.close()
    finally:
        for p in (dead, live):
            _stop(p)
        mine.close()
        os.unlink(junk)


@pytest.mark.timeout(20)
def test_corrupt_entry_is_detected(job: str) -> None:
    with ShmKVSWriter(job, 0) as w:
        w.insert(b"key", b"the value")
        path = os.path.join(L.SHM_DIR, L.data_name(w.name, w.generation))
        data = Path(path).read_bytes()
        at = data.index(b"the value")
        with open(path, "r+b") as f:  # someone scribbles over the segment
            f.seek(at)
            f.write(b"THE")
        with ShmKVSReader(w.name) as r, pytest.raises(ProtocolError, match="corrupt"):
            r.get(b"key")


_READER = """
import json, random, sys, time
from pm.client.shmkvs import ShmKVSReader
name, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def key(i): return b"P%07d-bc-addr" % i
def value(i): return key(i)[::-1] * (1 + i % 5) + b"\\x00\\xff" + bytes([i % 256]) * (i % 7)
cached, probing = ShmKVSReader(name), ShmKVSReader(name, cache=False)
print("ready", flush=True)
rng = random.Random(seed)
deadline = time.monotonic() + 25  # report (and fail the test) rather than spin for ever
gens = {cached.generation, probing.generation}  # 1: mapped before the inserts
hits = misses = wrong = lost = 0
floor = -1  # every key below a found one was inserted before it: must be found too
loops = 0
while True:
    loops += 1
    for r in (cached, probing):
        i = rng.randrange(n)
        v = r.get(key(i))
        if v is None:
            misses += 1
        elif v != value(i):
            wrong += 1
        else:
            hits += 1
            floor = max(floor, i)
        if floor >= 0:
            j = rng.randrange(floor + 1)
            v = r.get(key(j))
            if v is None:
                lost += 1
            elif v != value(j):
                wrong += 1
        gens.add(r.generation)
    if loops % 64 == 0 and (probing.get(b"done") is not None or time.monotonic() > deadline):
        break
final_bad = sum(probing.get(key(i)) != value(i) for i in range(n))
print(json.dumps(dict(hits=hits, misses=misses, wrong=wrong, lost=lost,
                      gens=sorted(gens), final_bad=final_bad)), flush=True)
"""


@pytest.mark.timeout(60)
def test_concurrent_readers_never_see_a_wrong_value(job: str) -> None:
    n = 50_000
    with ShmKVSWriter(job, 0, slots=64, heap=4096) as w:
        readers = [subprocess.Popen([sys.executable, "-c", _READER, w.name, str(n), str(s)],
                                    env=ENV, stdout=subprocess.PIPE, text=True)
                   for s in range(4)]
        try:
            for p in readers:
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready"
            t0 = time.monotonic()
            for i in range(n):
                w.insert(key(i), value(i))
            elapsed = time.monotonic() - t0
            final_gen = w.generation
            w.insert(b"done", b"1")
            results = []
            for p in readers:
                out, _ = p.communicate(timeout=40)
                assert p.returncode == 0
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in readers:
                _stop(p)
    assert final_gen >= 8, final_gen
    for res in results:
        assert res["wrong"] == 0, res
        assert res["lost"] == 0, res
        assert res["final_bad"] == 0, res
        assert res["hits"] > 0 and res["misses"] > 0, res
        assert len(res["gens"]) >= 2, res  # it followed the table across growth
    assert len(set().union(*(r["gens"] for r in results))) >= 3, (results, elapsed)
    print(f"inserted {n} keys in {elapsed:.2f} s through {final_gen} generations; "
          f"readers: {results}")
