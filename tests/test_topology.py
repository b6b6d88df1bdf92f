"""pm.agent.topology against the real libhwloc, the real /sys and the hwloc tools."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pm.agent import topology
from pm.agent.topology import (
    Topology,
    TopologyError,
    discover,
    discover_async,
    format_cpuset,
    parse_cpulist,
    summary,
    write_xml,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


def _usable_from_sys() -> frozenset[int]:
    online = parse_cpulist((SYS_CPU / "online").read_text())
    return online & frozenset(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def hw() -> Topology:
    topo = discover()
    assert topo.source == "hwloc", "libhwloc.so.15 must be loadable for these tests"
    return topo


# ---------------------------------------------------------------- cpu lists


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ([], ""),
        ([5], "5"),
        ([0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"),
        ([11, 10, 3, 2, 1, 0, 8, 8], "0-3,8,10-11"),
        ([0, 2, 4], "0,2,4"),
        (range(64), "0-63"),
    ],
)
def test_format_cpuset(cpus: list[int], text: str) -> None:
    assert format_cpuset(cpus) == text
    assert parse_cpulist(text) == frozenset(cpus)


@pytest.mark.parametrize("bad", ["a", "3-1", "1,,x", "-2", "0-"])
def test_parse_cpulist_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_cpulist(bad)


# ---------------------------------------------------------------- hwloc facade


def test_import_does_not_load_cffi_or_hwloc() -> None:
    code = (
        "import sys, pm.agent.topology\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('cffi' in sys.modules, 'libhwloc' in maps)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]


def test_facade_counts_match_sys(hw: Topology) -> None:
    usable = _usable_from_sys()
    assert hw.pus == tuple(sorted(usable))
    core_ids = {
        (
            (SYS_CPU / f"cpu{c}/topology/physical_package_id").read_text().strip(),
            (SYS_CPU / f"cpu{c}/topology/core_id").read_text().strip(),
        )
        for c in usable
    }
    assert len(hw.cores) == len(core_ids)
    packages = {
        (SYS_CPU / f"cpu{c}/topology/physical_package_id").read_text().strip() for c in usable
    }
    assert len(hw.packages) == len(packages)
    node_dirs = sorted(SYS_NODE.glob("node[0-9]*"))
    with_cpus = [d for d in node_dirs if parse_cpulist((d / "cpulist").read_text()) & usable]
    assert len(hw.numa_nodes) == max(len(with_cpus), 1)
    assert len(with_cpus) <= len(node_dirs)
    assert hw.memory_bytes > 0
    assert hw.xml is not None


def test_levels_partition_the_pus(hw: Topology) -> None:
    every = frozenset(hw.pus)
    for level in (hw.cores, hw.numa_nodes, hw.packages):
        assert frozenset().union(*level) == every
        assert sum(len(s) for s in level) == len(every)  # pairwise disjoint
    for core in hw.cores:  # a core lies inside exactly one package
        assert sum(core <= p for p in hw.packages) == 1


def test_xml_export_parses_and_matches(hw: Topology) -> None:
    assert hw.xml is not None
    root = ET.fromstring(hw.xml)
    assert root.tag == "topology"
    objects = list(root.iter("object"))
    xml_pus = {int(o.attrib["os_index"]) for o in objects if o.get("type") == "PU"}
    xml_cores = [o for o in objects if o.get("type") == "Core"]
    assert set(hw.pus) <= xml_pus
    if frozenset(os.sched_getaffinity(0)) >= xml_pus:  # not narrowed by taskset or the like
        assert len(xml_pus) == len(hw.pus)
        assert len(xml_cores) == len(hw.cores)
    pci = Path("/sys/bus/pci/devices")
    if pci.is_dir() and any(pci.iterdir()):
        # The discovery kept I/O objects (MPICH asks hwloc for them too).
        assert any(o.get("type") == "PCIDev" for o in objects)


def test_struct_prefix_matches_the_c_header(tmp_path: Path) -> None:
    """The hand-written struct hwloc_obj prefix has the compiler's offsets."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/hwloc.h").exists():
        pytest.skip("needs a C compiler and the hwloc headers")
    hwlib = topology._load(topology.HWLOC_SONAME)
    assert isinstance(hwlib, topology._Hwloc)
    assert 0x20000 <= hwlib.version < 0x30000
    # Every field we declare, not only those we read: a missing or extra field
    # can hide in alignment padding for the ones after it.
    fields = [name for name, _ in hwlib.ffi.typeof("struct hwloc_obj").fields]
    assert fields[0] == "type" and "cpuset" in fields
    src = tmp_path / "off.c"
    src.write_text(
        "#include <hwloc.h>\n#include <stdio.h>\n#include <stddef.h>\nint main(void){\n"
        + "".join(f'printf("%zu\\n", offsetof(struct hwloc_obj, {f}));\n' for f in fields)
        + "return 0;}\n"
    )
    exe = tmp_path / "off"
    subprocess.run([cc, str(src), "-o", str(exe)], check=True, capture_output=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    compiled = [int(x) for x in run.stdout.split()]
    ours = [hwlib.ffi.offsetof("struct hwloc_obj", f) for f in fields]
    assert ours == compiled


def test_failing_hwloc_call_is_named_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("this is not a topology\n")
    monkeypatch.setenv("HWLOC_XMLFILE", str(bad))  # hwloc_topology_load now fails
    caplog.set_level(logging.INFO, logger="pm.agent.topology")
    topo = discover()
    assert topo.source == "sysfs"
    records = [r for r in caplog.records if r.name == "pm.agent.topology"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "hwloc_topology_load failed" in records[0].getMessage()


async def test_discover_async(hw: Topology) -> None:
    topo = await discover_async()
    assert topo.source == "hwloc"
    assert (topo.cores, topo.numa_nodes, topo.packages) == (hw.cores, hw.numa_nodes, hw.packages)


# ---------------------------------------------------------------- XML file


def test_write_xml_private_file(hw: Topology, tmp_path: Path) -> None:
    path = write_xml(hw, str(tmp_path), "job-7f3a")
    p = Path(path)
    assert p.parent == tmp_path
    assert "job-7f3a" in p.name
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_bytes() == hw.xml
    second = write_xml(hw, str(tmp_path), "job-7f3a")
    assert second != path  # two agents of one job on one host never share a file


def test_write_xml_errors(hw: Topology, tmp_path: Path) -> None:
    sysfs = discover(use_hwloc=False)
    with pytest.raises(TopologyError, match="no hwloc XML"):
        write_xml(sysfs, str(tmp_path), "j1")
    with pytest.raises(TopologyError, match="file name"):
        write_xml(hw, str(tmp_path), "../j1")
    with pytest.raises(TopologyError, match="cannot create"):
        write_xml(hw, str(tmp_path / "missing"), "j1")
    assert list(tmp_path.iterdir()) == []


def _hwloc_tool() -> list[str]:
    for tool in ("hwloc-info", "lstopo-no-graphics"):
        path = shutil.which(tool)
        if path is not None:
            return [path]
    pytest.skip("neither hwloc-info nor lstopo-no-graphics is installed (Debian: hwloc-nox)")


def test_hwloc_tool_reads_our_xml(hw: Topology, tmp_path: Path) -> None:
    tool = _hwloc_tool()
    path = write_xml(hw, str(tmp_path), "toolcheck")
    env = {**os.environ, "HWLOC_XMLFILE": path, "HWLOC_THISSYSTEM": "1"}
    env.pop("HWLOC_COMPONENTS", None)  # it would make hwloc ignore HWLOC_XMLFILE
    assert hw.xml is not None
    xml_root = ET.fromstring(hw.xml)
    n_cores = sum(1 for o in xml_root.iter("object") if o.get("type") == "Core")
    if tool[0].endswith("hwloc-info"):
        out = subprocess.run(tool, env=env, capture_output=True, text=True, check=True).stdout
        m = re.search(r"^\s*depth \d+:\s+(\d+) Core\b", out, re.MULTILINE)
        assert m is not None, out
        assert int(m.group(1)) == n_cores
        # Proof the file was read, not the machine: the exporting process's name.
        machine = xml_root.find("object")
        assert machine is not None
        process = next(
            i.get("value") for i in machine.iter("info") if i.get("name") == "ProcessName"
        )
        verbose = subprocess.run(
            [*tool, "-v", "--objects", "machine:0"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"ProcessName = {process}" in verbose
        assert process != "hwloc-info"
    else:
        out = subprocess.run(
            [*tool, "--only", "core"], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert len([line for line in out.splitlines() if "Core" in line]) == n_cores
    if frozenset(os.sched_getaffinity(0)) >= frozenset(
        int(o.attrib["os_index"]) for o in xml_root.iter("object") if o.get("type") == "PU"
    ):
        assert n_cores == len(hw.cores)


# ---------------------------------------------------------------- sysfs fallback


def test_fallback_by_env_matches_hwloc(
    hw: Topology, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PM_NO_HWLOC", "1")
    caplog.set_level(logging.INFO, logger="pm.agent.topology")
    fb = discover()
    assert fb.source == "sysfs"
    assert fb.xml is None
    assert fb.pus == hw.pus
    assert len(fb.cores) == len(hw.cores)
    assert set(fb.cores) == set(hw.cores)
    assert set(fb.numa_nodes) == set(hw.numa_nodes)
    assert set(fb.packages) == set(hw.packages)
    assert set(fb.l3caches) == set(hw.l3caches)
    assert fb.memory_bytes > 0
    records = [r for r in caplog.records if r.name == "pm.agent.topology"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "PM_NO_HWLOC=1" in records[0].getMessage()


def test_fallback_by_argument(hw: Topology) -> None:
    fb = discover(use_hwloc=False)
    assert fb.source == "sysfs"
    assert (fb.pus, set(fb.cores)) == (hw.pus, set(hw.cores))


def test_fallback_when_library_missing(
    hw: Topology, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(topology, "HWLOC_SONAME", "libhwloc.so.0.not-installed")
    caplog.set_level(logging.INFO, logger="pm.agent.topology")
    fb = discover()
    assert fb.source == "sysfs"
    assert set(fb.cores) == set(hw.cores)
    records = [r for r in caplog.records if r.name == "pm.agent.topology"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "libhwloc.so.0.not-installed" in records[0].getMessage()


# ---------------------------------------------------------------- summary


def test_summary_of_discovered(hw: Topology) -> None:
    text = summary(hw)
    assert "source:     hwloc" in text
    assert f"PUs:        {len(hw.pus)} (cpus {format_cpuset(hw.pus)})" in text
    assert f"cores:      {len(hw.cores)} " in text
    assert f"packages:   {len(hw.packages)}" in text


def test_summary_of_synthetic() -> None:
    cores = tuple(frozenset({c, c + 16}) for c in range(16))
    half = (frozenset().union(*cores[:8]), frozenset().union(*cores[8:]))
    topo = Topology("sysfs", tuple(range(32)), cores, half, half, (), 64 << 30, None)
    lines = summary(topo).splitlines()
    assert "  package 0: cpus 0-7,16-23" in lines
    assert "  node 1: cpus 8-15,24-31" in lines
    assert "L3 caches:  unknown" in lines
    assert "cores:      16 (2 PUs each)" in lines
    assert "PUs:        32 (cpus 0-31)" in lines
    assert "memory:     64.0 GiB (68719476736 bytes)" in lines
