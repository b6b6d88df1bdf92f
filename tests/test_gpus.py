"""--gpus-per-task (srun's, Flux's -g, Hydra's -gpus-per-proc): each rank of a node gets
its own GPUs, in the variable that named them (pm.agent.gpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PmrunRunner as Run

from pm.agent.gpus import VISIBLE, deal, node_gpus, shortage

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_gpus_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPUs a test names are the only ones (not a variable of this machine's)."""
    for var in VISIBLE:
        monkeypatch.delenv(var, raising=False)

SHOW = 'echo "$CUDA_VISIBLE_DEVICES|$ROCR_VISIBLE_DEVICES"'


def test_the_variable_set_names_the_gpus_else_the_nodes_devices(tmp_path: Path) -> None:
    none = str(tmp_path / "absent")
    assert node_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}, none, none) == (
        "CUDA_VISIBLE_DEVICES", ["2", "3"])
    uuids = "GPU-1a2b,GPU-3c4d"
    assert node_gpus({"CUDA_VISIBLE_DEVICES": uuids}, none, none) == (
        "CUDA_VISIBLE_DEVICES", uuids.split(","))
    assert node_gpus({"ROCR_VISIBLE_DEVICES": "0,1"}, none, none) == (
        "ROCR_VISIBLE_DEVICES", ["0", "1"])
    assert node_gpus({"CUDA_VISIBLE_DEVICES": ""}, none, none) is None  # (CUDA: no GPU)
    assert node_gpus({}, none, none) is None
    nvidia = tmp_path / "nvidia"
    for bus in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0"):
        (nvidia / bus).mkdir(parents=True)
    assert node_gpus({}, str(nvidia), none) == ("CUDA_VISIBLE_DEVICES", ["0", "1", "2"])
    kfd = tmp_path / "kfd"
    for node, gpu_id in (("0", "0"), ("1", "53114"), ("2", "6297")):  # node 0: the CPU
        (kfd / node).mkdir(parents=True)
        (kfd / node / "gpu_id").write_text(f"{gpu_id}\n")
    assert node_gpus({}, none, str(kfd)) == ("ROCR_VISIBLE_DEVICES", ["0", "1"])


def test_each_local_rank_gets_its_group_and_too_many_ranks_share() -> None:
    gpus = ["0", "1", "2", "3"]
    assert [deal(gpus, 1, r) for r in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    assert [deal(gpus, 2, r) for r in range(3)] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert deal(gpus, 3, 1) == ["0", "1", "2"]  # (one group of 3: the fourth is left)
    assert deal(["0"], 2, 1) == ["0"]
    assert shortage(4, 1, 4) is None and shortage(4, 2, 2) is None
    assert shortage(4, 2, 3) == "3 ranks with 2 GPUs each, 4 GPUs here: ranks share them"
    assert shortage(1, 2, 1) == "1 ranks with 2 GPUs each, 1 GPU here: ranks share them"


def test_ranks_see_their_own_gpus(pmrun: Run) -> None:
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    r = pmrun("--gpus-per-task", "1", "-n", "4", "-l", "sh", "-c", SHOW, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] 4|", "[1] 5|", "[2] 6|", "[3] 7|"]
    r = pmrun("-g", "2", "-n", "3", "-l", "sh", "-c", SHOW, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] 4,5|", "[1] 6,7|", "[2] 4,5|"]
    assert r.stderr == f"pmrun: node 0 ({os.uname().nodename}): 3 ranks with 2 GPUs each, " \
                       "4 GPUs here: ranks share them\n"
    # Without it the ranks see what pmrun's environment gives them, all of them.
    r = pmrun("-n", "2", "sh", "-c", SHOW, env=env)
    assert r.stdout.splitlines() == ["4,5,6,7|"] * 2, r.stderr


def test_each_node_deals_its_own(pmrun: Run) -> None:
    env = {"ROCR_VISIBLE_DEVICES": "0,1"}
    r = pmrun("--local-nodes", "2", "-ppn", "2", "-gpus-per-proc", "1", "-n", "4", "-l",
              "sh", "-c", SHOW, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] |0", "[1] |1", "[2] |0", "[3] |1"]


def test_a_node_without_gpus_says_so_once_and_runs(pmrun: Run) -> None:
    # (An empty CUDA_VISIBLE_DEVICES: no GPU for CUDA, and for pmrun, whatever the node has.)
    r = pmrun("--gpus-per-task", "1", "-n", "2", "sh", "-c", SHOW,
              env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["|"] * 2
    assert r.stderr.count("\n") == 1 and "no GPU here" in r.stderr, r.stderr
