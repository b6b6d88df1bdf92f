"""Topology end to end: what ranks under pmrun get from the agent's discovery.

Ranks find a readable hwloc XML in ``HWLOC_XMLFILE`` whose cores are this
node's; an MPICH rank asks for ``PMI_hwloc_xmlfile`` and reads the file it
is given (seen with strace); ``--bind-to core`` gives disjoint single-core
cpusets, with hwloc or its sysfs fallback; the file is gone after the job;
``PM_TOPOLOGY_SHARE=0`` turns the hand-over off; ``pmrun --topology``
prints the node's summary.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from client_util import results, write_program
from launch_util import cmdline, pmrun_env, read_lines, wait_until

from pm.agent.topology import Topology, discover, summary

pytestmark = pytest.mark.timeout(120)

#: What a rank sees: the XML file (readable? how many cores in it?) and its cpus.
PROBE = r'''
import xml.etree.ElementTree as ET

path = os.environ.get("HWLOC_XMLFILE")
cores = None
if path:
    with open(path, "rb") as f:
        root = ET.fromstring(f.read())
    cores = sum(1 for o in root.iter("object") if o.get("type") == "Core")
report(rank=int(os.environ["PMI_RANK"]), xml=path, thissystem=os.environ.get("HWLOC_THISSYSTEM"),
       cores=cores, cpus=sorted(os.sched_getaffinity(0)), agent=os.getppid())
if os.environ.get("WAIT"):
    import signal
    signal.pause()
'''


@pytest.fixture(scope="module")
def hw() -> Topology:
    topo = discover()
    assert topo.source == "hwloc", "libhwloc.so.15 must be loadable for these tests"
    return topo


def _probe(pmrun: Any, tmp_path: Path, n: int, *opts: str,
           env: dict[str, str] | None = None) -> dict[int, dict[str, Any]]:
    prog = write_program(tmp_path, "probe.py", PROBE)
    proc = pmrun("-n", str(n), *opts, "python", str(prog), env=env)
    assert proc.returncode == 0, proc.stderr
    got = results(proc.stdout)
    assert sorted(got) == list(range(n)), proc.stderr
    return got


def test_ranks_get_a_readable_xml_of_this_node_gone_after_the_job(
        pmrun: Any, tmp_path: Path, hw: Topology) -> None:
    got = _probe(pmrun, tmp_path, 3, "--local-nodes", "2")
    paths = {res["xml"] for res in got.values()}
    assert None not in paths and len(paths) == 2, paths  # one private copy per node
    for res in got.values():
        assert res["cores"] == len(hw.cores)
        assert res["thissystem"] == "1"
    for path in paths:
        assert not os.path.exists(path), f"{path} outlived its job"


def test_xml_gone_after_ctrl_c(pmrun_popen: Any, tmp_path: Path) -> None:
    prog = write_program(tmp_path, "probe.py", PROBE)
    p = pmrun_popen("-n", "2", "python", str(prog), env={"WAIT": "1"})
    assert p.stdout is not None
    got = results(b"".join(read_lines(p.stdout, 2, 60)).decode())
    path = got[0]["xml"]
    assert path and os.path.exists(path)
    assert stat_mode(path) == 0o600
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert not os.path.exists(path)


def test_xml_of_a_killed_agent_removed_by_cleanup(pmrun_popen: Any, tmp_path: Path) -> None:
    prog = write_program(tmp_path, "probe.py", PROBE)
    p = pmrun_popen("-n", "2", "--local-nodes", "2", "python", str(prog), env={"WAIT": "1"})
    assert p.stdout is not None
    got = results(b"".join(read_lines(p.stdout, 2, 60)).decode())
    path, agent = got[1]["xml"], got[1]["agent"]
    assert path and os.path.exists(path)
    os.kill(agent, signal.SIGKILL)
    p.communicate(timeout=30)
    assert not os.path.exists(got[0]["xml"])  # the live agent removed its own
    wait_until(lambda: cmdline(agent) is None, 10, "the killed agent to be gone")
    out = subprocess.run([sys.executable, "-m", "pm.agent.main", "--cleanup"], env=pmrun_env(),
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert not os.path.exists(path)
    assert f"removed {path}" in out or not out  # (another agent may have swept it first)


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def test_sharing_off_gives_no_xml(pmrun: Any, tmp_path: Path) -> None:
    got = _probe(pmrun, tmp_path, 2, "-genv", "PM_TOPOLOGY_SHARE", "0")
    assert all(res["xml"] is None and res["thissystem"] is None for res in got.values())


@pytest.mark.parametrize("hidden", [False, True], ids=["hwloc", "hwloc-hidden"])
def test_bind_to_core_gives_disjoint_single_cores(pmrun: Any, tmp_path: Path, hw: Topology,
                                                  hidden: bool) -> None:
    if len(hw.cores) < 2:
        pytest.skip("needs two cores")
    env = {"PM_NO_HWLOC": "1"} if hidden else None
    got = _probe(pmrun, tmp_path, 2, "--bind-to", "core", env=env)
    sets = [frozenset(got[r]["cpus"]) for r in range(2)]
    assert not sets[0] & sets[1]
    for s in sets:
        assert s in hw.cores, f"{sorted(s)} is not one core of {hw.cores}"
    if hidden:
        # The sysfs fallback has no XML to hand out.
        assert all(res["xml"] is None for res in got.values())
    else:
        assert all(res["cores"] == len(hw.cores) for res in got.values())


@pytest.mark.mpi
def test_mpich_rank_gets_and_reads_pmi_hwloc_xmlfile(pmrun: Any, tmp_path: Path,
                                                     c_hello: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    cmd = (f'exec {strace} -f -qq -s 512 -e trace=read,write,openat '
           f'-o {tmp_path}/trace.$PMI_RANK {c_hello}')
    proc = pmrun("-n", "2", "sh", "-c", cmd)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    assert "hello from 2 ranks" in proc.stdout
    for r in range(2):
        trace = (tmp_path / f"trace.{r}").read_text()
        assert re.search(r'write\(\d+, "cmd=get kvsname=\S+ key=PMI_hwloc_xmlfile\\n"', trace)
        m = re.search(r'"cmd=get_result rc=0 value=(\S+\.xml)\\n"', trace)
        assert m, "no PMI_hwloc_xmlfile answer in the trace"
        path = m.group(1)
        assert re.search(rf'openat\(AT_FDCWD, "{re.escape(path)}", O_RDONLY[^)]*\) = \d+', trace), \
            f"MPICH did not open {path}"
        assert not os.path.exists(path)


def test_pmrun_topology_prints_the_summary(pmrun: Any, hw: Topology) -> None:
    proc = pmrun("--topology")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == summary(hw)
    assert f"cores:      {len(hw.cores)} " in proc.stdout

