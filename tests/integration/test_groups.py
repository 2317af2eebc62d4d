"""Restart groups on a RunnerNode: Erlang/OTP strategies with real runners and real signals."""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

from supervisor import (
    GroupGaveUp,
    GroupRestarting,
    RestartPolicy,
    RunnerSpec,
    SupervisorGaveUp,
    UnknownGroupError,
)
from supervisor.ops.health import HealthApp
from supervisor.protocol import (
    Generate,
    RunnerFailed,
    RunnerIdle,
    RunnerReady,
    RunnerShutdown,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
)
from tests.support.harness import Recorder
from tests.support.restart_harness import ready_count, restarts_of, running_node, wait_gone

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ECHO = RunnerSpec(engine="echo", options={"token_delay": 0.01})


def failures(rec: Recorder) -> list[tuple[str, RunnerFailed]]:
    return [
        (e.runner_id, e.status)
        for e in rec.of(RunnerStatusUpdated)
        if isinstance(e.status, RunnerFailed)
    ]


def all_ready(rec: Recorder, ids: list[str], count: int) -> bool:
    return all(ready_count(rec, rid) >= count for rid in ids)


async def test_one_for_all_member_killed_every_sibling_stops_and_the_group_restarts() -> None:
    ids = ["rank0", "rank1", "rank2", "rank3"]
    async with running_node() as (node, rec):
        group = node.add_group("g", dict.fromkeys(ids, ECHO), strategy="one_for_all")
        await rec.wait_for(lambda: all_ready(rec, ids, 1), within=120)
        assert group.ready
        pids = {rid: node[rid].pid for rid in ids}
        assert None not in pids.values()
        # Work in flight on every sibling when rank1 dies.
        for rid in ids:
            if rid != "rank1":
                task = Generate(task_id=f"{rid}-g", prompt="a b", max_tokens=2000)
                await node.start_task(rid, task)
        await rec.wait_for(lambda: all(len(rec.chunks(f"{r}-g")) >= 3 for r in ids if r != "rank1"))
        killed_at = time.monotonic()
        os.kill(pids["rank1"] or 0, signal.SIGKILL)
        siblings = [pids[r] or 0 for r in ids if r != "rank1"]
        await wait_gone(siblings, within=5)
        all_gone = time.monotonic() - killed_at
        await rec.wait_for(lambda: all_ready(rec, ids, 2), within=120)
        new_pids = {rid: node[rid].pid for rid in ids}
        # The restarted group serves.
        for rid in ids:
            await node.start_task(rid, Generate(task_id=f"{rid}-after", prompt="x", max_tokens=2))
        await rec.wait_for(lambda: all(rec.terminal(f"{r}-after") for r in ids))
    print(f"one_for_all of 4: SIGKILL -> every sibling gone in {all_gone * 1000:.0f} ms")
    assert all_gone < 1.0
    for rid in ids:
        assert new_pids[rid] not in (None, pids[rid]), rid
        assert node[rid].incarnation == 2, rid
        assert rec.terminal(f"{rid}-after") == [TaskStatus.Complete], rid
    (round_,) = rec.of(GroupRestarting)
    assert (round_.group_id, round_.cause_runner_id, round_.restarts) == ("g", "rank1", 1)
    assert "member rank1 failed (signalled" in round_.reason
    # Exactly one failure (the victim's); the siblings were stopped, not failed.
    assert [rid for rid, _ in failures(rec)] == ["rank1"]
    for rid in ids:
        (restart,) = restarts_of(rec, rid)
        assert restart.reason == ("failure" if rid == "rank1" else "group"), rid
        assert restart.restarts == 1
        if rid != "rank1":
            # The siblings' in-flight tasks failed, naming the member that failed.
            (final,) = [
                e
                for e in rec.of(TaskStatusUpdated)
                if e.task_id == f"{rid}-g" and e.status.terminal
            ]
            assert final.status is TaskStatus.Failed
            assert "member rank1 failed" in (final.error or "")
    # GroupRestarting comes right after the victim's RunnerFailed, before any sibling stops.
    events = [e for _, e in rec.events]
    at = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, RunnerStatusUpdated) and isinstance(e.status, RunnerFailed)
    )
    assert events[at].runner_id == "rank1"
    assert events[at + 1] == round_
    assert group.restarts == 1


async def test_rest_for_one_keeps_the_earlier_members_running() -> None:
    ids = ["a", "b", "c"]
    async with running_node() as (node, rec):
        node.add_group("g", dict.fromkeys(ids, ECHO), strategy="rest_for_one")
        await rec.wait_for(lambda: all_ready(rec, ids, 1), within=120)
        pids = {rid: node[rid].pid for rid in ids}
        os.kill(pids["b"] or 0, signal.SIGKILL)
        await rec.wait_for(lambda: all_ready(rec, ["b", "c"], 2), within=120)
        assert node["a"].pid == pids["a"]
        assert node["a"].incarnation == 1
        for rid in ("b", "c"):
            assert node[rid].pid not in (None, pids[rid]), rid
            assert node[rid].incarnation == 2, rid
        await node.start_task("a", Generate(task_id="on-a", prompt="x", max_tokens=2))
        await rec.wait_for(lambda: rec.terminal("on-a") == [TaskStatus.Complete])
    (round_,) = rec.of(GroupRestarting)
    assert round_.cause_runner_id == "b"
    assert restarts_of(rec, "a") == []
    assert [e.reason for e in restarts_of(rec, "c")] == ["group"]


