"""GNU parallel's ``{= perl expression =}``: an argument changed by a perl expression.

As in parallel, ``$_`` holds the argument, the expression changes it, and what
``$_`` holds after it replaces the string (shell-quoted, unless the expression
called ``uq()``).  ``@arg`` holds the task's arguments (``$arg[1]`` the first),
``seq()`` (``$job->seq()``) the task's number, ``total_jobs()`` the number of
tasks, ``skip()`` leaves the task out (its number is not reused), ``Q($s)``
quotes ``$s`` for the shell, and ``yyyy_mm_dd_hh_mm_ss()`` and its siblings give
the time.  ``slot()`` is refused: pmrun fills a task's line before it knows the
slot the task will run in (``{%}`` is the slot, which the shell reads).

One ``perl`` process (:class:`Perl`) evaluates every expression of the run,
each compiled once; it ends when pmrun closes its stdin, or dies with pmrun
(its stdin then reaches its end).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
import threading
from typing import NamedTuple

from pm.proto.errors import UsageError

#: The evaluator: requests and answers are fields that end with NUL, which no argument
#: (a word of a command line) holds.  A request: the number of fields after it, the
#: expression, the argument, the task's number, the number of tasks, then the task's
#: arguments.  An answer: ``ok``, the flags (``u``: not quoted, ``s``: skip the task)
#: and the value; or ``err`` and what perl said.
_PROGRAM = r"""
use strict; no warnings; use POSIX ();
binmode STDIN; binmode STDOUT; $| = 1; $/ = "\0";
package Arg;
our (@arg, $seq, $total, $unquoted, $skipped);
our $job = bless {}, 'Arg::Job';
sub Arg::Job::seq { $Arg::seq }
sub Arg::Job::skip { $Arg::skipped = 1 }
sub Arg::Job::slot { die "slot() is not known when pmrun fills a task's line: use {%}\n" }
sub seq { $seq }
sub total_jobs { $total }
sub skip { $skipped = 1 }
sub slot { Arg::Job::slot() }
sub uq { $unquoted = 1 }
sub Q {
    my $s = shift;
    return "''" if $s eq "";
    return $s unless $s =~ /[^-_.+a-zA-Z0-9\/]/;
    $s =~ s/'/'"'"'/g; $s = "'$s'"; $s =~ s/^''//; $s =~ s/''$//;
    return $s;
}
sub _t { POSIX::strftime(shift, localtime(time())) }
sub yyyy_mm_dd_hh_mm_ss { _t("%Y-%m-%dT%H:%M:%S") }
sub yyyy_mm_dd_hh_mm { _t("%Y-%m-%dT%H:%M") }
sub yyyy_mm_dd { _t("%Y-%m-%d") }
sub hh_mm_ss { _t("%H:%M:%S") }
sub hh_mm { _t("%H:%M") }
sub yyyymmddhhmmss { _t("%Y%m%d%H%M%S") }
sub yyyymmddhhmm { _t("%Y%m%d%H%M") }
sub yyyymmdd { _t("%Y%m%d") }
sub hhmmss { _t("%H%M%S") }
sub hhmm { _t("%H%M") }
my %code;
while (defined(my $n = <STDIN>)) {
    chomp $n;
    my @f;
    for (1 .. $n) { my $x = <STDIN>; chomp $x; push @f, $x }
    my ($expr, $value);
    ($expr, $value, $seq, $total, @arg) = @f;
    unshift @arg, undef;
    ($unquoted, $skipped) = (0, 0);
    my $sub = $code{$expr} //= eval "sub { no strict; no warnings; my \$job = shift; $expr\n}";
    if (!$sub) { my $e = $@; delete $code{$expr}; $e =~ s/\s+\z//; print "err\0$e\0"; next }
    local $_ = $value;
    if (!eval { $sub->($job); 1 }) { my $e = $@; $e =~ s/\s+\z//; print "err\0$e\0"; next }
    $_ = "" unless defined $_;
    print "ok\0", ($unquoted ? "u" : "") . ($skipped ? "s" : ""), "\0$_\0";
}
"""


class Value(NamedTuple):
    """What an expression made of an argument."""

    text: str
    unquoted: bool  # uq() was called: put in as it is
    skip: bool  # skip() was called: the task is left out


class Skipped(Exception):
    """An expression called ``skip()``: the task whose line was being filled is left out."""


class Perl:
    """The run's perl process (started at the first expression; see the module docstring)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._buf = bytearray()  # what perl said past the last field read
        self._registered = False  # (close at exit, for a caller that does not)

    def value(self, expr: str, arg: str, args: tuple[str, ...] | list[str], seq: int,
              total: int) -> Value:
        """``expr`` run on ``arg``.  :class:`UsageError` with perl's words for an expression
        that does not compile or dies."""
        fields = [expr, arg, str(seq), str(total), *args]
        request = f"{len(fields)}\0".encode() + b"".join(
            f.encode(errors="surrogateescape") + b"\0" for f in fields)
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(request)
                proc.stdin.flush()
                status = self._field(proc.stdout.fileno())
                first = self._field(proc.stdout.fileno())
                second = self._field(proc.stdout.fileno()) if status == b"ok" else b""
            except (OSError, EOFError):
                raise UsageError(f"{{={expr}=}}: perl ended without an answer") from None
        if status != b"ok":
            # (Without where perl was: its evaluation's number and our request's.)
            said = re.sub(r" at \(eval \d+\) line \d+(?:, <STDIN> chunk \d+)?\.$", "",
                          first.decode(errors="replace"))
            raise UsageError(f"{{={expr}=}}: perl says: {said}")
        return Value(second.decode(errors="surrogateescape"), b"u" in first, b"s" in first)

    def _field(self, fd: int) -> bytes:
        """The next NUL-ended field of perl's answers."""
        while (end := self._buf.find(b"\0")) < 0:
            data = os.read(fd, 65536)
            if not data:
                raise EOFError
            self._buf += data
        field = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return field

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            perl = shutil.which("perl")
            if perl is None:
                raise UsageError("{= perl expression =} needs perl, which is not on the PATH")
            # (In a process group of its own: Ctrl-C is pmrun's to act on, not perl's.)
            self._proc = subprocess.Popen([perl, "-e", _PROGRAM], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, process_group=0)
            self._buf.clear()
            if not self._registered:
                atexit.register(self.close)
                self._registered = True
        return self._proc

    def close(self) -> None:
        """End the perl process (its stdin closed: it leaves)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


#: The evaluator of this process's run (GNU parallel's expressions are one run's).
PERL = Perl()
