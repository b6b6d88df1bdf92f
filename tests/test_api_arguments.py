"""The Python API checks its arguments before anything starts: a wrong type is a TypeError
(pm.api.ArgumentTypeError, also a ValueError), a bad value a ValueError (JobSpecError),
each one line naming the argument and what it takes; never an error from the runtime."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import PmrunRunner

import pm
from pm import api
from pm.api import ArgumentTypeError
from pm.ensemble.taskspec import TaskFileError
from pm.jobspec import JobSpecError

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
SIZE_WORDS = ("expected a number with an optional unit (K, M, G, T, P, optionally followed "
              "by B or iB) or a percentage like '80%'")
#: Where the API's refusals are raised: its own checks (pm.jobspec's counted, check_env).
OWN = {str(Path(api.__file__).with_name(name)) for name in ("api.py", "api_args.py", "jobspec.py")}


def _started(coro: Coroutine[Any, Any, Any]) -> None:
    coro.close()
    raise AssertionError("the arguments were not refused before the run started")


def _checked(err: pytest.ExceptionInfo[BaseException], kind: type[BaseException],
             message: str) -> None:
    assert type(err.value) is kind, f"{type(err.value).__name__}: {err.value}"
    assert str(err.value) == message
    assert traceback.extract_tb(err.tb)[-1].filename in OWN, err.traceback


def refused(call: Callable[[], object], kind: type[BaseException], message: str) -> None:
    """``call`` raises ``kind`` with ``message``, from the API's own checks, before any
    event loop runs (run() and run_tasks() start theirs through pm.api._run_loop)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "_run_loop", _started)
        with pytest.raises(BaseException) as err:
            call()
    _checked(err, kind, message)


# ---------------------------------------------------------------- 1. a str for a list
def test_a_str_for_argv_is_refused_not_run_letter_by_letter() -> None:
    refused(lambda: pm.run("true", 2), ArgumentTypeError,
            "argv must be a list of strings (the program and its arguments), not the str "
            "'true'")


def test_a_str_for_tasks_is_refused_not_run_letter_by_letter() -> None:
    refused(lambda: pm.run_tasks("echo a"), ArgumentTypeError,
            "tasks must be a list of tasks (argv lists or tasks-file lines), not the str "
            "'echo a' (a tasks-file line, or a file's text, goes in a list: ['echo a'])")


def test_a_type_refusal_is_a_type_error_and_a_value_error() -> None:
    assert issubclass(ArgumentTypeError, TypeError)
    assert issubclass(ArgumentTypeError, ValueError)
    assert issubclass(ArgumentTypeError, JobSpecError)


# ---------------------------------------------------------------- 2. values checked up front
def test_a_missing_wdir_is_named_in_the_command_line_s_words(pmrun: PmrunRunner) -> None:
    missing = "/nonexistent"
    refused(lambda: pm.run(["true"], 2, wdir=missing), JobSpecError,
            f"wdir {missing}: no such directory")
    cli = pmrun("-wdir", missing, "-n", "1", "true")
    assert cli.returncode == 2
    assert cli.stderr.strip() == f"pmrun: -wdir {missing}: no such directory"


