"""Jobs inside a real Slurm cluster (tests/realcluster_util.py: slurmctld, a slurmd per
network-namespace node, munged).

pmrun runs as a user would: ``salloc -N4 -n8 pmrun -n 8 ./app`` from this machine, and an
``sbatch`` script whose batch host is a node.  No ``--launcher``, no ``--iface``: the
allocation decides both.  All agents start as one ``srun`` step.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import BIN, REPO, mpi_missing, pmrun_argv, pmrun_env, script
from realcluster_util import RealCluster

from pm.agent.main import STDIN_LOST
from pm.bootstrap.slurm import EXIT_CANCELLED, EXIT_TIME_LIMIT, cancelled, job_ending

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

MPI_PROGRAM = """
    import os
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.rank)
    where = comm.gather((os.uname().nodename, os.readlink("/proc/self/ns/net")))
    if comm.rank == 0:
        nodes = sorted({w[0] for w in where})
        print("sum", total, "size", comm.size, "netns", len({w[1] for w in where}),
              "nodes", ",".join(nodes), MPI.Get_library_version().split()[0], flush=True)
"""


def env_for(c: RealCluster, tmp: Path | None = None) -> dict[str, str]:
    """What a user's shell would have: a ``pmrun`` command (in ``tmp``/bin), pmrun
    importable, the venv first on PATH; MPICH's TCP provider (namespaces on one machine)."""
    path = f"{BIN}:{os.environ['PATH']}"
    if tmp is not None:
        bindir = tmp / "bin"
        bindir.mkdir(exist_ok=True)
        (bindir / "pmrun").write_text(f"#!/bin/sh\nexec {sys.executable} -m pm \"$@\"\n")
        (bindir / "pmrun").chmod(0o755)
        path = f"{bindir}:{path}"
    return c.env({"PYTHONPATH": str(REPO), "PATH": path, "PYTHONUNBUFFERED": "1",
                  "FI_PROVIDER": "tcp"})


