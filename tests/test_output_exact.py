"""The ranks' bytes reach pmrun's stdout and files as they wrote them, and a job whose
output pmrun could not write does not end with status 0."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import pmrun_argv, pmrun_env, read_lines

from pm.common.output import MAX_LINE, STDERR, STDOUT, LineBuffer
from pm.common.output_writer import Writer

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(90)

#: The three ways of a job on this machine: the quick path, the agent in pmrun's process
#: (PM_QUICK=0) and agents of their own (--local-nodes: rank 1 on the second node).
WAYS = pytest.mark.parametrize(("quick", "opts"), [("1", []), ("0", []),
                                                   ("1", ["--local-nodes", "2"])],
                               ids=["quick", "full", "2nodes"])


def _data() -> bytes:
    """Binary bytes (newlines here and there), a run of 3 MiB without one, and no newline
    at the end: what a gzip stream or a core file may be."""
    rnd = random.Random(7)
    return (rnd.randbytes(300_000) + b"\0" * (3 * MAX_LINE) + rnd.randbytes(200_000)
            + b"x" * (MAX_LINE + 5))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(argv: list[str], cwd: Path, quick: str, **kw: object
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(pmrun_argv(*argv), cwd=cwd, env=pmrun_env({"PM_QUICK": quick}),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          **kw)  # type: ignore[call-overload,no-any-return]


# ------------------------------------------------------------------ the bytes, end to end
@WAYS
def test_one_ranks_binary_output_comes_byte_for_byte(tmp_path: Path, quick: str,
                                                     opts: list[str]) -> None:
    """One rank writes the stream (the other ranks nothing): nothing added, nothing cut."""
    data = _data()
    (tmp_path / "data").write_bytes(data)
    n = "2" if opts else "1"
    r = _run(["-n", n, *opts, "sh", "-c", f'[ "$PMI_RANK" = {int(n) - 1} ] && cat data; '
              "true"], tmp_path, quick)
    assert r.returncode == 0, r.stderr
    assert (len(r.stdout), _sha(r.stdout)) == (len(data), _sha(data))
    # A job's gzip stream, as in a shell (`gzip -c | gunzip` would say "unexpected end").
    r = _run(["-n", "1", *opts, "gzip", "-c", "data"], tmp_path, quick)
    assert r.returncode == 0, r.stderr
    (tmp_path / "data.gz").write_bytes(r.stdout)
    back = subprocess.run(["gunzip", "-c", "data.gz"], cwd=tmp_path, capture_output=True,
                          timeout=60, check=True)
    assert _sha(back.stdout) == _sha(data)


@WAYS
@pytest.mark.parametrize("files", [["-outfile-pattern", "out.%r", "-errfile-pattern", "err.%r"],
                                   ["--output-filename", "o"]], ids=["pattern", "folder"])
def test_each_ranks_own_file_holds_its_bytes(tmp_path: Path, quick: str, opts: list[str],
                                             files: list[str]) -> None:
    data = _data()
    (tmp_path / "data").write_bytes(data)
    r = _run(["-n", "2", *opts, *files, "sh", "-c", "cat data; cat data >&2"], tmp_path,
             quick)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    paths = [f"{s}.{k}" if files[1] == "out.%r" else f"o/1/rank.{k}/{s}"
             for k in (0, 1) for s in (("out", "err") if files[1] == "out.%r"
                                       else ("stdout", "stderr"))]
    for path in paths:
        got = (tmp_path / path).read_bytes()
        assert (path, len(got), _sha(got)) == (path, len(data), _sha(data))


SPAWNS = """
import sys
from pm.client.sync import connect

with connect() as pmi:
    if len(sys.argv) == 1:
        pmi.spawn([sys.executable, __file__, "child"], 1)
    else:
        with open("data", "rb") as f:
            sys.stdout.buffer.write(f.read())