@pytest.mark.parametrize(("call", "kind", "message"), [
    (lambda: pm.run(["true"], 2, wdir=5), ArgumentTypeError,
     "wdir must be a path (a string) or None, not 5"),
    (lambda: pm.run(["true"], 2, ppn="x"), ArgumentTypeError,
     "ppn must be a whole number or None, not 'x'"),
    (lambda: pm.run(["true"], 2, ppn=0), JobSpecError, "ppn must be at least 1, got 0"),
    (lambda: pm.run(["true"], 2, bind_to=5), ArgumentTypeError,
     "bind_to must be a string, not 5"),
    (lambda: pm.run(["true"], 2, bind_to="bogus"), JobSpecError,
     "unknown bind_to 'bogus': expected one of none, hwthread, core, l3cache, numa, "
     "package (socket), or user:<cpus>,..."),
    (lambda: pm.run(["true"], 2, bindto="core"), TypeError,
     "unknown job option 'bindto' (did you mean 'bind_to'?)"),
    (lambda: pm.run(["true"], 2, wdir="/etc/passwd"), JobSpecError,
     "wdir /etc/passwd: not a directory"),
    (lambda: pm.run(["true"], 2, timeout=-1), JobSpecError,
     "timeout must be a positive number of seconds, not -1"),
    (lambda: pm.run(["true"], 2, wait_after_first=0), JobSpecError,
     "wait_after_first must be a positive number of seconds, not 0"),
    (lambda: pm.run(["true"], 2, kvs="nope"), JobSpecError,
     "kvs takes shm or socket, not 'nope'"),
    (lambda: pm.run(["true"], 2, mpi="nope"), JobSpecError,
     "mpi takes pmix, pmi, none or auto, not 'nope'"),
    (lambda: pm.run(["true"], 2, mem_bind="nope"), JobSpecError,
     "mem_bind: 'nope' is not one of [verbose,][prefer,]TYPE, TYPE none, local, rank, "
     "map_mem:NODE,... or mask_mem:MASK,... (or Hydra's firsttouch, bind:NODES, "
     "interleave:NODES)"),
    (lambda: pm.run(["true"], 2, mem_high="abc"), JobSpecError,
     f"mem_high: cannot read 'abc' as a size: {SIZE_WORDS}"),
    (lambda: pm.run(["true"], 2, mem_overrun="x"), JobSpecError,
     "mem_overrun takes warn, kill or suspend, not 'x'"),
    (lambda: pm.run(["true"], 2, universe_size=0), JobSpecError,
     "universe_size must be at least 1 (or -1: no limit), not 0"),
    (lambda: pm.run(["true"], 2, distribution="plane=0"), JobSpecError,
     "distribution takes block, cyclic or plane=N (N ranks a node in turn), not 'plane=0'"),
    (lambda: pm.run(["true"], 2, stdin_rank=2), JobSpecError,
     "stdin_rank must be one of the job's ranks (0 to 1) or -1 (every rank reads stdin), "
     "not 2"),
    (lambda: pm.run(["true"], 2, rank_slots=["0", "x"]), JobSpecError,
     "rank_slots[1]: slot=x: 'x' is not a core, a range of cores or PACKAGE:CORES"),
    (lambda: pm.run(["true"], 2, profile="/nonexistent/trace.json"), JobSpecError,
     "profile /nonexistent/trace.json: no such directory /nonexistent"),
    (lambda: pm.run_tasks([["echo", 1]]), ArgumentTypeError,  # type: ignore[list-item]
     "tasks[0][1] must be a string, not 1"),
    (lambda: pm.run_tasks([["true"]], mem_per_task="abc"), JobSpecError,
     f"mem_per_task: cannot read 'abc' as a size: {SIZE_WORDS}"),
    (lambda: pm.run_tasks([["true"]], bogus=1), TypeError,
     "unknown run_tasks option 'bogus'"),
    (lambda: pm.run_tasks(["true", "[mem=abc] true"]), TaskFileError,
     f"tasks[1]: line 1: cannot read 'abc' as a size: {SIZE_WORDS}"),
], ids=["wdir=5", "ppn=x", "ppn=0", "bind_to=5", "bind_to=bogus", "bindto", "wdir=file",
        "timeout=-1", "wait_after_first=0", "kvs=nope", "mpi=nope", "mem_bind=nope",
        "mem_high=abc", "mem_overrun=x", "universe_size=0", "distribution=plane=0",
        "stdin_rank=2", "rank_slots", "profile", "task-word-1",
        "mem_per_task=abc", "bogus=1", "task-line-mem"])
def test_values_are_checked_before_anything_starts(
        call: Callable[[], object], kind: type[BaseException], message: str) -> None:
    refused(call, kind, message)


# ---------------------------------------------------------------- 3. run_tasks as run and the CLI
@pytest.mark.parametrize(("call", "message"), [
    (lambda: pm.run_tasks([["true"]], mem_per_task=-1), "mem_per_task must be at least 0, "
                                                        "got -1"),
    (lambda: pm.run_tasks([["true"]], retries=-1), "retries must be at least 0, got -1"),
    (lambda: pm.run_tasks([["true"]], local_nodes=0), "local_nodes must be at least 1, got 0"),
    (lambda: pm.run(["true"], local_nodes=0), "local_nodes must be at least 1, got 0"),
], ids=["mem_per_task=-1", "retries=-1", "run_tasks-local_nodes=0", "run-local_nodes=0"])
def test_run_tasks_refuses_what_run_and_the_command_line_refuse(
        call: Callable[[], object], message: str) -> None:
    refused(call, JobSpecError, message)


