"""The agent's side of the shared-memory KVS: the single writer of a node's table.

The layout is in ``pm.proto.shm_layout``; the reader is ``pm.client.shmkvs``.

Why a torn read cannot happen (what this relies on)
---------------------------------------------------
* An entry is written into the heap first (``ENTRY`` header, key, value, by
  ordinary stores into the mmap), and only then published by one store of
  its slot word.  A heap range is never written again in that generation,
  and an old generation's file is never reused, so whatever a reader finds
  through a published slot stays as it was published.
* The slot word and the generation word are 8-aligned and written and read
  through ``memoryview.cast('Q')`` item access, which CPython does with one
  fixed-size 8-byte ``memcpy`` — a single ``mov`` on x86-64 — and an aligned
  8-byte access is atomic there: a reader sees either 0 or the whole word.
* x86-64 is TSO: stores become visible to other cores in program order and
  loads are not reordered with older loads.  So a reader that sees a slot
  word also sees the entry stored before it, and a reader that sees a
  generation number also sees that generation completely built (all of it
  is written before the number).  The C compiler cannot move the stores
  either: each is a separate call through the interpreter on memory that
  escaped into an mmap.
* Not relied on, but checked: each entry carries CRC-32(key + value); the
  reader compares the key and the CRC before it returns a value, so on a
  weakly ordered CPU a not-yet-visible entry is retried, never returned.
* A reader that races a generation switch keeps a valid mapping of the old
  generation (unlinking does not unmap); every entry it can find there is
  also in the new one with the same bytes, and a key it misses makes it
  re-read the generation number before it answers "not found".

Liveness for ``cleanup_stale``: the writer holds ``flock(LOCK_EX)`` on every
segment it keeps (the kernel drops it when the process dies), and each
segment records its owner's pid, start time, boot id and pid namespace.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import mmap
import os
import stat
import uuid
from collections.abc import Iterable
from types import TracebackType

from pm.proto import shm_layout as L
from pm.proto.errors import PMError, ResourceLimit

__all__ = ["MAX_BYTES_ENV", "ShmKVSWriter", "cleanup_stale", "default_max_bytes"]

_RESOURCE_ERRNOS = {errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EDQUOT}


#: Overrides the default bound of one node's segments (bytes, or with a K/M/G suffix).
MAX_BYTES_ENV = "PM_SHM_MAX_BYTES"


def default_max_bytes() -> int:
    """``$PM_SHM_MAX_BYTES`` if set, else 1 GiB or half of /dev/shm, whichever is smaller."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if text:
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        try:
            return int(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            raise PMError(f"{MAX_BYTES_ENV}={text!r} is not a size (e.g. 64M)") from None
    try:
        st = os.statvfs(L.SHM_DIR)
        half = st.f_frsize * st.f_blocks // 2
    except OSError:
        half = 1 << 30
    return max(16 * L.PAGE, min(1 << 30, half))


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _proc_start(pid: int) -> tuple[str, int] | None:
    """``(state, start time in ticks)`` of a process, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def _owner_record() -> tuple[int, int, bytes, int]:
    pid = os.getpid()
    st = _proc_start(pid)
    return pid, st[1] if st else 0, _boot_id(), _pidns()


def _shm_error(err: OSError, what: str, path: str) -> PMError:
    if err.errno in _RESOURCE_ERRNOS:
        return ResourceLimit(f"{what} {path}: {os.strerror(err.errno or 0)} (shared memory in "
                             f"{L.SHM_DIR} or file descriptors exhausted)")
    return PMError(f"{what} {path}: {err}")


class _Segment:
    """One shm file the writer created: locked, fully reserved, mapped read-write."""

    def __init__(self, name: str, size: int, kind: int, owner: tuple[int, int, bytes, int]):
        self.name = name
        self.path = os.path.join(L.SHM_DIR, name)
        self.size = size
        self.fd = self._create(self.path)
        try:
            # Held for the segment's life: cleanup_stale takes a free lock as "owner dead".
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(self.fd, 0o600)  # whatever the umask
            try:
                # Reserve every page now: a full /dev/shm is an error here, not a SIGBUS later.
                os.posix_fallocate(self.fd, 0, size)
            except OSError as e:
                raise _shm_error(e, f"cannot reserve {size} bytes for", self.path) from e
            self.mm = mmap.mmap(self.fd, size)
            self.mv = memoryview(self.mm)
            L.PREAMBLE.pack_into(self.mm, 0, L.MAGIC, L.VERSION, kind, *owner, 0)
        except BaseException:
            os.unlink(self.path)
            os.close(self.fd)
            raise

    @staticmethod
    def _create(path: str) -> int:
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW
        for attempt in range(2):
            try:
                return os.open(path, flags, 0o600)
            except FileExistsError:
                # A previous owner that died may have left it; never take a live one's.
                if attempt == 0 and _remove_if_stale(path):
                    continue
                raise PMError(f"{path} already exists and its owner is alive "
                              "(or it is not a pmrun segment)") from None
            except OSError as e:
                raise _shm_error(e, "cannot create", path) from e
        raise AssertionError("unreachable")

    def destroy(self, unlink: bool) -> None:
        """Unmap, unlink (before dropping the lock, so no one sees it unowned), close."""
        self.mv.release()
        self.mm.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)


class _Generation:
    """A data segment: slot array + bump-allocated heap."""

    def __init__(self, seg: _Segment, generation: int, nslots: int) -> None:
        self.seg = seg
        self.generation = generation
        self.nslots = nslots
        self.mask = nslots - 1
        slots_off, self.heap_off, _ = L.data_geometry(nslots, 0)
        self.heap_end = seg.size
        self.heap_used = self.heap_off
        self.slots = seg.mv[slots_off : slots_off + nslots * 8].cast("Q")
        L.DATA_INFO.pack_into(seg.mm, L.INFO_OFFSET, generation, nslots, slots_off,
                              self.heap_off, self.heap_end - self.heap_off)

    def find(self, key: bytes, h: int) -> tuple[int, bool]:
        """``(slot index, found)``: the key's slot, or the empty slot it would take."""
        slots, mask, mm = self.slots, self.mask, self.seg.mm
        i = h & mask
        klen = len(key)
        while True:
            w = slots[i]
            if w == 0:
                return i, False
            if w >> 32 == h:
                off = L.slot_offset(w)
                if L.ENTRY.unpack_from(mm, off)[0] == klen:
                    ko = off + L.ENTRY_SIZE
                    if mm[ko : ko + klen] == key:
                        return i, True
            i = (i + 1) & mask

    def release(self, unlink: bool) -> None:
        self.slots.release()
        self.seg.destroy(unlink)


class ShmKVSWriter:
    """Single writer of a job's node KVS in POSIX shared memory.

    Readers open :attr:`name` with ``pm.client.shmkvs.ShmKVSReader``.
    Entries are insert-only and immutable.  When a generation passes
    ``MAX_LOAD`` or its heap is full, a larger one is built (entries copied),
    published by bumping the header's generation word, and the old one is
    unlinked; readers move over on their own and are never stopped.

    ``slots`` and ``heap`` size the first generation.  ``max_bytes`` bounds
    the segments this writer holds at any moment (header + current
    generation + the outgoing one during a switch; default
    :func:`default_max_bytes`); exceeding it, or a full ``/dev/shm``, raises
    :class:`~pm.proto.errors.ResourceLimit` and leaves the table as it was.
    Generations that readers still map after a switch are freed by the
    kernel when the last of them moves on.

    Not thread-safe: one thread (the agent's loop) calls it.
    """

    def __init__(self, job_id: str, node: int, *, slots: int = 4096, heap: int = 1 << 20,
                 max_bytes: int | None = None) -> None:
        self.name = L.header_name(job_id, node)
        self.bytes_used = 0
        self._count = 0
        self._closed = False
        self._max = default_max_bytes() if max_bytes is None else max_bytes
        self._max = min(self._max, L.MAX_SEGMENT)
        self._owner = _owner_record()
        self._header: _Segment | None = None
        self._cur: _Generation | None = None
        self._gen_word: memoryview | None = None
        if slots < 1 or heap < 0:
            raise ValueError(f"bad table size: slots={slots}, heap={heap}")
        nslots = L.pow2_at_least(max(slots, 8))
        heap = max(heap, L.PAGE)
        self._check_limit(L.data_geometry(nslots, heap)[2], 0)
        self._header = _Segment(self.name, L.HEADER_SIZE, L.KIND_HEADER, self._owner)
        try:
            self._gen_word = self._header.mv[L.GEN_OFFSET : L.GEN_OFFSET + 8].cast("Q")
            self._cur = self._build(1, nslots, heap, None)
            self._gen_word[0] = 1  # publish: readers may open the table from now on
        except BaseException:
            self.close()
            raise

    # -- public --------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Generation readers currently follow."""
        return self._live().generation

    @property
    def segment_bytes(self) -> int:
        """Total size of the live segments (header + current generation)."""
        if self._closed or self._cur is None:
            return 0
        return L.HEADER_SIZE + self._cur.seg.size

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: bytes) -> bool:
        key = bytes(key)
        return self._live().find(key, L.key_hash(key))[1]

    def insert(self, key: bytes, value: bytes) -> bool:
        """Add ``key`` -> ``value``; False (and nothing changes) if ``key`` is already there.

        Raises ResourceLimit when the table cannot grow to hold it.
        """
        key, value = bytes(key), bytes(value)
        cur = self._live()
        h = L.key_hash(key)
        i, found = cur.find(key, h)
        if found:
            return False
        klen, vlen = len(key), len(value)
        if klen > L.MAX_ITEM or vlen > L.MAX_ITEM:
            raise ResourceLimit(f"KVS entry too large ({klen} + {vlen} bytes) for {self.name}")
        need = L.entry_size(klen, vlen)
        if self._count + 1 > cur.nslots * L.MAX_LOAD or cur.heap_used + need > cur.heap_end:
            cur = self._grow(1, need)
            i = cur.find(key, h)[0]
        self._place(cur, i, h, key, value)
        return True

    def insert_many(self, items: Iterable[tuple[bytes, bytes]], *, replace: bool = False) -> int:
        """Insert every pair (first one wins for repeated keys); return how many were new.

        With ``replace``, a key already in the table with another value gets the
        new one (the last of the batch): entries are immutable, so the writer
        builds and publishes a new generation holding the new values, and
        readers move to it (they check the generation on every get).
        Grows at most once up front when the batch's size is known.
        """
        batch = [(bytes(k), bytes(v)) for k, v in items]
        cur = self._live()
        changes: dict[bytes, bytes] = {}
        if replace:
            fresh: dict[bytes, bytes] = {}
            for k, v in batch:
                i, found = cur.find(k, L.key_hash(k))
                if found:
                    if self._value(cur, cur.slots[i]) != v:
                        changes[k] = v
                else:
                    fresh[k] = v
            batch = list(fresh.items())
        need = sum(L.entry_size(len(k), len(v)) for k, v in batch)
        if self._count + len(batch) > cur.nslots * L.MAX_LOAD or \
                cur.heap_used + need > cur.heap_end:
            # Best effort: duplicates make this an overestimate, so on a limit
            # fall back to growing item by item.
            with contextlib.suppress(ResourceLimit):
                self._grow(len(batch), need)
        added = sum(self.insert(k, v) for k, v in batch)
        if changes:
            self._rebuild(changes)
        return added

    def retire(self) -> None:
        """Readers ask the agent for ranks' keys from now on (the header's retired flag):
        the table could not take a change (full), so some of its values may be out of
        date.  It stays until :meth:`close` for the allgathers answered from it."""
        if self._closed or self._header is None:
            return
        flag = self._header.mv[L.RETIRED_OFFSET : L.RETIRED_OFFSET + 8].cast("Q")
        flag[0] = 1
        flag.release()

    def close(self) -> None:
        """Unmap and unlink every segment; idempotent.

        In a forked child (not the owner) it only unmaps.
        """
        if self._closed:
            return
        self._closed = True
        owner = os.getpid() == self._owner[0]
        if self._cur is not None:
            self._cur.release(owner)
            self._cur = None
        if self._header is not None:
            if self._gen_word is not None:
                self._gen_word.release()
            self._header.destroy(owner)
            self._header = None

    def __enter__(self) -> ShmKVSWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _place(self, gen: _Generation, i: int, h: int, key: bytes, value: bytes) -> None:
        """Write an entry into ``gen``'s heap, then publish it in slot ``i``."""
        klen, vlen = len(key), len(value)
        off = gen.heap_used
        mm = gen.seg.mm
        # Entry first, then the slot word (see the module docstring).
        L.ENTRY.pack_into(mm, off, klen, vlen, L.entry_crc(h, value), 0)
        ko = off + L.ENTRY_SIZE
        mm[ko : ko + klen] = key
        mm[ko + klen : ko + klen + vlen] = value
        gen.heap_used = off + L.entry_size(klen, vlen)
        gen.slots[i] = L.slot_word(h, off)
        self._count += 1
        self.bytes_used += klen + vlen

    @staticmethod
    def _entry(gen: _Generation, word: int) -> tuple[bytes, bytes]:
        off = L.slot_offset(word)
        klen, vlen = L.ENTRY.unpack_from(gen.seg.mm, off)[:2]
        ko = off + L.ENTRY_SIZE
        mm = gen.seg.mm
        return mm[ko : ko + klen], mm[ko + klen : ko + klen + vlen]

    def _value(self, gen: _Generation, word: int) -> bytes:
        return self._entry(gen, word)[1]

    def _rebuild(self, changes: dict[bytes, bytes]) -> None:
        """Publish a generation in which the keys of ``changes`` have their new values."""
        old = self._live()
        items = []
        for w in old.slots.tolist():
            if w:
                k, v = self._entry(old, w)
                items.append((k, changes.get(k, v)))
        heap = sum(L.entry_size(len(k), len(v)) for k, v in items)
        nslots = L.slots_for(2 * len(items), old.nslots)
        heap = max(old.heap_end - old.heap_off, 2 * heap)
        self._check_limit(L.data_geometry(nslots, heap)[2], old.seg.size)
        new = self._build(old.generation + 1, nslots, heap, None)
        self._count = self.bytes_used = 0
        for k, v in items:
            h = L.key_hash(k)
            self._place(new, new.find(k, h)[0], h, k, v)
        assert self._gen_word is not None
        self._gen_word[0] = new.generation  # publish (after the whole generation is written)
        self._cur = new
        old.release(unlink=True)

    # -- growth --------------------------------------------------------------

    def _live(self) -> _Generation:
        if self._closed or self._cur is None:
            raise PMError(f"shared-memory KVS {self.name} is closed")
        return self._cur

    def _check_limit(self, new_size: int, held: int) -> None:
        total = L.HEADER_SIZE + held + new_size
        if total > self._max:
            raise ResourceLimit(
                f"shared-memory KVS limit max_bytes={self._max} reached: "
                f"{os.path.join(L.SHM_DIR, self.name)} would need {total} bytes "
                f"(raise it with {MAX_BYTES_ENV})")

    def _grow(self, extra_entries: int, extra_heap: int) -> _Generation:
        """Build, publish and switch to a generation with room for the extras."""
        old = self._live()
        heap_used = old.heap_used - old.heap_off
        heap_min = heap_used + extra_heap
        count = self._count + extra_entries
        # Room for twice the entries in both parts, so that slots and heap do
        # not take turns forcing a switch.
        nslots = L.slots_for(2 * count, old.nslots)
        per_entry = -(-heap_min // max(count, 1))
        heap = max(old.heap_end - old.heap_off, 2 * heap_min, 2 * count * per_entry)
        held = old.seg.size  # old and new coexist until the switch
        room = self._max - L.HEADER_SIZE - held
        if L.data_geometry(nslots, heap)[2] > room:
            # Doubling does not fit: take what the limit leaves, if that is enough.
            heap = room - L.data_geometry(nslots, 0)[2]
            heap -= heap % L.PAGE
            heap = max(heap, L.align(heap_min, L.PAGE))
        self._check_limit(L.data_geometry(nslots, heap)[2], held)
        new = self._build(old.generation + 1, nslots, heap, old)
        assert self._gen_word is not None  # set whenever a generation exists
        self._gen_word[0] = new.generation  # publish (after the whole generation is written)
        self._cur = new
        old.release(unlink=True)
        return new

    def _build(self, generation: int, nslots: int, heap: int,
               old: _Generation | None) -> _Generation:
        size = L.data_geometry(nslots, heap)[2]
        seg = _Segment(L.data_name(self.name, generation), size, L.KIND_DATA, self._owner)
        try:
            gen = _Generation(seg, generation, nslots)
            if old is not None:
                self._copy(old, gen)
        except BaseException:
            seg.destroy(unlink=True)
            raise
        return gen

    @staticmethod
    def _copy(old: _Generation, new: _Generation) -> None:
        # The heap moves as one block; every offset shifts by the same delta and
        # the slot's stored hash gives its new home without reading the key.
        used = old.heap_used - old.heap_off
        new.seg.mm[new.heap_off : new.heap_off + used] = \
            old.seg.mv[old.heap_off : old.heap_off + used]
        new.heap_used = new.heap_off + used
        delta = (new.heap_off - old.heap_off) >> 3
        table = [0] * new.nslots
        mask = new.mask
        for w in old.slots.tolist():
            if w:
                i = (w >> 32) & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = w + delta
        new.slots[:] = memoryview(array.array("Q", table))


def _remove_if_stale(path: str) -> bool:
    """Unlink ``path`` if it is a pmrun segment whose owner is dead; True if removed.

    Dead means: nobody holds the owner's flock, and (same boot and pid
    namespace) the recorded pid is gone, a zombie, or a different process
    (start time differs).  Anything unreadable, foreign or half-written is kept.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < L.PREAMBLE.size:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # the owner holds it: alive
        raw = os.pread(fd, L.PREAMBLE.size, 0)
        if len(raw) < L.PREAMBLE.size:
            return False
        magic, version, _kind, pid, start, boot, pidns, _ = L.PREAMBLE.unpack(raw)
        if magic != L.MAGIC or version != L.VERSION:
            return False
        if not _owner_dead(pid, start, boot, pidns):
            return False
        # Make sure the name still points at the file we judged.
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


def _owner_dead(pid: int, start: int, boot: bytes, pidns: int) -> bool:
    """Called with the segment's flock free: decide whether its owner is gone."""
    here_boot = _boot_id()
    if boot != bytes(16) and here_boot != bytes(16) and boot != here_boot:
        return True  # another boot
    if pidns == 0 or pidns != _pidns():
        # Cannot see that pid here; a free lock is then the only evidence, and it is
        # sound: a live owner holds it on every segment it has not unlinked.
        return True
    st = _proc_start(pid)
    return st is None or st[0] in ("Z", "X") or (start != 0 and st[1] != start)


def cleanup_stale(prefix: str = L.NAME_PREFIX) -> list[str]:
    """Remove the /dev/shm segments starting with ``prefix`` whose owner is dead.

    Returns the removed names.  A live owner's segments (its flock is held)
    are never removed; nor is anything that is not a complete pmrun segment.
    """
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(L.SHM_DIR))
    except OSError:
        return removed
    for name in entries:
        if name.startswith(prefix) and _remove_if_stale(os.path.join(L.SHM_DIR, name)):
            removed.append(name)
    return removed