"""


@pytest.mark.parametrize(("quick", "opts"), [("1", ["--kvs", "socket"]), ("0", []),
                                             ("1", ["--local-nodes", "2"])],
                         ids=["quick", "full", "2nodes"])
def test_a_spawned_ranks_bytes_come_as_they_are(tmp_path: Path, quick: str,
                                                opts: list[str]) -> None:
    """A job's rank spawns one that writes the stream: its bytes, to stdout and to its own
    file (``out.0.s1``)."""
    import sys

    data = _data()
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "spawns.py").write_text(SPAWNS)
    for files in ([], ["-outfile-pattern", "out.%r"]):
        r = _run(["-n", "1", *opts, *files, sys.executable, "spawns.py"], tmp_path, quick)
        assert r.returncode == 0, r.stderr
        got = (tmp_path / "out.0.s1").read_bytes() if files else r.stdout
        assert (len(got), _sha(got)) == (len(data), _sha(data))


@WAYS
def test_a_last_line_without_newline_stays_so_where_nothing_follows(
        tmp_path: Path, quick: str, opts: list[str]) -> None:
    """Two ranks on one stdout: a rank's last line gets a newline only when another rank's
    bytes come after it (never two ranks in one line); the very last stays as it is."""
    r = _run(["-n", "2", *opts, "printf", r"a\nno-newline"], tmp_path, quick)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 2 * len(b"a\nno-newline") + 1 and not r.stdout.endswith(b"\n")
    assert sorted(r.stdout.split(b"\n")) == [b"a", b"a", b"no-newline", b"no-newline"]
    r = _run(["-n", "1", *opts, "printf", "no-newline"], tmp_path, quick)
    assert (r.returncode, r.stdout) == (0, b"no-newline")


@WAYS
def test_pmruns_own_line_starts_a_line_of_its_own(tmp_path: Path, quick: str,
                                                  opts: list[str]) -> None:
    """A rank's last line without newline, then pmrun's line on the same file (a terminal,
    `2>&1`): that line starts on a new one; on a stdout of its own the bytes stay as they are."""
    argv = ["-n", "1", *opts, "sh", "-c", "printf abc; exit 3"]
    said = f"pmrun: rank 0 (node 0, {os.uname().nodename}) exited with code 3\n"
    r = _run(argv, tmp_path, quick)
    assert (r.returncode, r.stdout, r.stderr.decode()) == (3, b"abc", said)
    r = subprocess.run(pmrun_argv(*argv), cwd=tmp_path, env=pmrun_env({"PM_QUICK": quick}),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert (r.returncode, r.stdout.decode()) == (3, "abc\n" + said)


#: Rank 0 writes a line of 3.1 MB in two parts; rank 1 writes its lines between them.
LONG = """
if [ "$PMI_RANK" = 0 ]; then
    head -c 1100000 /dev/zero | tr '\\0' x; echo go > f1; read x < f2
    head -c 2000000 /dev/zero | tr '\\0' y; echo; printf last
else
    read x < f1; echo one; echo two; printf 'three'; echo done > f2
