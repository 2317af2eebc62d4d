"""Prespawned spares at each `spare_stage`, with real runner processes and SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from supervisor import RestartPolicy, RunnerSpec, TaskRecovered
from supervisor.protocol import Generate, Prepare, RunnerIdle, TaskStatus
from supervisor.restart.policy import SpareStage
from tests.support.harness import supervised
from tests.support.restart_harness import Restarting, restarting
from tests.support.spare_engines import read_journal

pytestmark = pytest.mark.anyio

ENGINE = "tests.support.spare_engines:JournalingEngine"


async def _poll(pred: Callable[[], bool], within: float) -> None:
    with anyio.fail_after(within):
        while not pred():  # noqa: ASYNC110 - nothing signals a spare runner's pid
            await anyio.sleep(0.02)


def _spec(journal: Path, **options: object) -> RunnerSpec:
    return RunnerSpec(engine=ENGINE, options={"journal": str(journal), **options})


def _hooks(journal: Path, pid: int | None) -> list[tuple[str, float]]:
    return [(hook, when) for hook, p, when in read_journal(str(journal)) if p == pid]


async def _spare_at_stage(r: Restarting, journal: Path, stage: SpareStage) -> int:
    """The spare's pid, once it has reached ``stage`` (its hooks say so)."""
    await _poll(lambda: r.sup.spare_pid is not None, within=30)
    spare = r.sup.spare_pid
    wanted = {"imported": set(), "prepared": {"prepare"}, "loaded": {"prepare", "warmup"}}
    await _poll(lambda: wanted[stage] <= {h for h, _ in _hooks(journal, spare)}, within=30)
    await _poll(lambda: r.sup.spare_ready, within=30)  # ... and says so
    assert spare is not None
    return spare


@pytest.mark.parametrize("stage", ["imported", "prepared", "loaded"])
async def test_each_stage_takes_over_after_sigkill_and_tasks_recover(
    stage: SpareStage, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    policy = RestartPolicy(
        backoff_base=0.0, prespawn=True, spare_stage=stage, task_recovery="resume"
    )
    async with restarting(_spec(journal, token_delay=0.02), policy=policy) as r:
        await r.ready()
        spare = await _spare_at_stage(r, journal, stage)
        await anyio.sleep(0.2)  # (an imported spare has no hook to wait for)
        task = Generate(task_id="g", prompt="one two three", max_tokens=40)
        await r.sup.start_task(task)
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 2)
        killed_at = time.monotonic()
        os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.ready(count=2)
        mttr = time.monotonic() - killed_at
        assert r.sup.pid == spare
        assert r.sup.incarnation == 2
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete], within=30)
        # a new spare stands by for the next time
        await _poll(lambda: r.sup.spare_pid not in (None, spare), within=30)
    print(f"{stage}: SIGKILL -> spare Ready in {mttr * 1000:.1f} ms")
    assert [e.task_id for e in r.rec.of(TaskRecovered)] == ["g"]
    assert {c.index for c in r.rec.chunks("g")} == set(range(40))  # none lost
    assert len(r.rec.failures()) == 1  # the kill; spares shut down unused are not failures
    hooks = _hooks(journal, spare)
    ran_before = [h for h, when in hooks if when < killed_at]
    ran_after = [h for h, when in hooks if when >= killed_at]
    expected_before = {"imported": [], "prepared": ["prepare"]}
    expected_before["loaded"] = ["prepare", "load", "warmup"]
    assert ran_before == expected_before[stage]
    # what was not done ahead is done once adopted; a loaded spare loads nothing again
    assert ran_before + ran_after == ["prepare", "load", "warmup"]


