"""GNU parallel's table of results: ``--results NAME.csv`` (``.tsv``, ``.json``).

One row per task once it has ended for good, in the job log's columns
(:mod:`pm.ensemble.joblog`), then the task's arguments and its whole output::

    Seq,Host,Starttime,JobRuntime,Send,Receive,Exitval,Signal,Command,V1,...,Stdout,Stderr

The argument columns are ``V1``, ``V2``... (the input sources' names with ``--header``).
A CSV or TSV field that holds white space, a double quote or the separator is quoted
(``"``, a ``"`` in it doubled), as GNU parallel quotes it.  ``.json`` writes one object
a line: ``{ "Seq": 1, ..., "V": [ "a" ], "Stdout": "...", "Stderr": "" }``, control
characters escaped as ``\\u00XX``.  Nothing of the tasks' output is printed then: the
console holds it (in memory, past a MiB in an unlinked file: nothing is left behind however
pmrun ends) until the task's row is written.  A task that never started (the run was
interrupted first) has no row.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pm.ensemble.joblog import entry, written
from pm.proto.errors import UsageError

if TYPE_CHECKING:
    from pm.ensemble.task import TaskResult

#: The names that make ``--results`` a table (without replacement strings).
KINDS = (".csv", ".tsv", ".json")
_LOG_COLUMNS = ("Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval",
                "Signal", "Command")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_table(name: str) -> bool:
    """Whether ``--results name`` asks for a table rather than files."""
    return name.endswith(KINDS) and "{" not in name


def _json(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


class ResultsTable:
    """The table being written to ``path``: :meth:`record` writes a task's row.  ``names``:
    the argument columns' names (``--header``), else ``V1``... for ``width`` of them.
    :class:`UsageError` naming the file if it cannot be written."""

    def __init__(self, path: str, names: Sequence[str], width: int) -> None:
        self.path = path
        self.json = path.endswith(".json")
        self.sep = "\t" if path.endswith(".tsv") else ","
        self._special = re.compile(r'[\s"' + re.escape(self.sep) + "]")
        try:
            self._file = open(path, "w", encoding="utf-8",  # noqa: SIM115
                              errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"--results {path}: {exc.strerror or exc}") from None
        if not self.json:
            columns = list(names) or [f"V{k}" for k in range(1, width + 1)]
            header = self.sep.join(self._quoted(c) for c in
                                   (*_LOG_COLUMNS, *columns, "Stdout", "Stderr"))
            try:  # (before any task started: a file that takes no bytes is refused now)
                self._file.write(header + "\n")
                self._file.flush()
            except OSError as exc:
                self.close()
                raise UsageError(f"--results {path}: cannot be written: "
                                 f"{exc.strerror or exc}") from None

    def _quoted(self, text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if self._special.search(text) else text

    def record(self, result: TaskResult, line: str, args: Sequence[str],
               output: tuple[bytes, bytes], received: int, sent: int = 0,
               host: str | None = None) -> None:
        """Write the row of a task that ended (none for one that never started):
        ``output`` its stdout and stderr."""
        fields = entry(result)
        if fields is None or self._file.closed:
            return
        start, took, exitval, sig = fields
        where = host or result.node or ":"
        out, err = (data.decode("utf-8", "surrogateescape") for data in output)
        if self.json:
            text = (f'{{ "Seq": {result.index + 1}, "Host": {_json(where)}, '
                    f'"Starttime": {start:.3f}, "JobRuntime": {took:.3f}, "Send": {sent}, '
                    f'"Receive": {received}, "Exitval": {exitval}, "Signal": {sig}, '
                    f'"Command": {_json(line)}, "V": [ {", ".join(map(_json, args))} ], '
                    f'"Stdout": {_json(out)}, "Stderr": {_json(err)} }}\n')
        else:
            values = (str(result.index + 1), where, f"{start:.3f}", f"{took:.3f}", str(sent),
                      str(received), str(exitval), str(sig), line, *args, out, err)
            text = self.sep.join(map(self._quoted, values)) + "\n"
        written(self._file, text, f"--results {self.path}", "rows", result.index + 1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
