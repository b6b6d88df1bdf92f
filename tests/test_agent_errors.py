"""An agent that cannot handle a tree message ends the job naming itself, never hangs it."""

from __future__ import annotations

import logging

import pytest

from pm.agent.node import JobAgent
from pm.common.nodes import Nodes
from pm.head import JobRun
from pm.jobspec import AppSpec, JobSpec
from pm.proto import tree_wire as t

pytestmark = pytest.mark.timeout(20)


class Uplink:
    """Where vertex 1 sends what goes up the tree (its parent link, without the socket)."""

    def __init__(self) -> None:
        self.sent: list[t.Msg] = []

    def send(self, msg: t.Msg) -> None:
        self.sent.append(msg)


async def test_a_message_the_agent_cannot_handle_becomes_an_agent_error(
        caplog: pytest.LogCaptureFixture) -> None:
    run = JobRun(JobSpec([AppSpec(["true"], 4)]), Nodes.local(2, 2))
    up = Uplink()
    agent = JobAgent(run.plan, 1, up, host="node-b")
    with caplog.at_level(logging.ERROR):
        # A fence result that is not [key, rank, value, ...]: the node KVS cannot take it.
        agent.from_parent(t.CollOut(1, t.FENCE, [b"k"]))
    assert len(up.sent) == 1
    err = up.sent[0]
    assert isinstance(err, t.AgentError) and err.vertex == 1 and err.host == "node-b"
    assert err.text.startswith("internal error handling CollOut: ValueError(")
    assert "agent 1 failed handling CollOut" in caplog.text
    # The agent goes on serving: a well-formed result is handled without a new error.
    agent.from_parent(t.CollOut(2, t.FENCE, []))
    assert len(up.sent) == 1
    agent.close()


async def test_a_launch_directory_missing_on_a_node_is_said_and_the_agents_own_used(
        tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    from pathlib import Path

    from pm.agent.node import _launch_dir

    here = Path(str(tmp_path))
    assert _launch_dir(str(here), 1, "h2") == str(here)
    assert _launch_dir("", 1, "h2") is None
    with caplog.at_level(logging.WARNING, logger="pm.agent"):
        assert _launch_dir(str(here / "gone"), 1, "h2") is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(
        f"{here / 'gone'}, pmrun's working directory, does not exist on node 1 (h2)"), said
    # The plan carries it from the head.
    run = JobRun(JobSpec([AppSpec(["true"], 2)]), Nodes.local(2, 1))
    import os

    assert run.plan.cwd == os.getcwd()
