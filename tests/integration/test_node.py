"""RunnerNode: many restarting runners in one task group, one event stream."""

from __future__ import annotations

import math
import os
import signal

import anyio
import pytest

from supervisor import (
    RestartPolicy,
    RunnerNode,
    RunnerSpec,
    SupervisorClosedError,
    SupervisorGaveUp,
    UnknownRunnerError,
)
from supervisor.core.done import DONE
from supervisor.core.statemachine import check_table
from supervisor.node import TRANSITIONS, NodeState
from supervisor.protocol import BaseEvent, Generate, TaskStatus
from tests.support.restart_harness import running_node

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_twenty_runners_one_killed_the_other_nineteen_unaffected() -> None:
    ids = [f"r{i:02d}" for i in range(20)]
    async with running_node() as (node, rec):
        for rid in ids:
            node.add_runner(rid, RunnerSpec(engine="echo", options={"token_delay": 0.002}))
        await rec.wait_for(lambda: all(rec.ready_count(rid) == 1 for rid in ids), within=180)
        pids = {rid: node[rid].pid for rid in ids}
        assert len(set(pids.values())) == 20

        # Work in flight on every runner while one of them is killed.
        for rid in ids:
            await node.start_task(rid, Generate(task_id=f"{rid}-g", prompt="a b", max_tokens=400))
        await rec.wait_for(lambda: len(rec.chunks("r07-g")) >= 5)
        os.kill(pids["r07"] or 0, signal.SIGKILL)
        await rec.wait_for(lambda: rec.ready_count("r07") == 2, within=60)
        await rec.wait_for(lambda: all(rec.terminal(f"{rid}-g") for rid in ids), within=120)
        # The victim's task failed; everyone else finished theirs, untouched.
        assert rec.terminal("r07-g") == [TaskStatus.Failed]
        others = [rid for rid in ids if rid != "r07"]
        for rid in others:
            assert rec.terminal(f"{rid}-g") == [TaskStatus.Complete], rid
            assert len(rec.chunks(f"{rid}-g")) == 400, rid
            assert rec.failures(rid) == [], rid
            assert node[rid].pid == pids[rid], rid
            assert (node[rid].incarnation, node[rid].restarts) == (1, 0), rid
        assert len(rec.failures("r07")) == 1
        assert node["r07"].incarnation == 2
        assert node["r07"].pid not in (None, pids["r07"])
        # And the replacement serves again.
        await node.start_task("r07", Generate(task_id="again", prompt="x", max_tokens=2))
        await rec.wait_for(lambda: rec.terminal("again") == [TaskStatus.Complete])
        snaps = node.health_snapshots()
        assert sorted(h.runner_id for h in snaps) == ids
        assert all(h.phase in ("ready", "running") for h in snaps)


async def test_add_and_remove_runners_at_run_time_and_isolate_a_crash_loop() -> None:
    async with running_node() as (node, rec):
        node.add_runner("good", RunnerSpec(engine="echo"))
        await rec.wait_for(lambda: rec.ready_count("good") == 1, within=30)
        good_pid = node["good"].pid
        with pytest.raises(ValueError, match="already exists"):
            node.add_runner("good")
        # A runner that can never load gives up alone.
        node.add_runner(
            "bad",
            RunnerSpec(engine="tests.support.engines:CrashOnLoadEngine"),
            policy=RestartPolicy(backoff_base=0.0, crash_loop_threshold=2),
        )
        await rec.wait_for(lambda: bool(rec.of(SupervisorGaveUp)), within=60)
        (gave_up,) = rec.of(SupervisorGaveUp)
        assert gave_up.runner_id == "bad"
        assert node["bad"].phase == "gave_up"
        assert node["good"].phase == "ready"
        assert node["good"].pid == good_pid
        await node.start_task("good", Generate(task_id="g", prompt="still here", max_tokens=2))
        await rec.wait_for(lambda: rec.terminal("g") == [TaskStatus.Complete])

        await node.remove_runner("bad")
        with pytest.raises(UnknownRunnerError):
            node["bad"]
        await node.remove_runner("good")
        assert node.runners == {}
        assert rec.failures("good") == []
        node.add_runner("late", RunnerSpec(engine="echo"))
        await rec.wait_for(lambda: rec.ready_count("late") == 1, within=30)


def test_the_node_lifecycle_table_is_complete() -> None:
    check_table(TRANSITIONS, NodeState)
    finals = {s for s, row in TRANSITIONS.items() if not row}
    assert finals == {NodeState.FINISHED}


async def test_a_node_shut_down_before_run_takes_no_runners_and_run_ends() -> None:
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    with send, recv:
        node = RunnerNode(event_sender=send)
        waiting = node.add_runner("early", RunnerSpec(engine="echo"))
        assert node.shutdown() is DONE
        with pytest.raises(SupervisorClosedError, match="no new runners"):
            node.add_runner("late")
        with anyio.fail_after(10):
            await node.run()  # the runner added before ends without a process
        assert waiting.finished
        assert waiting.incarnation == 0
        with pytest.raises(RuntimeError, match="only be called once"):
            await node.run()