async def test_the_group_budget_is_one_for_all_members_and_ends_with_group_gave_up() -> None:
    ids = ["x", "y"]
    policy = RestartPolicy(backoff_base=0.0, max_restarts=1, restart_window=120.0)
    async with running_node() as (node, rec):
        group = node.add_group("g", dict.fromkeys(ids, ECHO), policy=policy, strategy="one_for_one")
        await rec.wait_for(lambda: all_ready(rec, ids, 1), within=120)
        os.kill(node["x"].pid or 0, signal.SIGKILL)
        await rec.wait_for(lambda: ready_count(rec, "x") == 2, within=60)
        assert node["y"].incarnation == 1  # one_for_one: the other member is untouched
        # A different member's failure: a per-member budget would allow it; the group's not.
        os.kill(node["y"].pid or 0, signal.SIGKILL)
        await rec.wait_for(lambda: bool(rec.of(GroupGaveUp)), within=60)
        with anyio.fail_after(30):
            for rid in ids:
                await node[rid].wait_finished()
    (gave_up,) = rec.of(GroupGaveUp)
    assert (gave_up.group_id, gave_up.restarts) == ("g", 1)
    assert gave_up.reason == "gave up after 1 restarts in 120 s"
    assert sorted(e.runner_id for e in rec.of(SupervisorGaveUp)) == ids
    assert group.gave_up is not None
    assert all(node[rid].phase == "gave_up" for rid in ids)
    # The group's give-up is its last word: after every member's SupervisorGaveUp.
    group_events = [e for _, e in rec.events if isinstance(e, (SupervisorGaveUp, GroupGaveUp))]
    assert isinstance(group_events[-1], GroupGaveUp)
    assert len(rec.of(GroupRestarting)) == 1


async def test_ordered_start_readiness_and_remove_group() -> None:
    ids = ["first", "second"]
    slow = RunnerSpec(engine="echo", options={"load_time": 0.3})
    async with running_node() as (node, rec):
        node.add_runner("solo", ECHO)
        node.add_group("g", dict.fromkeys(ids, slow), start="ordered")
        app = HealthApp(node)
        await rec.wait_for(lambda: all_ready(rec, [*ids, "solo"], 1), within=120)
        status, _, body = app.readyz()
        assert status == 200
        assert b"first ready group=g\n" in body
        assert b'runner_supervisor_group_ready{group="g"} 1.0' in app.render_metrics()[2]
        # Ordered: the second member's process started only after the first was Ready.
        events = [e for _, e in rec.events if isinstance(e, RunnerStatusUpdated)]
        first_ready = next(
            i
            for i, e in enumerate(events)
            if e.runner_id == "first" and isinstance(e.status, RunnerReady)
        )
        second_idle = next(
            i
            for i, e in enumerate(events)
            if e.runner_id == "second" and isinstance(e.status, RunnerIdle)
        )
        assert first_ready < second_idle
        # One member down: the whole group is not ready, and so neither is the node.
        os.kill(node["second"].pid or 0, signal.SIGKILL)
        await rec.wait_for(lambda: bool(rec.of(GroupRestarting)))
        assert app.readyz()[0] == 503
        assert b'runner_supervisor_group_ready{group="g"} 0.0' in app.render_metrics()[2]
        await rec.wait_for(lambda: all_ready(rec, ids, 2), within=120)
        assert app.readyz()[0] == 200
        with pytest.raises(ValueError, match="member of group 'g'"):
            await node.remove_runner("first")
        await node.remove_group("g")
        assert sorted(node.runners) == ["solo"]
        with pytest.raises(UnknownGroupError):
            node.group("g")
        assert app.readyz()[0] == 200


async def test_min_ready_keeps_the_node_ready_when_one_runner_gave_up() -> None:
    async with running_node(min_ready=1) as (node, rec):
        node.add_runner("good", ECHO)
        node.add_runner(
            "bad",
            RunnerSpec(engine="tests.support.engines:CrashOnLoadEngine"),
            policy=RestartPolicy(backoff_base=0.0, crash_loop_threshold=1),
        )
        await rec.wait_for(lambda: bool(rec.of(SupervisorGaveUp)), within=60)
        await rec.wait_for(lambda: ready_count(rec, "good") == 1, within=60)
        assert HealthApp(node).readyz()[0] == 200
        node.min_ready = None  # the default: every runner
        assert HealthApp(node).readyz()[0] == 503


async def test_replace_group_stops_every_old_member_before_any_new_one_starts() -> None:
    ids = ["p", "q"]
    async with running_node() as (node, rec):
        node.add_group("g", dict.fromkeys(ids, ECHO))
        await rec.wait_for(lambda: all_ready(rec, ids, 1), within=120)
        pids = {rid: node[rid].pid for rid in ids}
        await node.start_task("q", Generate(task_id="long", prompt="a", max_tokens=40))
        with anyio.fail_after(120):
            await node.replace_group("g")
        assert all(node[rid].pid not in (None, pids[rid]) for rid in ids)
        events = [e for _, e in rec.events]
    assert rec.terminal("long") == [TaskStatus.Complete]  # drained, not cut
    assert failures(rec) == []
    assert [e.reason for e in restarts_of(rec, "p")] == ["replace"]
    # The barrier: both old incarnations ended before either new one said Idle.
    statuses = [e for e in events if isinstance(e, RunnerStatusUpdated)]
    last_shutdown = max(i for i, e in enumerate(statuses) if isinstance(e.status, RunnerShutdown))
    idles = [i for i, e in enumerate(statuses) if isinstance(e.status, RunnerIdle)]
    assert all(i > last_shutdown for i in idles[2:]), (idles, last_shutdown)
