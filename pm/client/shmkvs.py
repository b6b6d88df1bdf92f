"""A rank's read-only view of its node's KVS in shared memory (no lock, no round trip).

The layout is in ``pm.proto.shm_layout``; the writer and the argument why a
reader never sees a half-written entry are in ``pm.agent.shmkvs``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import zlib
from types import TracebackType

from pm.proto import shm_layout as L
from pm.proto.errors import PMError, ProtocolError

__all__ = ["ShmKVSReader"]

_crc32 = zlib.crc32
_ENTRY = L.ENTRY_SIZE
# A key whose bytes are there but whose CRC does not match yet can only be an
# entry not yet visible on a weakly ordered CPU; retry it this often.
_CRC_RETRIES = 1000


class _Mapping:
    """One segment mapped read-only."""

    def __init__(self, name: str, kind: int) -> None:
        self.path = os.path.join(L.SHM_DIR, name)
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size < L.PAGE:
                raise PMError(f"{self.path} is not a pmrun KVS segment (size {size})")
            self.mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.mv = memoryview(self.mm)
        magic, version, got_kind = L.PREAMBLE.unpack_from(self.mm, 0)[:3]
        if magic != L.MAGIC or version != L.VERSION or got_kind != kind:
            self.close()
            raise PMError(f"{self.path} is not a pmrun KVS segment of this version")

    def close(self) -> None:
        self.mv.release()
        # A caller still holding a view keeps the mapping until that view goes.
        with contextlib.suppress(BufferError):
            self.mm.close()


class ShmKVSReader:
    """Read-only, lock-free reader of a node KVS published by ``ShmKVSWriter``.

    ``name`` is the writer's ``name`` (the header segment under /dev/shm).
    Found entries are cached as memoryviews into the segment (entries are
    immutable), so repeated gets cost a dict lookup and the data stays one
    copy per node; ``cache=False`` probes the table every time.  A miss makes
    the reader re-read the generation and move to a newer one, so a key the
    writer inserted before the get started is always found.  Views returned
    by :meth:`get_view` stay valid as long as the caller holds them, even
    after :meth:`close`.

    Not thread-safe (one reader per thread or a lock around it).
    """

    def __init__(self, name: str, *, cache: bool = True) -> None:
        self.name = L.check_name(name)
        self.generation = 0
        self._closed = False
        self._cache: dict[bytes, memoryview] | None = {} if cache else None
        self._data: _Mapping | None = None
        try:
            self._header = _Mapping(name, L.KIND_HEADER)
        except FileNotFoundError as e:
            raise PMError(f"no shared-memory KVS at {L.SHM_DIR}/{name}") from e
        except OSError as e:
            raise PMError(f"cannot map the shared-memory KVS {L.SHM_DIR}/{name}: {e}") from e
        self._gen_word = self._header.mv[L.GEN_OFFSET : L.GEN_OFFSET + 8].cast("Q")
        self._retired = self._header.mv[L.RETIRED_OFFSET : L.RETIRED_OFFSET + 8].cast("Q")
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    # -- public --------------------------------------------------------------

    @property
    def retired(self) -> bool:
        """Whether the writer retired the table: a key that can change (a rank's) may be
        out of date here, the agent has it (an allgather's values are still good)."""
        return self._retired[0] != 0

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` (a copy), or None if it is not (yet) in the table."""
        cache = self._cache
        if cache is not None:
            try:
                v = cache.get(key)
            except TypeError:  # an unhashable bytes-like key
                v = cache.get(bytes(key))
            # A cached entry holds while the table is the generation it came from
            # (a key's value can change only in a new generation).
            if v is not None and self._gen_word[0] == self.generation:
                return v.tobytes()
        v = self._lookup(key)
        return None if v is None else v.tobytes()

    def get_view(self, key: bytes) -> memoryview | None:
        """A zero-copy read-only view of ``key``'s value in shared memory, or None.

        The view is the caller's: it may release it, or keep it past close().
        """
        cache = self._cache
        if cache is not None:
            try:
                v = cache.get(key)
            except TypeError:
                v = cache.get(bytes(key))
            if v is not None and self._gen_word[0] == self.generation:
                return v[:]
        v = self._lookup(key)
        return None if v is None else v[:]

    def __contains__(self, key: bytes) -> bool:
        return self.get_view(key) is not None

    def close(self) -> None:
        """Drop the cache and unmap (views a caller still holds keep theirs); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        self._gen_word.release()
        self._retired.release()
        self._header.close()

    def __enter__(self) -> ShmKVSReader:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- lookup --------------------------------------------------------------

    def _lookup(self, key: bytes) -> memoryview | None:
        """Probe the table for ``key``; return (and cache) a view of its value, or None."""
        if self._closed:
            raise PMError(f"shared-memory KVS reader {self.name} is closed")
        if not isinstance(key, bytes):
            key = bytes(key)
        h = _crc32(key)
        klen = len(key)
        tries = 0
        if self._gen_word[0] != self.generation:
            self._attach()
        while True:
            slots, mask, u32 = self._slots, self._mask, self._u32
            i = h & mask
            w = slots[i]
            while w:
                if w >> 32 == h:
                    off = (w & 0xFFFFFFFF) << 3
                    if u32[off >> 2] == klen and \
                            self._mm[off + _ENTRY : off + _ENTRY + klen] == key:
                        break
                i = (i + 1) & mask
                w = slots[i]
            else:
                # Not here.  Only a newer generation can have it: look before saying so.
                if self._gen_word[0] == self.generation:
                    return None
                self._attach()
                continue
            q = off >> 2
            vo = off + _ENTRY + klen
            v = self._mv[vo : vo + u32[q + 1]]
            if _crc32(v, h) == u32[q + 2]:
                if self._cache is not None:
                    self._cache[key] = v
                return v
            # The key is there but the value is not (yet) what was published.
            v.release()
            tries += 1
            if tries >= _CRC_RETRIES:
                raise ProtocolError(f"corrupt entry for key {key!r} in {self._data_path()}")

    # -- generations ---------------------------------------------------------

    def _attach(self) -> None:
        """Map the generation the header announces (retrying if it moves on meanwhile)."""
        seen = -1
        while True:
            gen = self._gen_word[0]
            if gen == 0:
                raise PMError(f"shared-memory KVS {self.name} is not initialised")

            try:
                data = _Mapping(L.data_name(self.name, gen), L.KIND_DATA)
            except FileNotFoundError:
                # Unlinked after a newer switch (try again) or the writer closed.
                if gen == seen:
                    raise PMError(f"shared-memory KVS {self.name} generation {gen} is gone "
                                  "(the writer has closed)") from None
                seen = gen
                continue
            except OSError as e:
                raise PMError(f"cannot map generation {gen} of {self.name}: {e}") from e
            try:
                info_gen, nslots, slots_off, heap_off, heap_size = \
                    L.DATA_INFO.unpack_from(data.mm, L.INFO_OFFSET)
                if info_gen != gen or nslots & (nslots - 1) or \
                        heap_off + heap_size > len(data.mm) or slots_off + 8 * nslots > heap_off:
                    raise PMError(f"{data.path}: inconsistent table header")
            except BaseException:
                data.close()
                raise
            break
        self._detach()
        self._data = data
        self._mm = data.mm
        self._mv = data.mv
        self._u32 = data.mv.cast("I")
        self._slots = data.mv[slots_off : slots_off + 8 * nslots].cast("Q")
        self._mask = nslots - 1
        self.generation = gen

    def _detach(self) -> None:
        # Cached views point into the old mapping; dropping them lets it go
        # (views handed out are separate objects and keep it mapped meanwhile).
        if self._cache:
            self._cache.clear()
        if self._data is not None:
            self._slots.release()
            self._u32.release()
            self._data.close()
            self._data = None

    def _data_path(self) -> str:
        return self._data.path if self._data is not None else self.name
