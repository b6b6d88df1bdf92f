"""Shared pieces of the benchmarks: timing, medians, the MPICH wheel's tools, report sections.

Conventions every ``bench/NAME.py`` follows:

* runnable as ``python -m bench.NAME [--quick]`` from the checkout (``--quick``
  is a short run for checking that it works; the report uses the full run);
* compares against Hydra or against pmrun's other path *in the same run*,
  interleaving the contenders round-robin, and reports medians (min–max);
* writes its Markdown section with :func:`write_section` (and any plot next to
  it as ``bench/results/NAME*.png``); ``python -m bench`` assembles
  ``bench/REPORT.md`` from the sections.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def median_range(xs: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``median (min–max)`` of ``xs``, each formatted with ``fmt``."""
    return (f"{fmt.format(statistics.median(xs))} "
            f"({fmt.format(min(xs))}–{fmt.format(max(xs))})")


def timed(argv: Sequence[str], env: Mapping[str, str] | None = None,
          timeout: float = 600.0, cwd: str | Path | None = None) -> float:
    """Wall time in seconds of one run of ``argv`` (fork to reap); raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), env=dict(env) if env is not None else None,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout, cwd=cwd)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def interleaved(contenders: Mapping[str, Callable[[], float]], runs: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Run each contender ``runs`` times, round-robin, after ``warmup`` rounds."""
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + runs):
        for name, fn in contenders.items():
            value = fn()
            if i >= warmup:
                out[name].append(value)
    return out


def tool(name: str) -> str:
    """Path of a tool installed beside this Python (the MPICH wheel's ``mpiexec``,
    ``mpicc``; pmrun's ``pmrun``), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (pip install '.[mpi]')")
    return found


def pmrun() -> list[str]:
    """argv prefix that runs pmrun as a user would."""
    return [tool("pmrun")]


def release_install(src_root: Path = ROOT, name: str = "release") -> Path:
    """This checkout (or ``src_root``, another checkout of pmrun) installed the way the
    README installs it (``pip install .``, not editable) into its own venv,
    ``bench/out/NAME``; its ``python``.

    Start-up benchmarks run pmrun from here: an editable install adds its import
    finder to every start (about 10 ms), which no user's install has.  The
    dependencies (uvloop, msgpack, pyzmq, cffi) are this interpreter's, through a
    ``.pth`` line; only pmrun is rebuilt, each time, from the checkout.
    """
    venv = ROOT / "bench" / "out" / name
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    import sysconfig

    Path(purelib, "pmrun_bench_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # The MPICH wheel's libmpi (and the folder of its own libraries) lies in this
    # interpreter's lib/, where mpi4py looks for it (its prefix's lib/): there in the release
    # venv too, or mpi4py takes the system's MPI (Debian's Open MPI, where installed).
    libs = Path(sys.prefix, "lib")
    for lib in [*libs.glob("libmpi*"), libs / "mpich"]:
        link = venv / "lib" / lib.name
        if lib.exists() and not link.exists():
            link.symlink_to(lib)
    with tempfile.TemporaryDirectory() as tmp:
        # A copy of what the package is made of: building in the checkout would leave
        # build/ and *.egg-info there.
        src = Path(tmp) / "src"
        for part in ("pyproject.toml", "README.md", "LICENSE", "pm", "scripts", "deploy"):
            if not (src_root / part).exists():
                continue
            if (src_root / part).is_dir():
                shutil.copytree(src_root / part, src / part,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                src.mkdir(exist_ok=True)
                shutil.copy2(src_root / part, src / part)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                        "--force-reinstall", str(src)], check=True, cwd=tmp,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return python


def build_c(src: Path, out: Path, *, mpi: bool = True, extra: Sequence[str] = ()) -> Path:
    """Compile ``src`` (with the wheel's ``mpicc`` when ``mpi``) unless ``out`` is newer."""
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        cc = tool("mpicc") if mpi else os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-o", str(out), str(src), *extra], check=True)
    return out


def write_section(name: str, markdown: str) -> Path:
    """Store a benchmark's report section (and print it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    print(markdown)
    return path


def machine() -> str:
    """One line describing where the figures were taken."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu or 'unknown'}), Python {sys.version.split()[0]}"
