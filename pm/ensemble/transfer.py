"""GNU parallel's ``--transferfile``, ``--return``, ``--cleanup`` and ``--basefile``: files
that go with a task's run on another host, through that host's runner
(:mod:`pm.ensemble.remote`; :class:`~pm.proto.runner.FileChunk` records), not an rsync
per file.

Paths as parallel's: a relative path is the same relative path there, under the
task's working directory (``--wd``, else the one it runs in); an absolute path is the
same path there; ``DIR/./REST`` is ``REST`` under the working directory there and
``DIR/REST`` here.  A file arrives whole or not at all: it is written beside its place
and renamed into it once complete (so the same file on a shared filesystem is never
seen half written).  This machine's tasks (``:``) need no transfer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from pm.proto.runner import MAX_DATA, FileChunk

__all__ = ["FileSink", "chunks", "here_path", "there_path"]


def _parts(path: str) -> tuple[str, str | None]:
    """``(base, rest)`` of ``DIR/./REST``, ``(path, None)`` without ``/./`` (pure)."""
    if path.startswith("./"):
        path = path[2:]
    base, sep, rest = path.rpartition("/./")
    return (base, rest) if sep else (path, None)


def here_path(path: str) -> str:
    """Where ``path`` is on this machine (pure)."""
    base, rest = _parts(path)
    return base if rest is None else f"{base}/{rest}"


def there_path(path: str, wdir: str | None) -> str:
    """Where ``path`` goes on the task's host, whose working directory is ``wdir`` (None:
    the runner's own) (pure)."""
    base, rest = _parts(path)
    if rest is None and os.path.isabs(base):
        return base
    rel = base if rest is None else rest
    return os.path.join(wdir, rel) if wdir else rel


def chunks(index: int, path: str, to: str, drop: bool = False) -> Iterator[FileChunk]:
    """The pieces of file ``path`` to put at ``to`` (``OSError`` if it cannot be read)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "not a regular file", path)
        total, offset = st.st_size, 0
        while True:
            data = f.read(min(MAX_DATA, total - offset))
            yield FileChunk(index, to, total, offset, data, stat.S_IMODE(st.st_mode), drop)
            offset += len(data)
            if offset >= total or not data:
                return


class FileSink:
    """Writes files that come in pieces, each into a temporary file beside its place,
    renamed into it once whole.  :attr:`made`: the directories it created."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, str]] = {}
        self.made: set[str] = set()

    def write(self, chunk: FileChunk, path: str | None = None) -> str:
        """Write ``chunk`` (at ``path``, else its own): ``""``, or what went wrong."""
        target = path or chunk.path
        try:
            if chunk.offset == 0:
                self._drop(target)
                self._make_dirs(os.path.dirname(target))
                tmp = os.path.join(os.path.dirname(target),
                                   f".{os.path.basename(target)}.pmrun-{os.getpid()}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                self._open[target] = (fd, tmp)
            opened = self._open.get(target)
            if opened is None:
                return ""  # (the rest of a file whose start failed: said already)
            fd, tmp = opened
            view = memoryview(chunk.data)
            while view:
                view = view[os.write(fd, view):]
            if chunk.offset + len(chunk.data) >= chunk.total:
                del self._open[target]
                try:
                    os.fchmod(fd, chunk.mode)
                finally:
                    os.close(fd)
                os.rename(tmp, target)
        except OSError as exc:
            self._drop(target)
            return f"{target}: {exc.strerror or exc}"
        return ""

    def _make_dirs(self, directory: str) -> None:
        missing = []
        while directory and not os.path.isdir(directory):
            if os.path.lexists(directory):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)
            missing.append(directory)
            directory = os.path.dirname(directory)
        for d in reversed(missing):
            os.mkdir(d)
            self.made.add(d)

    def _drop(self, target: str) -> None:
        opened = self._open.pop(target, None)
        if opened is not None:
            os.close(opened[0])
            with contextlib.suppress(OSError):
                os.unlink(opened[1])

    def remove(self, paths: list[str]) -> None:
        """Remove ``paths`` (``--cleanup``), and the directories made for them that are
        empty then."""
        for p in paths:
            with contextlib.suppress(OSError):
                os.unlink(p)
            d = os.path.dirname(p)
            while d in self.made:
                try:
                    os.rmdir(d)
                except OSError:
                    break
                self.made.discard(d)
                d = os.path.dirname(d)

    def close(self) -> None:
        for target in list(self._open):
            self._drop(target)
