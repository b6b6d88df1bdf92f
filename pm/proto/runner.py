"""The lines between an ensemble and its runner on another host, sans-IO.

The runner (``python -m pm.ensemble runner``) lives as the one rank of a job
on that host for as long as the ensemble does.  The ensemble speaks to it on
the rank's stdin, it answers on its stdout, one record per line::

    pmrun-env JSON                    the tasks' environment (first, once)
    pmrun-start JSON                  start a task: [index, argv, env, wdir(, returns,
                                      remove)]
    pmrun-signal INDEX SIGNUM         signal a task's processes (INDEX -1: all tasks)
    pmrun-stdin INDEX NBYTES          then NBYTES the task reads on stdin, then a newline
                                      (before its start: ``--pipe``'s block)
    pmrun-put INDEX MODE DROP PATH TOTAL OFFSET NBYTES   then NBYTES of a file to put there
                                      (before its start: ``--transferfile``, ``--basefile``)

    pmrun-probe TOTAL USED KIND cores=N [load=L swap=S io=P] INDEX=BYTES ...   a sample
    pmrun-out INDEX STREAM NBYTES     then NBYTES of a task's output, then a newline
    pmrun-got INDEX PATH TOTAL OFFSET NBYTES   then NBYTES of a file a task left
                                      (``--return``, before its exit)
    pmrun-exit INDEX CODE RSS         a task ended, with this shell status and the
                                      largest resident size of its processes (bytes)

In a sample TOTAL and USED are the node's memory in bytes, KIND where its
limit comes from (``cgroup``, ``machine``), N the cores the runner may run on,
L, S and P the host's activity when the ensemble asked for it
(:class:`~pm.common.activity.Activity`: its load, 1 if it swaps, its busiest
disk's %), and per task index the anonymous resident bytes of its processes.  Output
comes as the task wrote it, many lines a record: at most :data:`MAX_DATA`
bytes, so that the agent, which passes the runner's stdout on in lines of up
to ``MAX_LINE`` (a longer one in pieces), passes each whole (:class:`RunnerReader` reads
them back).
A file's piece is one record of at most :data:`MAX_DATA` bytes too, its PATH the
hex of its name's bytes.  JSON keeps arguments that are not UTF-8 (surrogate
escapes).  Anything else on the stream (a warning of the interpreter) is no record.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pm.common.activity import Activity
from pm.common.output import MAX_LINE
from pm.proto.record import Record

__all__ = ["MAX_DATA", "CommandReader", "FileChunk", "ProbeSample", "RunnerReader", "TaskExit",
           "TaskInput", "TaskOutput", "TaskSignal", "TaskStart", "TasksEnv", "from_ensemble"]

#: The most of a task's output one record carries (a line past MAX_LINE goes in pieces).
MAX_DATA = MAX_LINE // 2

_PROBE = "pmrun-probe"


class ProbeSample(Record):
    """One sample of a host's memory and of its tasks' usage."""

    total: int
    used: int
    kind: str
    cores: int | None
    #: Task index -> anonymous resident bytes.
    sizes: dict[int, int]
    #: The host's activity (pm.common.activity), when the ensemble asked for it.
    activity: Activity | None = None

    def line(self) -> str:
        words = [_PROBE, str(self.total), str(self.used), self.kind]
        if self.cores is not None:
            words.append(f"cores={self.cores}")
        if self.activity is not None:
            load, swapping, io = self.activity
            words += [f"load={load}", f"swap={int(swapping)}", f"io={io}"]
        words += [f"{i}={n}" for i, n in sorted(self.sizes.items())]
        return " ".join(words)

    @classmethod
    def parse(cls, line: str) -> ProbeSample | None:
        """The sample ``line`` holds, None if it holds none."""
        words = line.split()
        if len(words) < 4 or words[0] != _PROBE:
            return None
        try:
            sizes: dict[int, int] = {}
            seen: dict[str, int] = {}
            for key, _, value in (w.partition("=") for w in words[4:]):
                if key in ("cores", "load", "swap", "io"):
                    seen[key] = int(value)
                else:
                    sizes[int(key)] = int(value)
            cores = seen.get("cores")
            activity = (Activity(seen["load"], bool(seen.get("swap")), seen.get("io", 0))
                        if "load" in seen else None)
            return cls(int(words[1]), int(words[2]), words[3], cores, sizes, activity)
        except ValueError:
            return None


class TasksEnv(Record):
    """The environment every task on the host starts from (the job's, as the launcher
    computed it), before its own variables."""

    env: dict[str, str]

    def line(self) -> bytes:
        return b"pmrun-env " + _json(self.env) + b"\n"


class TaskStart(Record):
    """Start a run of task ``index``: ``argv`` with ``env`` over the tasks' environment,
    in ``wdir`` (None: the runner's own directory).  Once it ended the files ``returns``
    go back (``--return``), then the files ``remove`` are removed (``--cleanup``)."""

    index: int
    argv: list[str]
    env: dict[str, str]
    wdir: str | None
    returns: list[str] = []
    remove: list[str] = []

    def line(self) -> bytes:
        wire = self.to_wire()
        return b"pmrun-start " + _json(wire if self.returns or self.remove else wire[:4]) \
            + b"\n"


class FileChunk(Record):
    """A piece of a file that goes with a task's run: to its host before it starts
    (``pmrun-put``: ``--transferfile``; index -1 a ``--basefile``, removed when the
    runner ends if ``drop``), or back once it ended (``pmrun-got``: ``--return``).
    ``total``: the file's size; this piece holds its bytes from ``offset``."""

    index: int
    path: str
    total: int
    offset: int
    data: bytes
    mode: int = 0o644
    drop: bool = False

    def put_record(self) -> bytes:
        return b"pmrun-put %d %o %d %s %d %d %d\n" % (
            self.index, self.mode, self.drop, _hex(self.path), self.total, self.offset,
            len(self.data)) + self.data + b"\n"

    def got_record(self) -> bytes:
        return b"pmrun-got %d %s %d %d %d\n" % (
            self.index, _hex(self.path), self.total, self.offset, len(self.data)) \
            + self.data + b"\n"


class TaskSignal(Record):
    """Send ``signum`` to task ``index``'s processes (-1: to every task's)."""

    index: int
    signum: int

    def line(self) -> bytes:
        return b"pmrun-signal %d %d\n" % (self.index, self.signum)


class TaskInput(Record):
    """What task ``index``'s run reads on stdin."""

    index: int
    data: bytes

    def records(self) -> bytes:
        return b"pmrun-stdin %d %d\n" % (self.index, len(self.data)) + self.data + b"\n"


class TaskOutput(Record):
    """Bytes a task wrote on ``stream``, as it wrote them (lines, or a piece of one)."""

    index: int
    stream: int
    data: bytes

    def records(self) -> bytes:
        """The records that carry it (more than one past :data:`MAX_DATA` bytes)."""
        data = self.data
        return b"".join(b"pmrun-out %d %d %d\n" % (self.index, self.stream, len(piece))
                        + piece + b"\n"
                        for piece in (data[at:at + MAX_DATA]
                                      for at in range(0, len(data), MAX_DATA)))


class TaskExit(Record):
    """A run of task ``index`` ended with shell status ``code``; ``rss``: the largest
    resident size of its processes, from the kernel's account at its reaping (0: none)."""

    index: int
    code: int
    rss: int = 0

    def line(self) -> bytes:
        return b"pmrun-exit %d %d %d\n" % (self.index, self.code, self.rss)


Command = TasksEnv | TaskStart | TaskSignal | TaskInput | FileChunk
Report = ProbeSample | TaskOutput | TaskExit | FileChunk


def from_ensemble(line: bytes) -> Command | None:
    """The command a line of the runner's stdin holds (newline included or not), None if
    it holds none."""
    word, _, rest = line.rstrip(b"\n").partition(b" ")
    try:
        if word == b"pmrun-start":
            index, argv, env, wdir, *files = json.loads(rest)
            returns, remove = files if files else ([], [])
            return TaskStart(int(index), [str(a) for a in argv],
                             {str(k): str(v) for k, v in env.items()},
                             None if wdir is None else str(wdir),
                             [str(p) for p in returns], [str(p) for p in remove])
        if word == b"pmrun-signal":
            index_s, signum_s = rest.split()
            return TaskSignal(int(index_s), int(signum_s))
        if word == b"pmrun-env":
            env = json.loads(rest)
            return TasksEnv({str(k): str(v) for k, v in env.items()})
    except (ValueError, TypeError, AttributeError):
        return None
    return None


class _Reader:
    """Records of a stream fed in chunks as they come: lines, and a ``WORD ... NBYTES``
    line followed by NBYTES bytes and a newline (:attr:`_framed` names WORD); what is
    not whole yet waits for the next chunk."""

    __slots__ = ("_rest",)
    _framed: bytes | tuple[bytes, ...] = b""

    def __init__(self) -> None:
        self._rest = b""

    def _frame(self, words: list[bytes], data: bytes) -> Any:
        raise NotImplementedError

    def _line(self, line: bytes) -> Any:
        raise NotImplementedError

    def _feed(self, data: bytes) -> list[Any]:
        buf = self._rest + data if self._rest else data
        out = []
        at = 0
        while (nl := buf.find(b"\n", at)) >= 0:
            line = buf[at:nl]
            rec = None
            if line.startswith(self._framed):
                words = line.split(b" ")
                try:
                    end = nl + 1 + int(words[-1])
                except ValueError:
                    end = -1
                if end > len(buf) - 1:
                    break  # the rest of the bytes (and the record's newline) are on their way
                if end >= 0:
                    try:
                        rec = self._frame(words, buf[nl + 1:end])
                    except ValueError:
                        pass
                    else:
                        at = end + 1
            if rec is None:
                rec = self._line(line)
                at = nl + 1
            if rec is not None:
                out.append(rec)
        self._rest = buf[at:]
        return out


class CommandReader(_Reader):
    """The ensemble's commands on the runner's stdin; a line that is no command comes
    back as bytes (for the runner to name)."""

    __slots__ = ()
    _framed = (b"pmrun-stdin ", b"pmrun-put ")

    def feed(self, data: bytes) -> list[Command | bytes]:
        return self._feed(data)

    def _frame(self, words: list[bytes], data: bytes) -> TaskInput | FileChunk:
        if words[0] == b"pmrun-put":
            _, index, mode, drop, path, total, offset, _ = words
            return FileChunk(int(index), _unhex(path), int(total), int(offset), data,
                             int(mode, 8), drop == b"1")
        _, index, _ = words
        return TaskInput(int(index), data)

    def _line(self, line: bytes) -> Command | bytes | None:
        return from_ensemble(line) or (line if line.strip() else None)


class RunnerReader(_Reader):
    """The runner's reports from its stdout."""

    __slots__ = ()
    _framed = (b"pmrun-out ", b"pmrun-got ")

    def feed(self, data: bytes) -> list[Report]:
        return self._feed(data)

    def _frame(self, words: list[bytes], data: bytes) -> TaskOutput | FileChunk:
        if words[0] == b"pmrun-got":
            _, index, path, total, offset, _ = words
            return FileChunk(int(index), _unhex(path), int(total), int(offset), data)
        _, index, stream, _ = words
        return TaskOutput(int(index), int(stream), data)

    def _line(self, line: bytes) -> Report | None:
        return _report(line)


def _report(line: bytes) -> Report | None:
    word, _, rest = line.partition(b" ")
    try:
        if word == b"pmrun-exit":
            index, code, *rss = rest.split()
            return TaskExit(int(index), int(code), int(rss[0]) if rss else 0)
        if word == b"pmrun-probe":
            return ProbeSample.parse(line.decode(errors="replace"))
    except ValueError:
        return None
    return None


def _hex(path: str) -> bytes:
    """A path as one word: its bytes in hex (a name may hold spaces, or not be UTF-8)."""
    return os.fsencode(path).hex().encode()


def _unhex(word: bytes) -> str:
    return os.fsdecode(bytes.fromhex(word.decode()))


def _json(value: Any) -> bytes:
    """One line of JSON: ASCII, so a surrogate escape of a non-UTF-8 byte survives."""
    return json.dumps(value, separators=(",", ":")).encode()
