"""Layout of the shared-memory KVS segments: the only module that knows the format.

A node's KVS lives in POSIX shared-memory files under ``/dev/shm``, written
by one agent (``pm.agent.shmkvs``) and read by the node's ranks
(``pm.client.shmkvs``).  The format is node-local, so every integer is in
the machine's native byte order (``=`` structs, ``'Q'``/``'I'`` memoryview
casts); all multi-byte fields are naturally aligned.

Segments
--------
``pmrun.<job_id>.<node>`` (the *header*, ``HEADER_SIZE`` bytes)
    preamble, then the published generation number at ``GEN_OFFSET``, and the
    retired flag at ``RETIRED_OFFSET``.
``pmrun.<job_id>.<node>.g<N>`` (generation *N* of the table)
    preamble, ``DATA_INFO`` at ``INFO_OFFSET``, the slot array at
    ``slots_off`` (``nslots`` u64 words, ``nslots`` a power of two), the heap
    at ``heap_off`` (``heap_size`` bytes), both page-aligned.

Preamble (first ``PREAMBLE.size`` = 64 bytes of every segment)
    ``magic`` 8s, ``version`` u32, ``kind`` u32, ``owner_pid`` u64,
    ``owner_start`` u64 (start time of the owner in clock ticks since boot,
    field 22 of ``/proc/<pid>/stat``, to tell a reused pid), ``boot_id`` 16s
    (raw ``/proc/sys/kernel/random/boot_id``), ``pidns`` u64 (inode of the
    owner's pid namespace), one reserved u64.

Slots (open addressing, linear probing, insert/lookup only)
    A slot is one aligned u64: 0 means empty, otherwise
    ``(hash << 32) | (entry_offset >> 3)``.  ``hash`` is ``key_hash(key)``
    (the full 32 bits, so a bigger generation re-places a slot without
    touching the key) and ``entry_offset`` is 8-aligned and relative to the
    start of the segment (never 0: the heap follows the preamble), which
    bounds a segment to ``MAX_SEGMENT`` bytes.  The home slot of a key is
    ``hash & (nslots - 1)``.

Entries (in the heap, 8-aligned, never moved or reused within a generation)
    ``ENTRY``: ``klen`` u32, ``vlen`` u32, ``crc`` u32 (CRC-32 of key+value),
    reserved u32; then the key, then the value, padded to 8.
"""

from __future__ import annotations

import re
import struct
import zlib

SHM_DIR = "/dev/shm"
NAME_PREFIX = "pmrun."

MAGIC = b"PMRUNKVS"
VERSION = 1
KIND_HEADER = 1
KIND_DATA = 2

PAGE = 4096

#: magic, version, kind, owner_pid, owner_start, boot_id, pidns, reserved.
PREAMBLE = struct.Struct("=8sIIQQ16sQQ")

#: Offset of the u64 generation word (header: the published one; data: its own).
GEN_OFFSET = PREAMBLE.size
#: A u64 after it, not 0 once the writer retired the table: it could not take a change
#: (full), so a rank's key may hold an old value there; readers ask the agent for those
#: (an allgather's values, which never change, they still read).
RETIRED_OFFSET = GEN_OFFSET + 8
HEADER_SIZE = PAGE

#: In a data segment at INFO_OFFSET: generation, nslots, slots_off, heap_off, heap_size.
INFO_OFFSET = PREAMBLE.size
DATA_INFO = struct.Struct("=QQQQQ")

#: klen, vlen, crc32(key + value), reserved.
ENTRY = struct.Struct("=IIII")
ENTRY_SIZE = ENTRY.size

#: Slot offsets are stored >> 3 in 32 bits.
MAX_SEGMENT = (1 << 35) - PAGE
#: A key or value length must fit its u32 field.
MAX_ITEM = (1 << 32) - 1

#: Grow when a generation would become fuller than this (probes stay ~1.5/hit).
MAX_LOAD = 0.5

_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")


def key_hash(key: bytes) -> int:
    """Stable 32-bit hash of a key (CRC-32: one C call, same in every process)."""
    return zlib.crc32(key)


def entry_crc(key_hash_: int, value: bytes | memoryview) -> int:
    """CRC-32 of key + value, continued from the key's hash (which is its CRC-32)."""
    return zlib.crc32(value, key_hash_)


def slot_word(h: int, offset: int) -> int:
    """The u64 that publishes the entry at ``offset`` (8-aligned, > 0) with hash ``h``."""
    return (h << 32) | (offset >> 3)


def slot_hash(word: int) -> int:
    return word >> 32


def slot_offset(word: int) -> int:
    return (word & 0xFFFFFFFF) << 3


def align(n: int, to: int) -> int:
    return (n + to - 1) & ~(to - 1)


def entry_size(klen: int, vlen: int) -> int:
    """Heap bytes one entry takes (header, key, value, padding)."""
    return align(ENTRY_SIZE + klen + vlen, 8)


def pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def slots_for(count: int, minimum: int = 8) -> int:
    """Smallest power-of-two slot count that holds ``count`` entries under MAX_LOAD."""
    n = pow2_at_least(max(minimum, 8))
    while count > n * MAX_LOAD:
        n *= 2
    return n


def data_geometry(nslots: int, heap_size: int) -> tuple[int, int, int]:
    """``(slots_off, heap_off, total_size)`` of a data segment; all page-aligned."""
    slots_off = PAGE
    heap_off = align(slots_off + nslots * 8, PAGE)
    return slots_off, heap_off, heap_off + align(heap_size, PAGE)


def header_name(job_id: str, node: int) -> str:
    """Name (under SHM_DIR) of the header segment of ``job_id`` on ``node``.

    Raises ValueError for a job id that is empty, has characters outside
    ``[A-Za-z0-9._-]`` or starts with a dot, or a negative node.
    """
    if not _JOB_ID.match(job_id) or node < 0:
        raise ValueError(f"bad job id or node for a shared-memory name: {job_id!r}, {node!r}")
    name = f"{NAME_PREFIX}{job_id}.{node}"
    if len(name) > 200:
        raise ValueError(f"job id too long for a shared-memory name: {job_id!r}")
    return name


def data_name(name: str, generation: int) -> str:
    """Name of generation ``generation`` of the table whose header is ``name``."""
    return f"{name}.g{generation}"


def check_name(name: str) -> str:
    """Return ``name`` if it is a plain segment name (no path), else raise ValueError."""
    if not _NAME.match(name) or len(name) > 240:
        raise ValueError(f"not a shared-memory segment name: {name!r}")
    return name
