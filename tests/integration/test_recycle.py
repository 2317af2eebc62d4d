"""Recycling (``max_tasks``, ``max_rss``): graceful replacement, no task fails."""

from __future__ import annotations

import pytest

from supervisor import RestartPolicy, RunnerRestarting, RunnerSpec, SupervisorConfig
from supervisor.protocol import Generate, TaskStatus
from tests.support.restart_harness import restarting, served_by

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PID_ENGINE = "tests.support.node_engines:PidEngine"


@pytest.mark.parametrize("prespawn", [False, True])
async def test_max_tasks_recycles_and_no_task_fails(prespawn: bool) -> None:
    policy = RestartPolicy(backoff_base=0.0, max_tasks=3, prespawn=prespawn)
    async with restarting(RunnerSpec(engine=PID_ENGINE), policy=policy) as r:
        for i in range(10):
            tid = f"g{i}"
            await r.sup.start_task(Generate(task_id=tid, prompt="x y", max_tokens=2))
            await r.rec.wait_for(lambda tid=tid: bool(r.rec.terminal(tid)), within=60)
    ids = [f"g{i}" for i in range(10)]
    for tid in ids:
        assert r.rec.terminal(tid) == [TaskStatus.Complete], tid
    pids = [served_by(r.rec, tid) for tid in ids]
    # Three tasks per incarnation: 1-3, 4-6, 7-9, then the tenth on a fourth.
    assert [len(set(pids[i : i + 3])) for i in range(0, 9, 3)] == [1, 1, 1]
    assert len(set(pids)) == 4
    assert r.sup.incarnation >= 4
    assert r.rec.failures() == []
    restarts = r.rec.of(RunnerRestarting)
    assert {e.reason for e in restarts} == {"recycle"}
    assert all(e.restarts == 0 for e in restarts)  # outside the restart budget


async def test_max_rss_recycles_after_consecutive_high_samples() -> None:
    # Every runner is above 1 byte: recycled after RSS_RECYCLE_SAMPLES polls.
    policy = RestartPolicy(backoff_base=0.0, max_rss=1)
    config = SupervisorConfig(poll_interval=0.1)
    async with restarting(policy=policy, config=config) as r:
        await r.ready()
        first = r.sup.pid
        await r.rec.wait_for(lambda: bool(r.rec.of(RunnerRestarting)), within=30)
        await r.ready(count=2)
        assert r.sup.pid != first
        await r.sup.start_task(Generate(task_id="g", prompt="still serving", max_tokens=2))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("g")), within=30)
    assert r.rec.terminal("g") == [TaskStatus.Complete]
    assert r.rec.failures() == []
    assert r.rec.of(RunnerRestarting)[0].reason == "recycle"
