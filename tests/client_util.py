"""Helpers for tests that run Python ranks using pm.client under pmrun.

A rank program prints one line ``RESULT <json>`` (with a ``"rank"`` field);
:func:`run_ranks` writes the program to a file in the test's directory, runs
it through the ``pmrun`` fixture and returns the results by rank.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

#: Prelude of every rank program: prints the result line.
PRELUDE = '''
import asyncio, hashlib, json, os, sys

def report(**fields):
    print("RESULT " + json.dumps(fields), flush=True)
'''


def write_program(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def results(stdout: str) -> dict[int, dict[str, Any]]:
    """The ``RESULT`` lines of a job, by rank."""
    out: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            fields = json.loads(line[len("RESULT "):])
            assert fields["rank"] not in out, f"two results from rank {fields['rank']}"
            out[fields["rank"]] = fields
    return out


def run_ranks(pmrun: Any, directory: Path, name: str, body: str, n: int, *opts: str,
              timeout: float = 60.0, ok: bool = True
              ) -> tuple[dict[int, dict[str, Any]], subprocess.CompletedProcess[str]]:
    """Run ``body`` on ``n`` ranks; with ``ok``, require exit 0 and a result from every rank."""
    prog = write_program(directory, name, body)
    proc: subprocess.CompletedProcess[str] = pmrun(
        "-n", str(n), *opts, "python", str(prog), timeout=timeout)
    got = results(proc.stdout)
    if ok:
        assert proc.returncode == 0, (
            f"pmrun exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        assert sorted(got) == list(range(n)), f"results from {sorted(got)}\n{proc.stderr}"
    return got, proc
