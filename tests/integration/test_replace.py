"""Zero-loss replacement, rolling restarts and cancellation everywhere, with real runners."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from supervisor import RestartPolicy, RunnerRestarting, RunnerSpec, SupervisorClosedError
from supervisor.protocol import Generate, TaskStatus, TaskStatusUpdated
from tests.support.restart_harness import (
    poll_until,
    ready_count,
    restarting,
    running_node,
    served_by,
    wait_gone,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PID_ENGINE = "tests.support.node_engines:PidEngine"


def failed_tasks(rec: object) -> list[TaskStatusUpdated]:
    return [
        e
        for e in rec.of(TaskStatusUpdated)  # type: ignore[attr-defined]
        if e.status is TaskStatus.Failed
    ]


@pytest.mark.parametrize("prespawn", [False, True])
async def test_replace_while_a_generate_streams_loses_nothing(prespawn: bool) -> None:
    spec = RunnerSpec(engine=PID_ENGINE, options={"token_delay": 0.02})
    policy = RestartPolicy(backoff_base=0.0, prespawn=prespawn)
    async with restarting(spec, policy=policy) as r:
        await r.ready()
        old_pid = r.sup.pid
        assert old_pid is not None
        # A 2 s Generate (100 tokens, 20 ms each) streams while the runner is replaced.
        await r.sup.start_task(Generate(task_id="long", prompt="tok", max_tokens=100))
        await r.rec.wait_for(lambda: len(r.rec.chunks("long")) >= 5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(r.sup.replace)
            await r.rec.wait_for(lambda: r.sup.replacing)
            # Submitted during the replacement: waits for the new incarnation.
            await r.sup.start_task(Generate(task_id="during", prompt="new", max_tokens=3))
        assert r.sup.pid not in (None, old_pid)
        assert r.sup.incarnation == 2
        await r.rec.wait_for(lambda: len(r.rec.terminal("during")) == 1)
        await wait_gone([old_pid], within=10)
    assert r.rec.terminal("long") == [TaskStatus.Complete]
    assert len(r.rec.chunks("long")) == 101  # the pid token and 100 tokens: never cut
    assert served_by(r.rec, "long") == old_pid
    assert r.rec.terminal("during") == [TaskStatus.Complete]
    assert served_by(r.rec, "during") not in (old_pid, None)
    assert r.rec.failures() == []
    assert failed_tasks(r.rec) == []
    (restart,) = r.rec.of(RunnerRestarting)
    assert (restart.incarnation, restart.delay, restart.reason) == (2, 0.0, "replace")
    assert restart.restarts == 0  # outside the restart budget
    assert r.sup.restarts == 0


async def test_drain_timeout_fails_an_unfinished_task_with_a_clear_error() -> None:
    spec = RunnerSpec(engine="echo", options={"token_delay": 0.05})
    async with restarting(spec) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="endless", prompt="x", max_tokens=10_000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("endless")) >= 2)
        with anyio.fail_after(60):
            await r.sup.replace(drain_timeout=0.3)
        assert r.sup.incarnation == 2
        assert r.sup.phase == "ready"
    (final,) = [
        e for e in r.rec.of(TaskStatusUpdated) if e.task_id == "endless" and e.status.terminal
    ]
    assert final.status is TaskStatus.Failed
    assert final.error == (
        "runner r1 was replaced (replace); the task did not finish within the drain timeout of 0.3s"
    )
    assert r.rec.failures() == []


async def test_replace_requests_coalesce_and_cancel_reaches_a_draining_task() -> None:
    spec = RunnerSpec(engine="echo", options={"token_delay": 0.05})
    async with restarting(spec) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="draining", prompt="x", max_tokens=10_000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("draining")) >= 2)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(r.sup.replace)
            await r.rec.wait_for(lambda: r.sup.replacing)
            await anyio.sleep(0.2)
            assert "draining" in r.sup.in_progress  # still on the old incarnation
            r.sup.cancel_task("draining")
        assert r.sup.incarnation == 2
    assert r.rec.terminal("draining") == [TaskStatus.Cancelled]
    assert len(r.rec.of(RunnerRestarting)) == 1  # three requests, one replacement


async def test_cancel_reaches_a_task_waiting_for_ready() -> None:
    spec = RunnerSpec(engine="echo", options={"load_time": 30})
    async with restarting(spec) as r:
        returned = anyio.Event()

        async def submit() -> None:
            await r.sup.start_task(Generate(task_id="waiting", prompt="x", max_tokens=2))
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await r.rec.wait_for(lambda: r.sup.phase == "loading", within=30)
            r.sup.cancel_task("waiting")
            with anyio.fail_after(5):
                await returned.wait()
        assert r.sup.phase == "loading"
    assert r.rec.terminal("waiting") == [TaskStatus.Cancelled]
    assert r.rec.task_statuses("waiting") == [TaskStatus.Cancelled]  # one status, no run


async def test_cancel_reaches_a_requeued_task() -> None:
    spec = RunnerSpec(
        engine="tests.support.node_engines:SlowPrefillEngine", options={"prefill_sleep": 60}
    )
    policy = RestartPolicy(backoff_base=3.0, jitter=0.0, requeue_unacknowledged=True)
    async with restarting(spec, policy=policy) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="busy", prompt="slow", max_tokens=2))
        returned = anyio.Event()

        async def submit() -> None:
            await r.sup.start_task(Generate(task_id="q", prompt="quick", max_tokens=2))
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await poll_until(lambda: "q" in r.sup.pending)
            os.kill(r.sup.pid or 0, signal.SIGKILL)
            # Re-queued: waiting through the 3 s backoff for the next incarnation.
            await r.rec.wait_for(lambda: bool(r.rec.of(RunnerRestarting)))
            assert r.rec.terminal("q") == []
            r.sup.cancel_task("q")
            with anyio.fail_after(5):
                await returned.wait()
        await r.ready(count=2)
        await anyio.sleep(0.3)  # nothing of "q" reaches the new incarnation
    assert r.rec.terminal("busy") == [TaskStatus.Failed]
    assert r.rec.task_statuses("q") == [TaskStatus.Cancelled]
    assert r.rec.chunks("q") == []


async def test_replace_after_shutdown_is_refused() -> None:
    async with restarting() as r:
        await r.ready()
        r.sup.shutdown()
        with pytest.raises(SupervisorClosedError):
            await r.sup.replace()


async def test_rolling_replace_keeps_all_but_one_runner_ready() -> None:
    ids = ["r0", "r1", "r2"]
    async with running_node() as (node, rec):
        for rid in ids:
            node.add_runner(rid, RunnerSpec(engine="echo"))
        await rec.wait_for(lambda: all(ready_count(rec, rid) == 1 for rid in ids), within=120)
        pids = {rid: node[rid].pid for rid in ids}
        worst = 0
        done = anyio.Event()

        async def sample() -> None:
            nonlocal worst
            while not done.is_set():
                down = sum(h.phase not in ("ready", "running") for h in node.health_snapshots())
                worst = max(worst, down)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            with anyio.fail_after(120):
                await node.rolling_replace(max_unavailable=1)
            done.set()
        for rid in ids:
            assert node[rid].incarnation == 2, rid
            assert node[rid].pid not in (None, pids[rid]), rid
    assert worst == 1
    assert [e.reason for e in rec.of(RunnerRestarting)] == ["replace"] * 3
    assert rec.failures() == []