def salloc(c: RealCluster, opts: list[str], *pmrun: str, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["salloc", "--quiet", *opts, sys.executable, "-m", "pm", *pmrun],
                          env=env_for(c), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_clean(c: RealCluster) -> None:
    c.wait_queue_empty(30)
    left = c.wait_clean(20)
    assert not left, f"left on the nodes: {left}"


def test_slurm_says_it_ended_the_job() -> None:
    line = "slurmstepd: error: *** STEP 25.0 ON n1 CANCELLED AT 2026-12-02T01:11:55 ***"
    assert cancelled(line) == ("Slurm cancelled the job step 25.0", EXIT_CANCELLED)
    line = "slurmstepd: error: *** JOB 27 ON n1 CANCELLED AT 2026-12-02T01:11:55 DUE TO TIME " \
           "LIMIT ***"
    assert cancelled(line) == ("Slurm ended the job 27: time limit reached", EXIT_TIME_LIMIT)
    assert cancelled("srun: error: n1: task 0: Exited with exit code 1") is None


def test_slurmctld_says_it_ends_the_job() -> None:
    assert job_ending("27", "COMPLETING|TimeLimit\n") == (
        "Slurm ended the job 27: time limit reached", EXIT_TIME_LIMIT)
    assert job_ending("28", "COMPLETING|None\n") == ("Slurm cancelled the job 28",
                                                      EXIT_CANCELLED)
    assert job_ending("29", "COMPLETING|Prolog\n") == ("Slurm cancelled the job 29 (prolog)",
                                                        EXIT_CANCELLED)
    assert job_ending("30", "RUNNING|None\n") is None  # (someone else's SIGTERM)
    assert job_ending("31", "") is None


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_salloc_mpich_allreduce_on_four_nodes(slurm_cluster: RealCluster,
                                              tmp_path: Path) -> None:
    c = slurm_cluster
    app = tmp_path / "app"
    app.write_text(f"#!{sys.executable}\n" + textwrap.dedent(MPI_PROGRAM))
    app.chmod(0o755)
    # The README's words: salloc -N4 -n8, then pmrun ./app.
    res = subprocess.run(["salloc", "--quiet", "-N4", "-n8", "pmrun", "./app"],
                         env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"sum 28 size 8 netns 4 nodes {','.join(c.names)} MPICH" in res.stdout, res.stdout
    # (A step slow to end on a loaded machine is only warned about.)
    assert all("did not exit" in line for line in res.stderr.splitlines()), res.stderr
    assert_clean(c)


def test_salloc_places_ranks_as_slurm_says(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    # Heterogeneous tasks per node (3 on the first, 1 on the second), read from Slurm.
    res = salloc(c, ["-N2", "-n4", "--ntasks-per-node=3"], "-n", "4", "sh", "-c",
                 "echo $PMI_RANK $(hostname)")
    assert res.returncode == 0, res.stderr
    rows = sorted(line.split() for line in res.stdout.splitlines())
    per_node = [sum(1 for r in rows if r[1] == n) for n in c.names[:2]]
    assert per_node == [3, 1], rows
    assert_clean(c)


def test_a_heterogeneous_allocation_runs_in_its_first_part(slurm_cluster: RealCluster,
                                                          tmp_path: Path) -> None:
    # salloc -N1 -n2 : -N1 -n1 sets SLURM_JOB_NODELIST_HET_GROUP_0 (and _1), no plain
    # SLURM_JOB_NODELIST: srun runs in the first part, and so does pmrun (it used to run on
    # the machine outside the allocation, as if there were none).
    c = slurm_cluster
    show = "sh -c 'echo $PMI_RANK$SLURM_PROCID $(hostname)'"
    script = f"srun --mpi=none {show}; echo ==; pmrun {show}"
    res = subprocess.run(["salloc", "--quiet", "-N1", "-n2", ":", "-N1", "-n1", "sh", "-c",
                          script], env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    srun, pmrun = (sorted(part.splitlines()) for part in res.stdout.split("==\n"))
    assert len(srun) == 2 and srun[0].split()[1] in c.names, res.stdout
    assert pmrun == srun, res.stdout
    assert_clean(c)


def test_relative_and_cpu_freq_as_srun_takes_them(slurm_cluster: RealCluster) -> None:
    """srun's --relative 1: the nodes from the allocation's second on (as srun lays out a
    step there, -N 2 of them); --cpu-freq goes to the agents' step, which Slurm takes."""
    c = slurm_cluster
    res = salloc(c, ["-N3", "-n3"], "--relative", "1", "--cpu-freq", "high", "-N", "2",
                 "-n", "2", "sh", "-c", "echo $PMI_RANK $(hostname)")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [f"0 {c.names[1]}", f"1 {c.names[2]}"]
    res = salloc(c, ["-N2", "-n2"], "--relative", "2", "true")
    assert (res.returncode, res.stderr) == (2, "pmrun: --relative 2: there are 2 hosts, "
                                               "counted from 0\n")
    assert_clean(c)


def test_srun_step_options_go_to_the_agents_step(slurm_cluster: RealCluster,
                                                 tmp_path: Path) -> None:
    """srun's --profile=task,energy (Slurm's profiling of the step, not a file),
    --acctg-freq and --slurmd-debug: the srun that starts the agents' step has them (seen
    from rank 0: the machine's processes), and Slurm takes them; outside an allocation
    they are named in one line, and --profile=none is taken."""
    c = slurm_cluster
    show = ('if [ "$PMI_RANK" = 0 ]; then pgrep -af -- --profile= | grep -q "srun .* '
            '--profile=task,energy --acctg-freq=task=30 --slurmd-debug=verbose .*'
            '--job-name=pm-agents " && echo step; fi')
    res = salloc(c, ["-N2", "-n2"], "--profile=task,energy", "--acctg-freq", "task=30",
                 "--slurmd-debug=verbose", "-n", "2", "sh", "-c", show)
    assert (res.returncode, res.stdout) == (0, "step\n"), res.stderr
    assert not Path("task,energy").exists()  # (salloc's folder: no trace file there)
    r = subprocess.run(pmrun_argv("--profile=task", "-n", "1", "true"), env=pmrun_env(),
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "pmrun: --profile=task is what Slurm's profiling "
                                           "samples of a job step (pmrun's own: --profile "
                                           "FILE, a path such as ./task): this job's ranks "
                                           "are not started through Slurm\n")
    r = subprocess.run(pmrun_argv("--acctg-freq=30", "-n", "1", "true"), env=pmrun_env(),
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "pmrun: --acctg-freq is how often Slurm's "
                                           "accounting samples a job step: this job's ranks "
                                           "are not started through Slurm\n")
    r = subprocess.run(pmrun_argv("--profile=none", "-n", "1", "true"), env=pmrun_env(),
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert not any(tmp_path.iterdir())
    assert_clean(c)


def test_cyclic_ranks_land_where_srun_s_land(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    # Slurm gives 3 tasks to the first node and 1 to the second; cyclic deals a rank a
    # node, leaving out a node whose tasks are taken (srun's and pmrun's alike): from the
    # allocation's own -m (SLURM_DISTRIBUTION, which srun follows) as from the option.
    show = "sh -c 'echo $PMI_RANK$SLURM_PROCID $(hostname)'"
    script = (f"echo $SLURM_TASKS_PER_NODE; srun --mpi=none -n 4 {show}; echo ==; "
              f"pmrun -n 4 -m cyclic {show}; echo ==; pmrun -n 4 {show}; echo ==; "
              f"pmrun -n 4 -m block {show}")
    res = subprocess.run(["salloc", "--quiet", "-N2", "-n4", "-m", "cyclic", "sh", "-c", script],
                         env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    tasks, _, rest = res.stdout.partition("\n")
    assert tasks == "3,1", res.stdout
    srun, pmrun, default, block = (sorted(part.splitlines()) for part in rest.split("==\n"))
    a, b = c.names[:2]
    assert srun == [f"0 {a}", f"1 {b}", f"2 {a}", f"3 {a}"], res.stdout
    assert pmrun == default == srun, res.stdout
    assert block == [f"0 {a}", f"1 {a}", f"2 {a}", f"3 {b}"], res.stdout
    assert_clean(c)


def test_arbitrary_ranks_land_where_srun_s_land(slurm_cluster: RealCluster,
                                                tmp_path: Path) -> None:
    c = slurm_cluster
    # srun's -m arbitrary: SLURM_HOSTFILE's hosts, a rank a line, in order (a host list
    # as a line, repeats too); pmrun without -n runs a rank per line.
    a, b, h3 = c.names[:3]
    (tmp_path / "hf").write_text(f"{b}\n{a}  # comment\n\n{b}\n{h3}\n")
    show = "sh -c 'echo $PMI_RANK$SLURM_PROCID $(hostname)'"
    script = (f"export SLURM_HOSTFILE={tmp_path}/hf; srun --mpi=none -m arbitrary -n 4 {show}; "
              f"echo ==; pmrun -m arbitrary {show}; echo ==; pmrun -n 2 -m arbitrary {show}")
    res = subprocess.run(["salloc", "--quiet", "-N3", "-n6", "sh", "-c", script],
                         env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    srun, pmrun, two = (sorted(part.splitlines()) for part in res.stdout.split("==\n"))
    assert srun == [f"0 {b}", f"1 {a}", f"2 {b}", f"3 {h3}"], res.stdout
    assert pmrun == srun and two == srun[:2], res.stdout
    assert_clean(c)


def test_multi_prog_runs_what_srun_s_runs(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    conf = tmp_path / "silly.conf"
    conf.write_text("4-5 echo rest %t\n1,3 echo task:%t\n0,2 echo offset:%o\n")
    script = f"srun -l --mpi=none -n 6 --multi-prog {conf}; echo ==; " \
             f"pmrun -n 6 -prepend-pattern '%r: ' --multi-prog {conf}"
    res = subprocess.run(["salloc", "--quiet", "-N2", "-n6", "sh", "-c", script],
                         env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    srun, pmrun = res.stdout.split("==\n")
    norm = sorted(line.strip() for line in srun.splitlines())
    assert norm == sorted(pmrun.splitlines()) and len(norm) == 6, res.stdout
    assert_clean(c)


def test_minus_n_runs_on_part_of_the_allocation(slurm_cluster: RealCluster,
                                                tmp_path: Path) -> None:
    c = slurm_cluster
    # srun's -N inside a 3-node allocation whose nodes have 4, 1 and 1 tasks: the first
    # nodes, the ranks laid out as srun lays out its step's (3 and 1, not 2 and 2).
    show = "sh -c 'echo $PMI_RANK$SLURM_PROCID $(hostname)'"
    script = "; echo ==; ".join(
        f"echo $SLURM_TASKS_PER_NODE; {tool} -N {k} -n {n} {show}"
        for k, n in ((2, 4), (3, 5)) for tool in ("srun --mpi=none", "pmrun"))
    res = subprocess.run(["salloc", "--quiet", "-N3", "-n6", "sh", "-c", script],
                         env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    srun2, pmrun2, srun3, pmrun3 = (sorted(part.splitlines()) for part in
                                    res.stdout.split("==\n"))
    a, b, h3 = c.names[:3]
    assert srun2 == sorted(["4,1(x2)", f"0 {a}", f"1 {a}", f"2 {a}", f"3 {b}"]), res.stdout
    assert srun3 == sorted(["4,1(x2)", f"0 {a}", f"1 {a}", f"2 {a}", f"3 {b}", f"4 {h3}"]), \
        res.stdout
    assert (pmrun2, pmrun3) == (srun2, srun3), res.stdout
    res = salloc(c, ["-N2", "-n2"], "-N", "3", "true")
    assert (res.returncode, res.stderr) == (
        2, f"pmrun: -N 3: there are 2 hosts ({c.names[0]}, {c.names[1]})\n")
    assert_clean(c)


def test_a_wdir_the_nodes_lack_is_named_by_the_node(slurm_cluster: RealCluster) -> None:
    # Inside an allocation the ranks run on its nodes: -wdir is not looked for where
    # pmrun runs (a node-local scratch directory need not be there); a node without it
    # says so in one line as its ranks start, the job's status 127 (not started).
    c = slurm_cluster
    res = salloc(c, ["-N2", "-n2"], "-wdir", "/no/such/scratch", "-n", "2", "pwd")
    assert (res.returncode, res.stderr) == (
        127, f"pmrun: rank 0 (node 0, {c.names[0]}) could not start: pwd: its working "
             "directory /no/such/scratch: no such directory\n")
    assert_clean(c)


def test_w_and_exclude_choose_nodes_of_the_allocation(slurm_cluster: RealCluster,
                                                      tmp_path: Path) -> None:
    c = slurm_cluster
    # srun's -w (--nodelist) and --exclude: the ranks on those nodes only (or on all but
    # those), started through Slurm (not ssh: without the cluster's ssh configuration the
    # node names do not even resolve here).
    show = "sh -c 'echo $PMI_RANK $(hostname)'"
    a, b, h3 = c.names[:3]
    script = f"pmrun -w {b},{h3} -n 4 {show}; echo ==; pmrun --exclude {a},{b} -n 2 {show}"
    res = subprocess.run(["salloc", "--quiet", "-N3", "-n3", "sh", "-c", script],
                         env=env_for(c, tmp_path), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    w, exclude = (sorted(part.splitlines()) for part in res.stdout.split("==\n"))
    assert sorted(line.split()[1] for line in w) == [b, b, h3, h3], res.stdout
    assert [line.split()[1] for line in exclude] == [h3, h3], res.stdout
    res = salloc(c, ["-N2", "-n2"], "--exclude", f"{a},{b}", "true")
    assert (res.returncode, res.stderr) == (
        2, f"pmrun: --exclude {a},{b} leaves no node of the allocation\n")
    assert_clean(c)


def test_salloc_runs_a_gnu_parallel_ensemble_on_the_nodes(slurm_cluster: RealCluster,
                                                           tmp_path: Path) -> None:
    c = slurm_cluster
    # salloc's shell runs here, on no node of the allocation (a login node's case).
    log = tmp_path / "log"
    res = salloc(c, ["-N3", "-n6"], "--joblog", str(log), "echo {} $(hostname)",
                 ":::", *"abcdef")
    assert res.returncode == 0, res.stderr
    rows = sorted(line.split() for line in res.stdout.splitlines())
    assert [r[0] for r in rows] == list("abcdef"), res.stdout
    assert {r[1] for r in rows} <= set(c.names[:3]), rows
    entries = [line.split("\t") for line in log.read_text().splitlines()[1:]]
    assert sorted((int(e[0]), e[1], e[6]) for e in entries) == [
        (i + 1, row[1], "0") for i, row in enumerate(rows)], log.read_text()
    assert res.stderr == ""  # (as parallel: every task succeeded)
    assert_clean(c)


def _venv_python(var: str, ci: str) -> str | None:
    """The python of an MPI wheel's venv: ``$var``, else ``.ci/<ci>`` (as test_pmix and
    test_intel_mpi find them)."""
    path = os.environ.get(var) or str(REPO / ".ci" / ci / "bin" / "python")
    return path if os.access(path, os.X_OK) else None


IMPI = _venv_python("PMRUN_IMPI_PYTHON", "impi")
OMPI = _venv_python("PMRUN_OMPI_PYTHON", "ompi")


@pytest.mark.skipif(IMPI is None, reason="no Intel MPI venv (PMRUN_IMPI_PYTHON or .ci/impi)")
def test_salloc_intel_mpi_allreduce(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    prog = script(tmp_path, "mpi.py", MPI_PROGRAM)
    res = salloc(c, ["-N3", "-n6"], "-genv", "I_MPI_FABRICS", "ofi", str(IMPI), str(prog))
    assert res.returncode == 0, res.stderr
    assert f"sum 15 size 6 netns 3 nodes {','.join(c.names[:3])} Intel" in res.stdout, \
        res.stdout
    assert_clean(c)


@pytest.mark.skipif(OMPI is None, reason="no Open MPI venv (PMRUN_OMPI_PYTHON or .ci/ompi)")
def test_salloc_open_mpi_allreduce_over_pmix(slurm_cluster: RealCluster,
                                             tmp_path: Path) -> None:
    c = slurm_cluster
    prog = script(tmp_path, "mpi.py", MPI_PROGRAM)
    res = salloc(c, ["-N2", "-n4"], str(OMPI), str(prog))
    assert res.returncode == 0, res.stderr
    assert f"sum 6 size 4 netns 2 nodes {','.join(c.names[:2])} Open" in res.stdout, \
        res.stdout
    assert_clean(c)


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_sbatch_script(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    prog = script(tmp_path, "mpi.py", MPI_PROGRAM)
    out = tmp_path / "job.out"
    job = tmp_path / "job.sh"
    # As in the README: no launcher, no hosts, no -n (the allocation's 6 tasks).
    job.write_text(f"""#!/bin/sh
#SBATCH --nodes=3 --ntasks=6 --time=10 --output={out}
pmrun {sys.executable} {prog}
echo "pmrun exit $?"
pmrun sh -c 'echo node $(hostname) $SLURMD_NODENAME'
""")
    env = env_for(c, tmp_path)
    res = subprocess.run(["sbatch", "--parsable", str(job)], env=env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    jobid = res.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not c.run(["squeue", "-h", "-j", jobid]).stdout.strip():
            break
        time.sleep(0.2)
    text = out.read_text()
    assert f"sum 15 size 6 netns 3 nodes {','.join(c.names[:3])}" in text, text
    assert "pmrun exit 0" in text, text
    # Each node's own Slurm variables (slurmd's), not the batch host's, as srun's tasks.
    nodes = [line.split()[1:] for line in text.splitlines() if line.startswith("node ")]
    assert len(nodes) == 6 and all(a == b for a, b in nodes), text
    assert len({a for a, _ in nodes}) == 3, text
    assert_clean(c)


def test_the_readmes_ensemble_batch_script_resumes(slurm_cluster: RealCluster,
                                                   tmp_path: Path) -> None:
    c = slurm_cluster
    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("pmrun --joblog done.log"))
    (tmp_path / "sim").write_text("#!/bin/sh\necho \"$1 on $(hostname)\"\n")
    (tmp_path / "sim").chmod(0o755)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "out").mkdir()
    job = tmp_path / "job.sh"
    job.write_text(f"#!/bin/sh\n#SBATCH --nodes=3 --time=10 --output={tmp_path}/job.out\n"
                   f"{line}\necho \"pmrun exit $?\"\n")
    env = env_for(c, tmp_path)

    def batch() -> str:
        res = subprocess.run(["sbatch", "--parsable", str(job)], env=env, capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        jobid = res.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 120
        while c.run(["squeue", "-h", "-j", jobid]).stdout.strip():
            assert time.monotonic() < deadline, f"batch job {jobid} did not end"
            time.sleep(0.2)
        return (tmp_path / "job.out").read_text()

    def logged() -> list[str]:
        return sorted(x.split("\t")[8] for x in
                      (tmp_path / "done.log").read_text().splitlines()[1:])

    for name in ("a", "b"):
        (tmp_path / "inputs" / f"{name}.dat").write_text("")
    text = batch()
    assert "pmrun exit 0" in text, text
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == ["a.txt", "b.txt"]
    assert all((tmp_path / "out" / n).read_text().split()[2] in c.names[:3]
               for n in ("a.txt", "b.txt"))
    first = logged()
    assert len(first) == 2, first
    # The next job (after a time limit, or with more inputs) runs only what is not done.
    (tmp_path / "inputs" / "c.dat").write_text("")
    text = batch()
    assert "pmrun exit 0" in text, text
    assert len(logged()) == 3 and set(first) < set(logged())
    assert_clean(c)


def _start_sleeping(c: RealCluster, nodes: int, ranks: int, *pmrun: str
                    ) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["salloc", "--quiet", f"-N{nodes}", f"-n{ranks}", sys.executable, "-m", "pm", *pmrun,
         "-n", str(ranks), "sleep", "300"], env=env_for(c), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sleeping = sum(1 for procs in c.leftovers().values() for p in procs
                       if p.endswith("sleep 300 "))
        if sleeping == ranks:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"ranks did not start (rc {proc.returncode}): {out}\n{err}")


def test_cancelled_allocation_ends_the_job(slurm_cluster: RealCluster) -> None:
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8)
    jobid = c.queue()[0].split()[0]
    c.run(["scancel", jobid])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CANCELLED, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"pmrun: Slurm cancelled the job step {jobid}.0"], err
    assert_clean(c)


def _agent_pid(c: RealCluster, i: int) -> int:
    """The pid of the pmrun agent running on node ``i``."""
    for pid in c.hosts.pids(c.names[i]):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[-2:] == [b"child", b""] and any(b"pm.agent.main" in a for a in argv):
                return pid
    pytest.fail(f"no agent on {c.names[i]}: {c.leftovers()}")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not gone, not a zombie); it may go between the open and the
    read of its stat file (ESRCH then)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # (FileNotFoundError, ProcessLookupError)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still there after {timeout:g} s"
        time.sleep(0.02)


def test_cancel_seen_after_a_task_ended(slurm_cluster: RealCluster) -> None:
    """When Slurm cancels the agents' step (SIGKILL to every task), srun's "task 1:
    Killed" may reach pmrun before the first node's "*** STEP ... CANCELLED ***" line
    (another connection; a loaded machine shows it).  That order on purpose: node 1's agent
    gets the signal first.  (Slurm's SIGTERM, when it ends the job, kills no agent: see
    test_scancel_gives_the_ranks_slurm_s_grace.)"""
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8)
    jobid = c.queue()[0].split()[0]
    agent = _agent_pid(c, 1)
    os.kill(agent, signal.SIGKILL)  # what node 1's slurmstepd does first
    _wait_dead(agent, 10)
    c.run(["scancel", f"{jobid}.0"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CANCELLED, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"pmrun: Slurm cancelled the job step {jobid}.0"], err
    assert_clean(c)


def test_a_killed_agent_is_named(slurm_cluster: RealCluster) -> None:
    """An agent killed by someone else than Slurm: named from srun's line once Slurm had
    time to say it ended the job and did not (pm.bootstrap.slurm.SIGNAL_GRACE), not after
    the heartbeat (a minute here)."""
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8, "--heartbeat", "60")
    agent = _agent_pid(c, 1)
    t0 = time.monotonic()
    os.kill(agent, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 255, err
    first = next(line for line in err.splitlines() if " lost" in line)
    assert first == f"pmrun: node 1 ({c.names[1]}) lost: srun: error: {c.names[1]}: task 1: " \
        "Killed", err
    assert took < 30, f"named after {took:.1f} s"
    assert_clean(c)


def test_someone_s_sigterm_to_an_agent_reaches_its_ranks(slurm_cluster: RealCluster) -> None:
    """An agent's SIGTERM from someone else than Slurm (a kill): the agent cannot tell it
    from Slurm's, and passes it to its ranks (pm.agent.step_signals); slurmctld says the job
    runs on, so their ends are what they are: the first is the job's failure, named, with
    SIGTERM's status, soon (not after the heartbeat, a minute here); no node is lost."""
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8, "--heartbeat", "60")
    agent = _agent_pid(c, 1)
    t0 = time.monotonic()
    os.kill(agent, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        rf"pmrun: rank \d+ \(node 1, {c.names[1]}\) killed by SIGTERM", lines[0]), err
    assert took < 30, f"named after {took:.1f} s"
    assert_clean(c)


def _start_waiting(c: RealCluster, go: Path, ranks: int, *pmrun: str
                   ) -> subprocess.Popen[str]:
    """pmrun in ``salloc -N4 -n{ranks}``: its ranks (all started when this returns) wait for
    the file ``go``, then say ``ok HOST``."""
    proc = subprocess.Popen(
        ["salloc", "--quiet", "-N4", f"-n{ranks}", sys.executable, "-m", "pm", *pmrun, "-n",
         str(ranks), "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; echo ok "
                                 "$(hostname)"], env=env_for(c),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sum(len(_slurm_pids_on(c, i, ("sh\0-c",))) for i in range(4)) < ranks:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_no_kill_runs_on_after_a_lost_agent(slurm_cluster: RealCluster, tmp_path: Path
                                            ) -> None:
    """srun's --no-kill: node 1's agent is killed (its ranks go with it); the agents' step
    has --no-kill too, the loss is named, and the other nodes' ranks run to their end."""
    c = slurm_cluster
    go = tmp_path / "go"
    proc = _start_waiting(c, go, 4, "--no-kill", "--heartbeat", "60")
    try:
        step = subprocess.run(["pgrep", "-f", "srun .*--no-kill .*--job-name=pm-agents"],
                              capture_output=True, text=True, timeout=30)
        assert step.stdout.strip(), "the agents' step has no --no-kill"
        agent = _agent_pid(c, 1)
        os.kill(agent, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _slurm_pids_on(c, 1, ("sh\0-c",)):  # (its ranks go with it)
            assert time.monotonic() < deadline, c.leftovers()
            time.sleep(0.05)
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # (failed: the allocation's end ends pmrun)
            for job in c.queue():
                c.run(["scancel", job.split()[0]])
            proc.communicate(timeout=60)
    assert proc.returncode == 255, err
    hosts = sorted(line.split()[1] for line in out.splitlines())
    assert hosts == [c.names[0], c.names[2], c.names[3]], out
    lost = [line for line in err.splitlines() if " lost" in line]
    assert lost == [f"pmrun: node 1 ({c.names[1]}) lost: srun: error: {c.names[1]}: task 1: "
                    "Killed"], err
    assert_clean(c)


def _sbatch_outliving_term(c: RealCluster, tmp_path: Path, sbatch: str, pmrun: str) -> str:
    """Submit a batch script (its output: ``tmp_path/job.out``) that runs ``pmrun`` and
    outlives Slurm's SIGTERM (a trap) to say how pmrun ended ("pmrun exit N"): its job id."""
    job = tmp_path / "job.sh"
    job.write_text(f"""#!/bin/sh
#SBATCH {sbatch} --output={tmp_path / "job.out"}
trap 'echo "script got TERM"' TERM
{pmrun} &
pid=$!
wait $pid
wait $pid
echo "pmrun exit $?"
""")
    res = subprocess.run(["sbatch", "--parsable", str(job)], env=env_for(c, tmp_path),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


@pytest.mark.parametrize("nodes,launcher", [(3, ""), (1, "-launcher fork ")])
def test_cancelled_batch_job_ends_pmrun_with_sigterms_status(slurm_cluster: RealCluster,
                                                             tmp_path: Path, nodes: int,
                                                             launcher: str) -> None:
    """In a batch script pmrun gets Slurm's SIGTERM itself, at about the time its agents
    do: whichever pmrun sees first, it names the cancel and ends with SIGTERM's status
    (143).  Without srun (``-launcher fork``) slurmctld tells."""
    c = slurm_cluster
    out = tmp_path / "job.out"
    jobid = _sbatch_outliving_term(c, tmp_path, f"--nodes={nodes} --ntasks={2 * nodes}",
                                   f"pmrun {launcher}sleep 300")
    deadline = time.monotonic() + 60
    while sum(1 for procs in c.leftovers().values() for p in procs
              if p.endswith("sleep 300 ")) < 2 * nodes:
        assert time.monotonic() < deadline, out.read_text() if out.exists() else "no output"
        time.sleep(0.05)
    c.run(["scancel", jobid])
    _wait_gone(c, jobid, 60)
    text = out.read_text()
    assert "pmrun exit 143" in text, text
    mine = [line for line in text.splitlines() if line.startswith("pmrun: Slurm")]
    assert mine[:1] in ([f"pmrun: Slurm cancelled the job {jobid}"],
                        [f"pmrun: Slurm cancelled the job step {jobid}.0"]), text
    assert "Traceback" not in text, text
    assert_clean(c)


def test_job_name_names_the_agents_step_and_percent_x(slurm_cluster: RealCluster,
                                                      tmp_path: Path) -> None:
    """srun's -J: the one step that starts the agents (the one pmrun's quick check started,
    not another) has the job's name, as rank 0 sees it from its node; %x in -o is it; and
    every rank's SLURM_JOB_NAME, as srun's tasks see it."""
    c = slurm_cluster
    show = ('if [ "$PMI_RANK" = 0 ]; then squeue -h -s -o "%j %i"; fi; '
            'echo "name $PMI_RANK $SLURM_JOB_NAME"')
    r = salloc(c, ["-N2", "-n2"], "-J", "myname", "-o", str(tmp_path / "out.%x"),
               "-n", "2", "sh", "-c", show)
    assert r.returncode == 0, r.stderr
    lines = sorted((tmp_path / "out.myname").read_text().splitlines())
    assert lines[1:] == ["name 0 myname", "name 1 myname"], lines
    assert len(lines) == 3 and lines[0].startswith("myname ") and \
        lines[0].endswith(".0"), lines
    assert_clean(c)


def test_cancelled_agent_step_ends_the_job(slurm_cluster: RealCluster) -> None:
    c = slurm_cluster
    proc = _start_sleeping(c, 3, 6)
    steps = c.run(["squeue", "-h", "-s", "-o", "%i %j"]).stdout.split("\n")
    step = next(line.split()[0] for line in steps if line.endswith(" pm-agents"))
    c.run(["scancel", step])  # the agents' step only: the allocation stays
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CANCELLED, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"pmrun: Slurm cancelled the job step {step}"], err
    assert_clean(c)


def test_link_down_inside_a_node_is_named(slurm_cluster: RealCluster) -> None:
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 4, "--heartbeat", "2")
    down = ["ip", "netns", "exec", c.names[3], "ip", "link", "set", "eth0"]
    try:
        subprocess.run([*down, "down"], check=True, timeout=30)
        _, err = proc.communicate(timeout=60)
    finally:
        subprocess.run([*down, "up"], check=True, timeout=30)
    assert proc.returncode == 255, err
    first = next(line for line in err.splitlines() if " lost" in line)
    assert first.startswith(f"pmrun: node 3 ({c.names[3]}) lost"), err
    assert "Traceback" not in err
    assert_clean(c)


def test_missing_interface_on_the_nodes_is_one_line(slurm_cluster: RealCluster) -> None:
    c = slurm_cluster
    # The bridge exists here, not on the nodes.
    res = salloc(c, ["-N2", "-n2"], "--iface", c.bridge, "-n", "2", "true")
    assert res.returncode == 255
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        rf"pmrun: node 0 \({c.names[0]}\) lost: interface '{c.bridge}': No such device",
        lines[0]), res.stderr
    assert_clean(c)


def test_a_dead_node_is_named(slurm_cluster: RealCluster) -> None:
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8)
    try:
        c.kill_node(2)  # slurmd, slurmstepd, the agent and its ranks: the node is gone
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 255, err
        # (On a loaded machine a "not joined yet" notice may come first.)
        first = next(line for line in err.splitlines() if " lost" in line)
        assert first.startswith(f"pmrun: node 2 ({c.names[2]}) lost"), err
        assert "Traceback" not in err
        c.run(["scancel", "--full", c.queue()[0].split()[0]] if c.queue() else ["true"])
    finally:
        c.restart_slurmd(2)
    assert_clean(c)


def _slurm_pids_on(c: RealCluster, i: int, what: tuple[str, ...]) -> list[int]:
    """Pids of node ``i``'s processes whose command starts with one of ``what``."""
    out = []
    for pid in c.hosts.pids(c.names[i]):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(tuple(
                    w.encode() for w in what)):
                out.append(pid)
    return out


def _rank_shells(c: RealCluster, script: Path) -> list[int]:
    """Pids of the shells running ``script`` on whichever nodes the job got, not the copies
    of themselves they fork to run ``sleep`` (whose parent is such a shell)."""
    prefix = f"/bin/bash\0{script}".encode()
    shells = [pid for i in range(len(c.names)) for pid in _slurm_pids_on(c, i, (prefix.decode(),))]
    def parent(pid: int) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return 0
    return [pid for pid in shells if parent(pid) not in shells]


def _ours_left(c: RealCluster) -> dict[str, list[str]]:
    """What pmrun left on the nodes (agents, ranks): Slurm's own processes aside."""
    return {ns: procs for ns, procs in
            ((ns, [p for p in procs if "slurmstepd" not in p]) for ns, procs in
             c.leftovers().items()) if procs}


def _wait_ours_gone(c: RealCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (left := _ours_left(c)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"left on the nodes: {left}"


def test_job_outlives_a_killed_slurmd(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    """Only slurmd dies on node 2: its step (slurmstepd, the agent, the ranks) goes on,
    and the job ends as it would have."""
    c = slurm_cluster
    go = tmp_path / "go"
    proc = _start_waiting(c, go, 8)
    try:
        os.kill(c.slurm_pids()[f"slurmd {c.names[2]}"], signal.SIGKILL)
        go.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert [line.split()[0] for line in out.splitlines()] == ["ok"] * 8, out
        assert not [line for line in err.splitlines() if line.strip()], err
        _wait_ours_gone(c, 20)
    finally:
        c.restart_slurmd(2)
    assert_clean(c)


@pytest.mark.timeout(240)
def test_killed_slurmd_ends_the_job_when_slurm_says_the_node_failed(
        slurm_cluster: RealCluster) -> None:
    """slurmd dies and the job runs on: once slurmctld declares the node down
    (SlurmdTimeout, 30 s here) srun says so and pmrun names the node."""
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8)
    try:
        os.kill(c.slurm_pids()[f"slurmd {c.names[2]}"], signal.SIGKILL)
        _, err = proc.communicate(timeout=150)
        # (salloc says "Node failure" too.)  Which of Slurm's two ways of saying it comes
        # first is Slurm's timing: srun's error (pmrun names the node, 255), or the step's
        # cancellation (SIGTERM: 143).
        lines = [line for line in err.splitlines() if line.startswith("pmrun")]
        if proc.returncode == 255:
            assert lines[0] == f"pmrun: node 2 ({c.names[2]}) lost: srun: error: Node " \
                f"failure on {c.names[2]}", err
        else:
            assert proc.returncode == 143, err
            assert re.fullmatch(r"pmrun: Slurm cancelled the job step \d+\.\d+ \(node failure, "
                                r"see slurmctld log for details\)", lines[0]), err
        assert "Traceback" not in err
        _wait_ours_gone(c, 20)
    finally:
        c.restart_slurmd(2)
    assert_clean(c)


def test_killed_slurmd_and_slurmstepd_are_named_at_once(slurm_cluster: RealCluster) -> None:
    """slurmd and the step's slurmstepd die on node 2, its agent lives: the agent sees its
    stdin close and says so before it leaves; pmrun names the node at once (not after the
    heartbeat, a minute here)."""
    c = slurm_cluster
    proc = _start_sleeping(c, 4, 8, "--heartbeat", "60")
    try:
        t0 = time.monotonic()
        for pid in _slurm_pids_on(c, 2, ("slurmd", "slurmstepd")):
            os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
        assert proc.returncode == 255, err
        first = next(line for line in err.splitlines() if " lost" in line)
        assert first == f"pmrun: node 2 ({c.names[2]}) lost: {STDIN_LOST}", err
        assert "Traceback" not in err
        assert took < 30, f"named after {took:.1f} s"
        _wait_ours_gone(c, 20)
    finally:
        c.restart_slurmd(2)
    assert_clean(c)


SPAWN_PROGRAM = """
    import os, sys
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL:
        inter = MPI.COMM_WORLD.Spawn(sys.executable, [__file__], maxprocs=2)
        root = MPI.ROOT if MPI.COMM_WORLD.rank == 0 else MPI.PROC_NULL
        names = inter.gather(None, root=root)
        if MPI.COMM_WORLD.rank == 0:
            print("children on", ",".join(sorted(names)), flush=True)
        inter.Disconnect()
    else:
        parent.gather(os.uname().nodename, root=0)
        parent.Disconnect()
"""


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_salloc_spawn_places_children_on_the_nodes(slurm_cluster: RealCluster,
                                                   tmp_path: Path) -> None:
    c = slurm_cluster
    prog = script(tmp_path, "spawn.py", SPAWN_PROGRAM)
    res = salloc(c, ["-N2", "-n2"], "-usize", "4", sys.executable, str(prog))
    assert res.returncode == 0, res.stderr
    assert f"children on {c.names[0]},{c.names[1]}" in res.stdout, res.stdout
    assert_clean(c)


def _wait_gone(c: RealCluster, jobid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while c.run(["squeue", "-h", "-j", jobid]).stdout.strip():
        assert time.monotonic() < deadline, f"job {jobid} still queued after {timeout:g} s"
        time.sleep(0.2)


@pytest.mark.timeout(330)
def test_time_limit_of_an_sbatch_job(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    out = tmp_path / "job.out"
    job = tmp_path / "job.sh"
    # Slurm's shortest limit is a minute; it checks limits every 30 s (KillWait=2 here).
    job.write_text(f"""#!/bin/sh
#SBATCH --nodes=2 --ntasks=4 --time=1 --output={out}
date +"start %s"
pmrun sleep 300
echo "pmrun exit $?"
""")
    t0 = time.time()
    res = subprocess.run(["sbatch", "--parsable", str(job)], env=env_for(c, tmp_path),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    jobid = res.stdout.strip().split(";")[0]
    # (+60 s: slurmstepd waits for the batch step's zombies, which the test session reaps.)
    _wait_gone(c, jobid, 280)
    text = out.read_text() + f"\n(submitted {t0:.0f}, gone {time.time():.0f})"
    mine = [line for line in text.splitlines() if line.startswith("pmrun")]
    assert f"pmrun: Slurm ended the job {jobid}: time limit reached" in mine \
        or f"pmrun: Slurm ended the job step {jobid}.0: time limit reached" in mine, text
    assert "Traceback" not in text
    assert_clean(c)


#: A rank of the signal tests: says (on stdout and in DIR/got.RANK) the USR1/USR2/ALRM it gets,
#: ends with 3 on TERM, and otherwise runs until DIR/stop exists; DIR/ready.RANK once its
#: traps are set.
SIGNAL_RANK = """#!/bin/bash
d={dir}
r=$PMI_RANK
trap 'echo "rank $r got USR1"; echo USR1 >> $d/got.$r' USR1
trap 'echo "rank $r got USR2"; echo USR2 >> $d/got.$r' USR2
trap 'echo "rank $r got ALRM"; echo ALRM >> $d/got.$r' ALRM
trap 'echo "rank $r got TERM"; exit 3' TERM
echo "ready $r"; : > $d/ready.$r
while [ ! -e $d/stop ]; do sleep 0.1; done
echo "rank $r ends"
"""

#: The same in Python, whose handler runs for every signal that arrives (bash's traps may
#: run once for two that come during one command).
COUNTING_RANK = """
import os, signal, sys, time
d, r = sys.argv[1], os.environ["PMI_RANK"]
def got(signum, frame):
    with open(f"{d}/got.{r}", "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGUSR1, got)
signal.signal(signal.SIGUSR2, got)
open(f"{d}/ready.{r}", "w").close()
while not os.path.exists(f"{d}/stop"):
    time.sleep(0.05)
"""


def _signal_rank(tmp_path: Path) -> Path:
    rank = tmp_path / "rank.sh"
    rank.write_text(SIGNAL_RANK.format(dir=tmp_path))
    rank.chmod(0o755)
    return rank


def _got(tmp_path: Path, ranks: int) -> list[list[str]]:
    """What each rank said it got, in order."""
    return [(tmp_path / f"got.{r}").read_text().split() if (tmp_path / f"got.{r}").exists()
            else [] for r in range(ranks)]


def _wait_ready(tmp_path: Path, ranks: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready.{r}").exists() for r in range(ranks)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def _wait_got(tmp_path: Path, ranks: int, count: int, proc: subprocess.Popen[str],
              then: str = "") -> None:
    """Until every rank said it got ``count`` signals (and ``then`` among them)."""
    deadline = time.monotonic() + 30
    while not all(len(g) >= count and (not then or then in g) for g in _got(tmp_path, ranks)):
        assert proc.poll() is None and time.monotonic() < deadline, \
            (_got(tmp_path, ranks), proc.communicate())
        time.sleep(0.05)


def _salloc_popen(c: RealCluster, opts: list[str], *pmrun: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["salloc", "--quiet", *opts, sys.executable, "-m", "pm", *pmrun],
                            env=env_for(c), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def _end(c: RealCluster, proc: subprocess.Popen[str]) -> None:
    """A test that failed half-way: the allocation's end ends pmrun."""
    if proc.poll() is None:
        for job in c.queue():
            if job.strip():
                c.run(["scancel", job.split()[0]])
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_scancel_signal_reaches_the_ranks_and_the_job_runs_on(slurm_cluster: RealCluster,
                                                              tmp_path: Path) -> None:
    """``scancel --signal=USR1 JOB`` signals the step's tasks, pmrun's agents: each passes it
    to its ranks and runs on, as srun's tasks would get it (twice for two scancels); the
    agents are not named lost.  SIGALRM too, which srun passes on and whose default action
    would end an agent."""
    c = slurm_cluster
    proc = _salloc_popen(c, ["-N2", "-n4"], str(_signal_rank(tmp_path)))
    try:
        _wait_ready(tmp_path, 4, proc)
        jobid = c.queue()[0].split()[0]
        for count, sig in enumerate(("USR1", "USR1", "USR2", "ALRM"), 1):
            c.run(["scancel", f"--signal={sig}", jobid], check=True)
            _wait_got(tmp_path, 4, count, proc)
        (tmp_path / "stop").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        _end(c, proc)
    assert proc.returncode == 0, err
    assert _got(tmp_path, 4) == [["USR1", "USR1", "USR2", "ALRM"]] * 4, (out, err)
    assert sorted(line for line in out.splitlines() if " got " in line) == sorted(
        f"rank {r} got {s}" for r in range(4) for s in ("USR1", "USR1", "USR2", "ALRM")), out
    assert "lost" not in err and "Traceback" not in err, err
    assert_clean(c)


def test_batch_and_full_scancel_signal_reach_the_ranks(slurm_cluster: RealCluster,
                                                      tmp_path: Path) -> None:
    """A batch script that is pmrun (``exec pmrun``): ``scancel --batch --signal`` and
    ``--full`` signal the batch step alone (its shell, or its whole process group: pmrun
    either way; not the other steps, pmrun's agents'), and pmrun passes it on: each rank
    gets it once; the steps' USR2 after it, from the agents."""
    c = slurm_cluster
    prog = script(tmp_path, "count.py", COUNTING_RANK)
    out = tmp_path / "job.out"
    job = tmp_path / "job.sh"
    job.write_text(f"#!/bin/sh\n#SBATCH --nodes=2 --ntasks=4 --output={out}\n"
                   f"exec pmrun {sys.executable} {prog} {tmp_path}\n")
    res = subprocess.run(["sbatch", "--parsable", str(job)], env=env_for(c, tmp_path),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    jobid = res.stdout.strip().split(";")[0]

    def wait(pred: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not pred():
            assert time.monotonic() < deadline, \
                f"{what}: {_got(tmp_path, 4)} {out.read_text() if out.exists() else ''}"
            time.sleep(0.05)

    try:
        wait(lambda: all((tmp_path / f"ready.{r}").exists() for r in range(4)), "ready")
        for count, how in enumerate(("--batch", "--full"), 1):
            c.run(["scancel", how, "--signal=USR1", jobid], check=True)
            wait(lambda n=count: all(len(g) >= n for g in _got(tmp_path, 4)), f"USR1 {how}")
        c.run(["scancel", "--signal=USR2", jobid], check=True)
        wait(lambda: all(g[-1:] == ["SIGUSR2"] for g in _got(tmp_path, 4)), "USR2")
        (tmp_path / "stop").touch()
        _wait_gone(c, jobid, 60)
    finally:
        if c.run(["squeue", "-h", "-j", jobid]).stdout.strip():
            c.run(["scancel", jobid])
    text = out.read_text()
    assert _got(tmp_path, 4) == [["SIGUSR1", "SIGUSR1", "SIGUSR2"]] * 4, text
    assert "lost" not in text and "Traceback" not in text, text
    assert_clean(c)


def test_a_signal_to_pmrun_s_step_and_its_agents_reaches_each_rank_once(
        slurm_cluster: RealCluster, tmp_path: Path) -> None:
    """pmrun run as a task of a step (``srun pmrun``): ``scancel --signal=USR1 JOB`` signals
    every step, pmrun's and its agents': pmrun passes it on, the agents have it from Slurm
    too, and each rank gets it once per scancel, as srun's tasks do."""
    c = slurm_cluster
    prog = script(tmp_path, "count.py", COUNTING_RANK)
    proc = subprocess.Popen(
        ["salloc", "--quiet", "-N2", "-n4", "srun", "-N1", "-n1", "--overlap", sys.executable,
         "-m", "pm", "-n", "4", sys.executable, str(prog), str(tmp_path)],
        env=env_for(c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        _wait_ready(tmp_path, 4, proc)
        jobid = c.queue()[0].split()[0]
        for count in (1, 2):
            c.run(["scancel", "--signal=USR1", jobid], check=True)
            _wait_got(tmp_path, 4, count, proc)
        c.run(["scancel", "--signal=USR2", jobid], check=True)  # (after it, a late USR1)
        _wait_got(tmp_path, 4, 3, proc, then="SIGUSR2")
        (tmp_path / "stop").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        _end(c, proc)
    assert proc.returncode == 0, err
    assert _got(tmp_path, 4) == [["SIGUSR1", "SIGUSR1", "SIGUSR2"]] * 4, err
    assert "lost" not in err and "Traceback" not in err, err
    assert_clean(c)


def test_signal_before_the_allocation_s_time_limit(slurm_cluster: RealCluster,
                                                   tmp_path: Path) -> None:
    """srun's --signal without --timeout inside an allocation with a time limit: before
    the job's end (``salloc -t 1``: 60 s, the signal 57 s before it); without a limit,
    refused in one line that says so."""
    c = slurm_cluster
    proc = _salloc_popen(c, ["-N2", "-n2", "-t", "1"], "--signal=USR1@57",
                         str(_signal_rank(tmp_path)))
    try:
        _wait_ready(tmp_path, 2, proc)
        t0 = time.monotonic()
        _wait_got(tmp_path, 2, 1, proc)
        took = time.monotonic() - t0
        (tmp_path / "stop").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        _end(c, proc)
    assert proc.returncode == 0, err
    assert _got(tmp_path, 2) == [["USR1"]] * 2
    assert took < 20, f"the signal came {took:.1f} s after the ranks started"
    res = salloc(c, ["-N1", "-n1"], "--signal=USR1@30", "true")
    assert res.returncode == 2 and re.fullmatch(
        r"pmrun: --signal: a signal before the time limit needs a time limit: Slurm job \d+ "
        r"has none \(its TimeLimit is UNLIMITED; --timeout SECONDS, -t MINUTES\)\n",
        res.stderr), res.stderr
    # The API's signal_before_end without a timeout: the same, before the job's end.
    api = ("import signal, sys, pm; r = pm.run(['sh', '-c', 'trap \"echo got USR1; exit 0\" "
           "USR1; while :; do sleep 0.1; done'], signal_before_end=(signal.SIGUSR1, 57)); "
           "print('status', r.returncode)")
    t0 = time.monotonic()
    res = subprocess.run(["salloc", "--quiet", "-N1", "-n1", "-t", "1", sys.executable, "-c",
                          api], env=env_for(c), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout) == (0, "got USR1\nstatus 0\n"), res.stderr
    assert time.monotonic() - t0 < 20
    assert_clean(c)


def _state(pid: int) -> str:
    """The process state letter of ``pid`` ("T" stopped), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_suspended_job_is_resumed_not_lost(slurm_cluster: RealCluster, tmp_path: Path) -> None:
    """``scontrol suspend``: the ranks stop with their agents (Slurm's SIGTSTP to them); the
    head, not suspended, does not take the silent nodes for lost while slurmctld says the
    job is suspended (a line at -v), nor do the agents, stopped longer than the heartbeat,
    take their parent's silence for its loss; ``scontrol resume`` continues everything.
    pmrun's --timeout does not count the suspended time, as Slurm's own limits do not."""
    c = slurm_cluster
    rank = _signal_rank(tmp_path)
    t0 = time.monotonic()
    proc = _salloc_popen(c, ["-N2", "-n4"], "-v", "--heartbeat", "2", "--timeout", "12",
                         str(rank))
    err_lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        _wait_ready(tmp_path, 4, proc)
        ranks = _rank_shells(c, rank)
        assert len(ranks) == 4, ranks
        jobid = c.queue()[0].split()[0]
        c.run(["scontrol", "suspend", jobid], check=True)
        held = time.monotonic()
        deadline = held + 30
        while not all(_state(pid) == "T" for pid in ranks):
            assert time.monotonic() < deadline, [_state(pid) for pid in ranks]
            time.sleep(0.05)
        # The head asks slurmctld once a node is silent for the heartbeat (2 s here).
        while not any("suspended; waiting" in line for line in err_lines):
            assert proc.poll() is None and time.monotonic() < deadline, err_lines
            time.sleep(0.05)
        c.run(["scontrol", "resume", jobid], check=True)
        resumed = time.monotonic()
        while any(_state(pid) == "T" for pid in ranks):
            assert time.monotonic() < resumed + 30, [_state(pid) for pid in ranks]
            time.sleep(0.05)
        proc.wait(timeout=60)  # (stderr is the reader's)
        ended = time.monotonic()
        assert proc.stdout is not None
        out = proc.stdout.read()
    finally:
        _end(c, proc)
        reader.join(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    err = "".join(err_lines)
    assert proc.returncode == 124, err  # (--timeout's, not a lost node's 255)
    assert "lost" not in err and "no sign of life" not in err, err
    assert "pmrun: job timed out after 12 s" in err, err
    assert sorted(line for line in out.splitlines() if " got " in line) == [
        f"rank {r} got TERM" for r in range(4)], out
    # 12 s of run time, the suspension not counted (Slurm's run time is in whole seconds).
    assert ended - t0 >= 12 + (resumed - held) - 2, (ended - t0, resumed - held)
    assert_clean(c)


#: A rank that saves a checkpoint when its job is ended (``checkpoint.py DIR SECONDS``): on
#: each SIGTERM it says so in DIR/got.RANK, works SECONDS, writes DIR/checkpoint.RANK (and
#: says so on stdout) and exits; DIR/ready.RANK once its handler is set.
CHECKPOINT_RANK = """
import os, signal, sys, time
d, secs, r = sys.argv[1], float(sys.argv[2]), os.environ["PMI_RANK"]
def term(signum, frame):
    with open(f"{d}/got.{r}", "a") as f:
        f.write("SIGTERM\\n")
    time.sleep(secs)  # (the checkpoint's work)
    with open(f"{d}/checkpoint.{r}", "w") as f:
        f.write("saved\\n")
    print(f"rank {r} saved its checkpoint", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(f"{d}/ready.{r}", "w").close()
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("how", ["salloc", "sbatch", "sbatch -launcher fork"])
def test_scancel_gives_the_ranks_slurm_s_grace(slurm_cluster: RealCluster, tmp_path: Path,
                                               how: str) -> None:
    """``scancel JOB``: slurmd sends every step SIGTERM, and SIGKILL only KillWait seconds
    later (5 s here: slurmd's floor).  As srun's tasks would, every rank gets SIGTERM once,
    and its handler the time to save a checkpoint and exit (a second here): its agent
    lives on meanwhile (the rank's output reaches pmrun).  pmrun names Slurm's cancel, as
    before, with SIGTERM's status; nothing is left.  In a batch script pmrun has Slurm's
    SIGTERM too (the batch step's), and passes it on: with its agents' step (which has its
    own), or to ranks it started itself (``-launcher fork``, one node), whose checkpoint
    takes longer than pmrun's own grace when it ends a job (KILL_GRACE, 2 s): 3 s.  (srun,
    which gets the job's end too, waits KillWait + 2 s for its tasks: 4 s here.)"""
    c = slurm_cluster
    prog = script(tmp_path, "checkpoint.py", CHECKPOINT_RANK)
    nodes, secs = (1, "3") if "fork" in how else (2, "1")
    if how == "salloc":
        proc = _salloc_popen(c, ["-N2", "-n4"], sys.executable, str(prog), str(tmp_path),
                             secs)
        try:
            _wait_ready(tmp_path, 4, proc)
            jobid = c.queue()[0].split()[0]
            c.run(["scancel", jobid], check=True)
            out, err = proc.communicate(timeout=60)
        finally:
            _end(c, proc)
        status = proc.returncode
        said = [line for line in err.splitlines() if line.strip()]
    else:
        job_out = tmp_path / "job.out"
        # (The ranks' output and pmrun's own lines go to files of their own.)
        jobid = _sbatch_outliving_term(
            c, tmp_path, f"--nodes={nodes} --ntasks=4",
            f"pmrun{how.removeprefix('sbatch')} -n 4 {sys.executable} {prog} {tmp_path} "
            f"{secs} > {tmp_path}/out 2> {tmp_path}/err")
        try:
            deadline = time.monotonic() + 60
            while not all((tmp_path / f"ready.{r}").exists() for r in range(4)):
                assert time.monotonic() < deadline, \
                    job_out.read_text() if job_out.exists() else "no output"
                time.sleep(0.05)
            c.run(["scancel", jobid], check=True)
            _wait_gone(c, jobid, 60)
        finally:
            if c.run(["squeue", "-h", "-j", jobid]).stdout.strip():
                c.run(["scancel", jobid])
        text = job_out.read_text()
        out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
        assert "pmrun exit " in text, (text, err)
        status = int(text.split("pmrun exit ")[1].split()[0])
        said = [line for line in err.splitlines() if line.strip()]
    saved = [r for r in range(4) if (tmp_path / f"checkpoint.{r}").exists()]
    assert saved == [0, 1, 2, 3], (out, err)
    assert _got(tmp_path, 4) == [["SIGTERM"]] * 4, (out, err)
    assert sorted(out.splitlines()) == [f"rank {r} saved its checkpoint" for r in range(4)], \
        (out, err)
    assert status == EXIT_CANCELLED, err
    words = [[f"pmrun: Slurm cancelled the job step {jobid}.0"]]
    if how != "salloc":  # (pmrun's own SIGTERM: slurmctld's word may come first)
        words.append([f"pmrun: Slurm cancelled the job {jobid}"])
    assert said in words, err
    assert_clean(c)


def test_ranks_that_outlive_slurm_s_grace_are_killed(slurm_cluster: RealCluster,
                                                     tmp_path: Path) -> None:
    """Ranks that take Slurm's SIGTERM and run on: they run on until Slurm's grace is over
    (KillWait, 2 s here; srun gives up waiting for its step 2 s later, slurmd kills at 5 s),
    not a moment's grace of pmrun's own; then they are killed, pmrun names Slurm's cancel
    alone (not srun's words about the step it waited for), and nothing is left."""
    c = slurm_cluster
    rank = tmp_path / "rank.sh"
    rank.write_text(f"""#!/bin/bash
trap 'echo TERM >> {tmp_path}/got.$PMI_RANK' TERM
: > {tmp_path}/ready.$PMI_RANK
# (a new file renamed over the last: a kill while date writes leaves the last whole)
a={tmp_path}/alive.$PMI_RANK
while :; do date +%s.%N > $a.new && mv $a.new $a; sleep 0.1; done
""")
    rank.chmod(0o755)
    proc = _salloc_popen(c, ["-N2", "-n4"], str(rank))
    try:
        _wait_ready(tmp_path, 4, proc)
        jobid = c.queue()[0].split()[0]
        cancelled_at = time.time()
        c.run(["scancel", jobid], check=True)
        _, err = proc.communicate(timeout=60)
    finally:
        _end(c, proc)
    assert proc.returncode == EXIT_CANCELLED, err
    lines = [line for line in err.splitlines() if line.strip() and line != "Terminated"]
    assert lines == [f"pmrun: Slurm cancelled the job step {jobid}.0"], err
    assert _got(tmp_path, 4) == [["TERM"]] * 4, err
    lived = [float((tmp_path / f"alive.{r}").read_text()) - cancelled_at for r in range(4)]
    assert min(lived) > 1.5, lived
    assert_clean(c)