# ---------------------------------------------------------------- Cluster, launch, submit
@pytest.mark.parametrize(("kwargs", "kind", "message"), [
    ({"hosts": "node1"}, ArgumentTypeError, "hosts must be a list of strings or None, not "
                                            "'node1'"),
    ({"slots": [2]}, JobSpecError, "slots are the hosts' slots: give hosts too"),
    ({"local_nodes": "2"}, ArgumentTypeError, "local_nodes must be a whole number, not '2'"),
    ({"retries": -1}, JobSpecError, "retries must be at least 0, got -1"),
    ({"mem_overrun": "x"}, JobSpecError, "mem_overrun takes warn, kill or suspend, not 'x'"),
    ({"mem_high": "abc"}, JobSpecError, f"mem_high: cannot read 'abc' as a size: "
                                        f"{SIZE_WORDS}"),
    ({"hosts": ["a"], "bootstrap": {"name": "nope"}}, JobSpecError,
     "bootstrap['name'] takes local, fork, exec, ssh, slurm or persistent, not 'nope'"),
    ({"bootstrap": {"name": 3}}, ArgumentTypeError,
     "bootstrap['name'] takes local, fork, exec, ssh, slurm or persistent, not 3"),
    ({"hosts": ["a"], "bootstrap": {"name": "exec"}}, JobSpecError,
     "bootstrap: the exec launcher needs a 'template', the command that runs an agent on a "
     "host (such as 'ip netns exec {host} {command}')"),
    ({"hosts": ["a"], "bootstrap": {"name": "ssh", "ssh": "ssh -o 'x"}}, JobSpecError,
     "bootstrap['ssh'] \"ssh -o 'x\": No closing quotation"),
])
def test_a_cluster_s_arguments(kwargs: dict[str, Any], kind: type[BaseException],
                               message: str) -> None:
    refused(lambda: pm.Cluster(**kwargs), kind, message)


async def test_launch_and_submit_refuse_before_starting() -> None:
    read_end, write_end = os.pipe()
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)  # (a descriptor number no file is open at)
    async with pm.Cluster() as cluster:
        cases: list[tuple[Callable[[], Coroutine[Any, Any, object]], type[BaseException],
                          str]] = [
            (lambda: cluster.launch("true"), ArgumentTypeError,
             "argv must be a list of strings (the program and its arguments), not the str "
             "'true'"),
            (lambda: cluster.launch(["true"], wdir="/nonexistent"), JobSpecError,
             "wdir /nonexistent: no such directory"),
            (lambda: cluster.launch(["true"], wdir="/etc/passwd"), JobSpecError,
             "wdir /etc/passwd: not a directory"),
            (lambda: cluster.submit(["true"], wdir="/etc/passwd"), JobSpecError,
             "wdir /etc/passwd: not a directory"),
            (lambda: cluster.launch(["true"], output="files"), ValueError,
             "output must be 'capture' or 'inherit', not 'files'"),
            (lambda: cluster.launch(["true"], stdin=closed), JobSpecError,
             f"stdin must be a file descriptor open for reading (such as a pipe's read end), "
             f"not {closed}: no descriptor {closed} is open"),
            (lambda: cluster.launch(["true"], stdin=write_end), JobSpecError,
             f"stdin must be a file descriptor open for reading (such as a pipe's read end), "
             f"not {write_end}: it is open for writing only"),
            (lambda: cluster.submit("echo a"), ArgumentTypeError,
             "argv must be a list of strings (the program and its arguments), not the str "
             "'echo a'"),
            (lambda: cluster.submit(["true"], "abc"), JobSpecError,
             f"mem: cannot read 'abc' as a size: {SIZE_WORDS}"),
        ]
        try:
            for call, kind, message in cases:
                with pytest.raises(BaseException) as err:
                    await call()
                _checked(err, kind, message)
        finally:
            os.close(read_end)
            os.close(write_end)
        assert cluster._jobs == [] and cluster._ensemble is None  # (nothing started)


# ---------------------------------------------------------------- correct calls still run
def test_correct_calls_still_run(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    where = [PY, "-c", "import os; print('in', os.getcwd(), flush=True)"]
    result = pm.run(tuple(where), 2, local_nodes=2, wdir=tmp_path, ppn=1, bind_to="none",
                    check=True)
    assert result.ok and result.exit_codes == [0, 0]
    assert capfd.readouterr().out.count(f"in {tmp_path}\n") == 2
    results = pm.run_tasks([[PY, "-c", "print('a')"], f"[mem=2M] {PY} -c 'print(2)'"],
                           output="capture", mem_per_task="1M", retries=0, local_nodes=1)
    assert [(r.returncode, r.stdout, r.reservation) for r in results] == [
        (0, b"a\n", 1 << 20), (0, b"2\n", 2 << 20)]


async def test_correct_cluster_calls_still_run(tmp_path: Path) -> None:
    async with pm.Cluster(local_nodes=1, retries=0, mem_overrun="warn") as cluster:
        job = await cluster.launch((PY, "-c", "import os; print(os.getcwd())"), 1,
                                   wdir=os.fspath(tmp_path))
        lines = [line async for _, _, line in job.output()]
        assert (await job.wait(check=True)).ok and lines == [f"{tmp_path}\n".encode()]
        task = await cluster.submit([PY, "-c", "print(3)"], "1M", wdir=tmp_path)
        done = await task.wait()
        assert (done.returncode, done.stdout) == (0, b"3\n")