async def test_a_spare_that_dies_waiting_is_replaced_silently(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    policy = RestartPolicy(backoff_base=0.0, prespawn=True, spare_stage="loaded")
    async with restarting(_spec(journal), policy=policy) as r:
        await r.ready()
        first = r.sup.pid
        doomed = await _spare_at_stage(r, journal, "loaded")
        os.kill(doomed, signal.SIGKILL)
        await _poll(lambda: not r.sup.spare_ready, within=30)
        await _poll(lambda: r.sup.spare_pid not in (None, doomed), within=30)
        spare = await _spare_at_stage(r, journal, "loaded")
        assert r.sup.pid == first
        assert r.sup.incarnation == 1
        assert r.rec.failures() == []  # the spare's death is nobody's failure
        assert r.sup.phase == "ready"
        os.kill(first or 0, signal.SIGKILL)
        await r.ready(count=2)
        assert r.sup.pid == spare
        await r.sup.start_task(Generate(task_id="g", prompt="after", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
    assert len(r.rec.failures()) == 1


async def test_a_loaded_spare_adopted_while_still_loading_is_not_loaded_twice(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    policy = RestartPolicy(backoff_base=0.0, prespawn=True, spare_stage="loaded")
    async with restarting(_spec(journal, load_time=1.0), policy=policy) as r:
        await r.ready()
        await _poll(lambda: r.sup.spare_pid is not None, within=30)
        spare = r.sup.spare_pid
        await _poll(lambda: [h for h, _ in _hooks(journal, spare)] == ["prepare"], within=30)
        os.kill(r.sup.pid or 0, signal.SIGKILL)  # the spare is loading now
        await r.ready(count=2, within=30)
        assert r.sup.pid == spare
    assert [h for h, _ in _hooks(journal, spare)] == ["prepare", "load", "warmup"]


async def test_a_rank_group_gets_a_loaded_spare_for_every_rank(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    policy = RestartPolicy(backoff_base=0.0, prespawn=True, spare_stage="loaded")
    spec = RunnerSpec(engine=ENGINE, world_size=2, options={"journal": str(journal)})
    async with restarting(spec, policy=policy) as r:
        await r.ready()

        def warmed() -> set[int]:
            return {pid for hook, pid, _ in read_journal(str(journal)) if hook == "warmup"}

        await _poll(lambda: len(warmed()) == 4, within=60)  # 2 ranks, and 2 in the spare
        before = warmed()
        killed_at = time.monotonic()
        os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.ready(count=2, within=30)
        ranks = set(r.sup.pids)
        assert len(ranks) == 2
        assert r.sup.incarnation == 2
    loads_after = [
        pid
        for hook, pid, when in read_journal(str(journal))
        if hook == "load" and when >= killed_at
    ]
    # every rank of the new incarnation was loaded before the kill; what loads after it
    # is the next spare group, not the incarnation that took over
    assert ranks <= before
    assert not ranks & set(loads_after)


async def test_replace_hands_over_to_a_loaded_spare(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    policy = RestartPolicy(backoff_base=0.0, prespawn=True, spare_stage="loaded")
    async with restarting(_spec(journal, token_delay=0.01), policy=policy) as r:
        await r.ready()
        old = r.sup.pid
        spare = await _spare_at_stage(r, journal, "loaded")
        await r.sup.start_task(Generate(task_id="long", prompt="a b", max_tokens=30))
        await r.rec.wait_for(lambda: len(r.rec.chunks("long")) >= 2)
        asked_at = time.monotonic()
        await r.sup.replace()
        assert r.sup.pid == spare
        await r.sup.start_task(Generate(task_id="after", prompt="c", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("after") == [TaskStatus.Complete])
        await r.rec.wait_for(lambda: r.rec.terminal("long") == [TaskStatus.Complete])
    assert old != spare
    assert r.rec.failures() == []
    assert [h for h, when in _hooks(journal, spare) if when >= asked_at] == []


async def test_a_loaded_spare_whose_load_failed_is_not_adopted(tmp_path: Path) -> None:
    journal, flag = tmp_path / "journal", tmp_path / "no-weights"
    policy = RestartPolicy(backoff_base=0.0, prespawn=True, spare_stage="loaded")
    async with restarting(_spec(journal, fail_load_if=str(flag)), policy=policy) as r:
        await r.ready()
        flag.touch()  # the spare's load fails; the current runner is loaded already
        await _poll(lambda: r.sup.spare_pid is not None, within=30)
        broken = r.sup.spare_pid
        await _poll(lambda: ("load-failed", broken) in _pids_of(journal), within=30)
        await anyio.sleep(0.2)  # its failed LoadModel's status arrives
        assert not r.sup.spare_ready
        flag.unlink()
        os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.ready(count=2, within=30)
        assert r.sup.pid not in (None, broken)  # a fresh runner, not the broken spare
        await r.sup.start_task(Generate(task_id="g", prompt="fine", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
    assert len(r.rec.failures()) == 1  # the kill; the broken spare is nobody's failure


def _pids_of(journal: Path) -> set[tuple[str, int]]:
    return {(hook, pid) for hook, pid, _ in read_journal(str(journal))}


async def test_prepare_runs_once_in_idle_and_only_there(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    async with supervised(_spec(journal)) as r:
        await r.sup.start_task(Prepare(task_id="p1"))
        await r.rec.wait_for(lambda: r.rec.terminal("p1") == [TaskStatus.Complete])
        assert isinstance(r.sup.status, RunnerIdle)  # prepared, still Idle
        await r.sup.start_task(Prepare(task_id="p2"))  # a second one: nothing to do
        await r.rec.wait_for(lambda: r.rec.terminal("p2") == [TaskStatus.Complete])
        await r.ready()  # LoadModel does not prepare again
        await r.sup.start_task(Prepare(task_id="late"))
        await r.rec.wait_for(lambda: r.rec.terminal("late") == [TaskStatus.Failed])
        await r.sup.start_task(Generate(task_id="g", prompt="still fine", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
    assert [h for h, _ in _hooks(journal, r.sup.pid)] == ["prepare", "load", "warmup"]
