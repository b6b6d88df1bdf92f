"""pmrun's own wire formats are typed records (pm.proto.record): what they carry comes back
whole, a value of the wrong shape is a ProtocolError, and agents of another protocol version
are named, not misread."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from pm.proto import tree_wire as t
from pm.proto.errors import ProtocolError
from pm.proto.plan import AgentConfig, AppPlan, JobPlan, SpawnOrigin
from pm.proto.runner import (
    MAX_DATA,
    CommandReader,
    ProbeSample,
    RunnerReader,
    TaskExit,
    TaskInput,
    TaskOutput,
    TasksEnv,
    TaskSignal,
    TaskStart,
    from_ensemble,
)

pytestmark = pytest.mark.timeout(30)

Run = Callable[..., subprocess.CompletedProcess[str]]


def _plan(**extra: object) -> JobPlan:
    return JobPlan("j1", "kvs_j1", 3, ["n1", "n2"], [2, 1], 32,
                   [AppPlan(["a.out", "-x"], 2, {"A": "1"}, "/tmp"), AppPlan(["b"], 1, {}, None)],
                   {"PATH": "/bin"}, "(vector,(0,2,1))", **extra)


def test_a_job_plan_crosses_the_tree_whole() -> None:
    plan = _plan(bootstrap={"name": "ssh", "limit": 4}, universe_size=8)
    got = t.decode(t.encode(t.Launch(plan)))
    assert isinstance(got, t.Launch) and got.plan == plan
    assert got.plan.apps[1].argv == ["b"] and got.plan.apps[0].wdir == "/tmp"
    assert got.plan.spawned is None and got.plan.app_of_rank(2) == 1
    spawned = _plan(spawned=SpawnOrigin(2, [1, 1, 0], {"k": "v"}, "kvs_j1"))
    back = t.decode(t.encode(t.SpawnLaunch(2, spawned)))
    assert isinstance(back, t.SpawnLaunch) and back.plan.spawned == spawned.spawned
    assert back.plan.spawned is not None and back.plan.spawned.placement == [1, 1, 0]


def test_defaults_are_fresh_per_record() -> None:
    a, b = _plan(), _plan()
    a.bootstrap["name"] = "ssh"
    a.sim["ranks_per_node"] = 2
    assert b.bootstrap == {} and b.sim == {}


def test_output_and_exits_carry_named_items() -> None:
    out = t.decode(t.encode(t.Output([t.RankOutput(3, 2, b"a\nb\n"), t.RankOutput(0, 1, b"")])))
    assert isinstance(out, t.Output)
    assert [(o.rank, o.stream, o.data) for o in out.items] == [(3, 2, b"a\nb\n"), (0, 1, b"")]
    ex = t.decode(t.encode(t.Exits([t.RankExit(1, 0, -1, 9, "node lost")])))
    assert isinstance(ex, t.Exits) and ex.items[0].signal == 9 and ex.items[0].reason == "node lost"
    # The same messages wrapped for a spawned job.
    inner = t.unwrap(t.decode(t.encode(t.wrap(4, out))))  # type: ignore[arg-type]
    assert inner == out


@pytest.mark.parametrize(("fields", "why"), [
    ([[[0, 1]]], "bad fields for RankOutput"),
    ([[7]], "bad fields for RankOutput"),
    ([7], "Output.items is not a list"),
    ([[[0, 1, b"x", 9]]], "bad fields for RankOutput"),
])
def test_items_of_the_wrong_shape_are_protocol_errors(fields: list[object], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        t.decode(msgpack.packb([t.Output.op, *fields]))


def test_a_plan_of_the_wrong_shape_is_a_protocol_error() -> None:
    wire = _plan().to_wire()
    wire[6] = [["a.out"]]  # an app without its count, environment and directory
    with pytest.raises(ProtocolError, match="AppPlan"):
        t.decode(msgpack.packb([t.Launch.op, wire]))
    with pytest.raises(ProtocolError, match="JobPlan is not an array"):
        t.decode(msgpack.packb([t.Launch.op, {"job_id": "j1"}]))


def test_a_hello_of_a_later_version_still_names_its_version() -> None:
    # Fields a later Hello adds are ignored: what is read is who it is and its version.
    got = t.decode(msgpack.packb([t.Hello.op, 4, "n4", 44, 99, "more", {"x": 1}]))
    assert got == t.Hello(4, "n4", 44, 99)


def test_the_agent_config_travels_as_json_and_is_checked() -> None:
    cfg = AgentConfig(2, "tcp://10.0.0.1:7301", "ab" * 32, "j1", "n2", 30, 5.0, listen=True,
                      ports=[7400, 7499])
    assert AgentConfig.from_wire(json.loads(json.dumps(cfg.to_wire()))) == cfg
    wire = cfg.to_wire()
    wire[0] = "2"
    with pytest.raises(ProtocolError, match="bad field 'vertex'"):
        AgentConfig.from_wire(wire)
    with pytest.raises(ProtocolError, match="AgentConfig is not an array"):
        AgentConfig.from_wire({"vertex": 2})


def test_probe_lines_are_samples() -> None:
    sample = ProbeSample(8 << 30, 3 << 30, "cgroup", 4, {0: 1024, 12: 4096})
    assert sample.line() == f"pmrun-probe {8 << 30} {3 << 30} cgroup cores=4 0=1024 12=4096"
    assert ProbeSample.parse(sample.line()) == sample
    assert ProbeSample.parse("pmrun-probe 10 5 machine") == ProbeSample(10, 5, "machine", None, {})
    for other in ("", "hello", "pmrun-probe 1 2", "pmrun-probe x 2 machine", "pmrun-probe 1 2 m 3"):
        assert ProbeSample.parse(other) is None, other


def test_runner_commands_come_back_whole() -> None:
    odd = b"caf\xe9 {}".decode(errors="surrogateescape")  # an argument that is not UTF-8
    start = TaskStart(7, ["sh", "-c", f"echo {odd}"], {"PARALLEL_SEQ": "8"}, None)
    for cmd in (start, TaskStart(0, ["true"], {}, "/tmp/a b"), TaskSignal(-1, 2),
                TaskSignal(3, 9), TasksEnv({"PATH": "/bin", "X": "a\nb=c"})):
        line = cmd.line()
        assert line.endswith(b"\n") and line.count(b"\n") == 1, line
        assert from_ensemble(line) == cmd
    for other in (b"", b"hello", b"pmrun-start [1,2]", b"pmrun-start {", b"pmrun-signal 1",
                  b"pmrun-signal a 2", b"pmrun-env [1]"):
        assert from_ensemble(other) is None, other


def test_runner_commands_with_input_come_back_whole_however_the_stream_is_cut() -> None:
    block = bytes(range(256)) * 1000  # newlines and all
    cmds = [TasksEnv({"A": "1"}), TaskInput(2, block), TaskStart(2, ["cat"], {}, None),
            TaskSignal(2, 15), TaskInput(3, b"")]
    stream = b"".join(c.records() if isinstance(c, TaskInput) else c.line() for c in cmds)
    stream += b"pmrun-stdin x\nnonsense\n"
    for cut in (1, 13, 65536, len(stream)):
        reader = CommandReader()
        got = [c for at in range(0, len(stream), cut) for c in reader.feed(stream[at:at + cut])]
        assert got == [*cmds, b"pmrun-stdin x", b"nonsense"], cut


def test_runner_reports_come_back_whole_however_the_stream_is_cut() -> None:
    exit_, sample = TaskExit(3, 137), ProbeSample(10, 5, "machine", 2, {1: 4096})

    def stream_of(data: bytes) -> bytes:
        return (b"garbage\npmrun-out x\n" + exit_.line() + sample.line().encode() + b"\n"
                + TaskOutput(4, 2, data).records()
                + TaskOutput(1, 1, b"no newline at the end").records())

    big = bytes(range(256)) * (MAX_DATA // 128)  # every byte, newlines among them: 2 records
    assert max(len(line) for line in stream_of(big).split(b"\n")) < MAX_DATA + 64  # never cut
    # Byte by byte (every place a record can be cut) over a small one; the big one in
    # pieces, whose ends fall all over its lines.
    small = bytes(range(256)) * 3
    for data, cut in ((small, 1), (big, 7), (big, 4096), (big, len(stream_of(big)))):
        stream = stream_of(data)
        reader = RunnerReader()
        got = [rec for at in range(0, len(stream), cut) for rec in reader.feed(stream[at:at + cut])]
        outputs = [g for g in got if isinstance(g, TaskOutput)]
        assert [g for g in got if not isinstance(g, TaskOutput)] == [exit_, sample], cut
        assert b"".join(g.data for g in outputs if g.index == 4) == data
        assert [g.data for g in outputs if g.index == 1] == [b"no newline at the end"]


def test_an_agent_of_another_protocol_version_is_named(pmrun: Run, tmp_path: Path) -> None:
    """Node n2 runs an agent that says another protocol version in its Hello: the job fails
    at once, in one line naming the node and both versions (not a misread plan, a hang or a
    traceback)."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text(
        "import pm.proto.tree_wire as t\nt.Hello._defaults['version'] = 99\n")
    script = tmp_path / "exec.sh"
    script.write_text('#!/bin/sh\nhost=$1; shift\n'
                      f'[ "$host" = n2 ] && export PYTHONPATH={other}:$PYTHONPATH\n'
                      'exec "$@"\n')
    script.chmod(0o755)
    r = pmrun("--launcher", "exec", "--launcher-exec", f"{script} {{host}} {{command}}",
              "--iface", "127.0.0.1", "-hosts", "n1,n2", "-n", "2", "true")
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "protocol version" in ln]
    assert lines == [f"pmrun: node 1 (n2) lost: its agent speaks tree protocol version 99, this "
                     f"pmrun speaks version {t.PROTOCOL_VERSION} (install the same pmrun on "
                     "every node)"], r.stderr