fi
"""


@WAYS
@pytest.mark.parametrize("label", [[], ["-l"]])
def test_a_long_line_is_never_cut_nor_joined_by_another_ranks(
        tmp_path: Path, quick: str, opts: list[str], label: list[str]) -> None:
    os.mkfifo(tmp_path / "f1")
    os.mkfifo(tmp_path / "f2")
    r = _run(["-n", "2", *opts, *label, "sh", "-c", LONG], tmp_path, quick)
    assert r.returncode == 0, r.stderr
    tag = (lambda k: b"[%d] " % k) if label else (lambda k: b"")
    lines = r.stdout.split(b"\n")
    assert sorted(lines) == sorted([tag(0) + b"x" * 1100000 + b"y" * 2000000, tag(0) + b"last",
                                    tag(1) + b"one", tag(1) + b"two", tag(1) + b"three"])
    assert not r.stdout.endswith(b"\n")


# ------------------------------------------------------------------ the pieces, sans IO
def test_line_buffer_passes_every_byte_once_in_lines_and_long_pieces() -> None:
    data = _data() + b"tail\n" + b"no newline"
    rnd = random.Random(3)
    buf = LineBuffer()
    out, i, opened = [], 0, False
    while i < len(data):
        step = rnd.choice((1, 17, 4096, 65536, 300_000))
        piece = buf.feed(data[i:i + step])
        i += step
        if piece:
            # Complete lines, or (only past MAX_LINE without one) a long line's piece.
            assert piece.endswith(b"\n") or buf.open
            opened = opened or buf.open
        out.append(piece)
    assert not buf.open
    out.append(buf.flush())
    assert b"".join(out) == data and buf.open and opened


def _writer(tmp_path: Path, same: bool = False) -> tuple[Writer, Path, Path]:
    out, err = tmp_path / "out", tmp_path / ("out" if same else "err")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    efd = os.dup(fd) if same else os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    return Writer(False, out_fd=fd, err_fd=efd), out, err


def test_writer_holds_other_ranks_lines_while_a_long_line_goes_on(tmp_path: Path) -> None:
    w, out, _ = _writer(tmp_path)
    w.write(0, STDOUT, b"A" * 10)  # a long line's piece: it goes on
    w.write(1, STDOUT, b"one\n")  # waits for its end
    w.write(2, STDOUT, b"part")  # so does another rank's last line, and its end
    w.write(2, STDOUT, b"")
    w.write(0, STDERR, b"e\n")  # (stderr is another file: not held)
    w.write(0, STDOUT, b"A" * 5)
    assert out.read_bytes() == b"A" * 15
    w.write(0, STDOUT, b"A\nB")  # its end, and a new line of its own
    w.write(1, STDOUT, b"two\n")
    w.write(0, STDOUT, b"")  # that rank's end: its line ends with the next rank's bytes
    w.write(1, STDOUT, b"three")
    w.write(1, STDOUT, b"")
    assert out.read_bytes() == b"A" * 16 + b"\nB\none\npart\ntwo\nthree"
    assert (tmp_path / "err").read_bytes() == b"e\n"


def test_writer_ends_a_long_line_when_too_much_waits(tmp_path: Path) -> None:
    from pm.common.output_writer import HOLD_BYTES

    w, out, _ = _writer(tmp_path)
    w.write(0, STDOUT, b"A" * 10)
    w.write(1, STDOUT, b"b" * (HOLD_BYTES // 2) + b"\n")
    assert out.read_bytes() == b"A" * 10
    w.write(1, STDOUT, b"c" * (HOLD_BYTES // 2) + b"\n")  # over the bound: cut, they go
    assert out.read_bytes() == b"A" * 10 + b"\n" + b"b" * (HOLD_BYTES // 2) + b"\n" + \
        b"c" * (HOLD_BYTES // 2) + b"\n"
    w.write(0, STDOUT, b"A\n")  # (the rest of it, on a line of its own)
    assert out.read_bytes().endswith(b"\nA\n")


def test_writer_ends_a_long_line_that_stalls_when_its_time_is_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pm.common.output_writer as output_writer

    w, out, _ = _writer(tmp_path)
    timers: list[Callable[[], None]] = []
    w.call_later = lambda seconds, fn: timers.append(fn)
    w.write(0, STDOUT, b"A" * 10)
    w.write(1, STDOUT, b"b\n")
    assert len(timers) == 1
    timers[0]()  # too early: nothing yet
    assert out.read_bytes() == b"A" * 10
    monkeypatch.setattr(output_writer, "HOLD_TIME", 0.0)
    timers[0]()
    assert out.read_bytes() == b"A" * 10 + b"\nb\n"


def test_writer_stdout_and_stderr_of_one_file_meet_and_labels_start_lines(
        tmp_path: Path) -> None:
    w, out, _ = _writer(tmp_path, same=True)
    w.label = True
    w.write(0, STDOUT, b"a\npar")
    w.write(0, STDOUT, b"t\n")  # (the same line goes on: no label in it)
    w.write(0, STDOUT, b"end")
    w.write(0, STDOUT, b"")
    w.write(1, STDERR, b"err\n")  # another rank, on the same file: a line of its own
    w.write(0, STDERR, b"mine")  # the rank's own stderr may join its own line (a shell's)
    assert out.read_bytes() == b"[0] a\n[0] part\n[0] end\n[1] err\n[0] mine"


def test_writer_raw_passes_chunks_as_they_come(tmp_path: Path) -> None:
    w, out, _ = _writer(tmp_path)
    w.raw = True
    for rank, chunk in ((0, b"name? "), (1, b"x"), (0, b"y\n")):
        w.write(rank, STDOUT, chunk)
    assert out.read_bytes() == b"name? xy\n"


def test_writer_counts_what_it_could_not_write(tmp_path: Path) -> None:
    r, wfd = os.pipe()
    os.close(r)
    w = Writer(False, out_fd=wfd, err_fd=os.open(tmp_path / "e", os.O_WRONLY | os.O_CREAT))
    assert w.loss() is None
    w.write(0, STDOUT, b"lost\n")
    assert (w.broken, w.loss()) == ({STDOUT}, (STDOUT, errno.EPIPE))


# ------------------------------------------------------------------ lost output: status
def _in_shell(line: str, quick: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=pmrun_env({"PM_QUICK": quick}),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("quick", "opts"), [("1", []), ("0", []),
                                             ("1", ["--local-nodes", "3"])],
                         ids=["quick", "full", "3nodes"])
def test_output_lost_to_a_reader_gone_is_sigpipes_status(tmp_path: Path, quick: str,
                                                         opts: list[str]) -> None:
    """`pmrun ... | head -1` where the rank's next line comes once head is gone: the rank
    ends well (or by the SIGPIPE it gets), the line is lost, pmrun exits 141 as a shell
    pipeline would, said once."""
    os.mkfifo(tmp_path / "go")
    argv = " ".join(pmrun_argv("-n", "1", *opts, "sh", "-c", "'echo a; read x < go; echo c'"))
    # head takes its line and goes; then the rank writes its next one.
    r = _in_shell(f"{argv} | (head -1; exec 0<&-; echo > go); exit ${{PIPESTATUS[0]}}",
                  quick, tmp_path)
    assert (r.returncode, r.stdout) == (141, "a\n"), r.stderr
    # (The rank may also be ended by the SIGPIPE it gets then: named instead.)
    assert r.stderr.splitlines() in (
        ["pmrun: standard output closed by its reader: what the ranks wrote there after that "
         "is lost"],
        [f"pmrun: rank 0 (node 0, {os.uname().nodename}) killed by SIGPIPE after pmrun's "
         "standard output was closed"]), r.stderr


@pytest.mark.parametrize(("quick", "opts"), [("1", []), ("0", []),
                                             ("1", ["--local-nodes", "3"])],
                         ids=["quick", "full", "3nodes"])
@pytest.mark.parametrize("prog", ["echo a; echo b", "yes"])
def test_output_lost_to_a_full_disk_is_status_1_said_once(tmp_path: Path, quick: str,
                                                          opts: list[str], prog: str) -> None:
    """Whether the ranks end before or after pmrun finds stdout full (`yes` is ended by the
    SIGPIPE its lost stdout gets): 1, and one line with the real cause."""
    for _ in range(2):
        with open("/dev/full", "wb") as full:
            r = subprocess.run(pmrun_argv("-n", "2", *opts, "sh", "-c", prog), stdout=full,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               timeout=60, env=pmrun_env({"PM_QUICK": quick}), cwd=tmp_path)
        assert (r.returncode, r.stderr) == (1, "pmrun: cannot write to stdout: No space left "
                                               "on device: what goes there from now on is "
                                               "lost\n")


@pytest.mark.parametrize(("quick", "opts"), [("1", []), ("0", []),
                                             ("1", ["--local-nodes", "3"])],
                         ids=["quick", "full", "3nodes"])
def test_output_to_a_stdout_closed_at_start_is_lost_and_said(tmp_path: Path, quick: str,
                                                             opts: list[str]) -> None:
    argv = " ".join(pmrun_argv("-n", "2", *opts, "sh", "-c", "'echo out; echo err >&2'"))
    r = _in_shell(f"exec {argv} >&-", quick, tmp_path)
    assert r.returncode == 1, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("pmrun:")]
    assert said == ["pmrun: cannot write to stdout: it was closed when pmrun started: what "
                    "goes there from now on is lost"]
    # Nothing written to it: nothing lost.
    argv = " ".join(pmrun_argv("-n", "2", *opts, "sh", "-c", "'echo err >&2'"))
    r = _in_shell(f"exec {argv} >&-", quick, tmp_path)
    assert (r.returncode, r.stderr) == (0, "err\nerr\n")


def test_a_rank_that_failed_before_the_loss_gives_its_own_status(tmp_path: Path) -> None:
    """-disable-auto-cleanup: rank 1 fails and is named; rank 0 writes to a full stdout
    only then: the failure came first, its status is pmrun's."""
    os.mkfifo(tmp_path / "go")
    with open("/dev/full", "wb") as full:
        p = subprocess.Popen(
            pmrun_argv("-disable-auto-cleanup", "-n", "2", "sh", "-c",
                       '[ "$PMI_RANK" = 1 ] && exit 3; read x < go; echo late'),
            stdout=full, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=pmrun_env(), cwd=tmp_path)
    try:
        assert p.stderr is not None
        (first,) = read_lines(p.stderr, 1, 30)
        assert b"rank 1" in first and b"exited with code 3" in first, first
        (tmp_path / "go").write_text("\n")
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 3, err
    assert err.decode().startswith("pmrun: cannot write to stdout: No space left on device")
