"""The suite's loop guard (tests/conftest.py, tests/loopguard_util.py) fails a test that
leaves a task nobody owns or an exception nobody handled on an event loop."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

CASES = '''
import asyncio
import gc



async def test_clean() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await task


async def test_leaks_a_task() -> None:
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="leaked-sleeper")


async def test_never_retrieves_an_exception() -> None:
    async def fail() -> None:
        raise RuntimeError("nobody looked")

    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.sleep(0.01)  # the behaviour under test: the task ends unobserved
    assert task.done()
    del task
    gc.collect()


async def test_a_callback_raises() -> None:
    loop = asyncio.get_running_loop()
    loop.call_soon(int, "not a number")
    await asyncio.sleep(0.01)  # the behaviour under test: the callback runs unobserved


def test_asyncio_run_leaks_a_task() -> None:
    async def main() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="run-leak")

    asyncio.run(main())
'''


@pytest.mark.timeout(60)
def test_the_guard_fails_leaked_tasks_and_unhandled_exceptions(tmp_path: Path) -> None:
    for name in ("conftest.py", "launch_util.py", "loopguard_util.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(CASES))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "test_cases.py"], cwd=tmp_path, capture_output=True, text=True, timeout=50)
    out = proc.stdout + proc.stderr
    assert "PASSED test_cases.py::test_clean" in out, out
    for name, why in [("test_leaks_a_task", "leaked-sleeper"),
                      ("test_never_retrieves_an_exception", "nobody looked"),
                      ("test_a_callback_raises", "invalid literal for int()"),
                      ("test_asyncio_run_leaks_a_task", "run-leak")]:
        assert f"ERROR test_cases.py::{name}" in out, out
        line = next(ln for ln in out.splitlines() if f"ERROR test_cases.py::{name}" in ln)
        assert "left on the event loop" in out and why in out, line
    assert proc.returncode == 1, out


LEAKY_PROCESS = '''
import asyncio, sys
from pm.agent.owned import checked

async def main() -> int:
    async def fail() -> None:
        raise RuntimeError("nobody looked")
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="leaked-sleeper")
    asyncio.get_running_loop().create_task(fail())
    await asyncio.sleep(0.01)  # the behaviour under test: the failed task goes unobserved
    return int(sys.argv[1])

sys.exit(asyncio.run(checked(main())))
'''


@pytest.mark.parametrize("check", ["1", ""])
def test_pmrun_and_agents_fail_on_a_task_or_exception_left_with_the_check_set(
        tmp_path: Path, check: str) -> None:
    # pmrun and its agents run their loop through pm.agent.owned.checked; the suite sets
    # PM_LOOP_CHECK for every pmrun it starts (launch_util.pmrun_env).
    from launch_util import pmrun_env

    prog = tmp_path / "leaky.py"
    prog.write_text(LEAKY_PROCESS)
    proc = subprocess.run([sys.executable, str(prog), "3"], capture_output=True, text=True,
                          timeout=30, env=pmrun_env({"PM_LOOP_CHECK": check}))
    if not check:
        assert proc.returncode == 3, proc.stderr
        return
    assert proc.returncode == 70, proc.stderr
    assert "pm loop check: task left running, nobody owns it" in proc.stderr
    assert "leaked-sleeper" in proc.stderr
    assert "pm loop check: Task exception was never retrieved: RuntimeError('nobody looked')" \
        in proc.stderr, proc.stderr
