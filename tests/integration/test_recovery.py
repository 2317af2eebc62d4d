"""Tasks outlive their runner: the end window, replay, resume, poison, divergence."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import anyio
import pytest

from runners.engines.echo import echo_tokens
from supervisor import RestartPolicy, RunnerSpec
from supervisor.errors import SupervisorError
from supervisor.protocol import Generate, Recovery, TaskStatus, TaskStatusUpdated
from supervisor.restart.events import SupervisorGaveUp, TaskRecovered
from tests.support.restart_harness import Restarting, restarting, running_node

pytestmark = pytest.mark.anyio

ENGINES = "tests.support.recovery_engines"


def exact(r: Restarting, task: Generate) -> bool:
    """The host got every chunk of ``task`` once, in order, with the echo engine's text."""
    chunks = r.rec.chunks(task.task_id)
    want = list(echo_tokens(task.prompt, task.max_tokens))
    return [c.index for c in chunks] == list(range(len(want))) and [c.text for c in chunks] == want


def finals(r: Restarting, task_id: str) -> list[TaskStatusUpdated]:
    return [e for e in r.rec.of(TaskStatusUpdated) if e.task_id == task_id and e.status.terminal]


def recovered(r: Restarting, task_id: str | None = None) -> list[TaskRecovered]:
    return [e for e in r.rec.of(TaskRecovered) if task_id in (None, e.task_id)]


async def kill_runner(r: Restarting, *, only_serving: bool = False) -> bool:
    """SIGKILL the current runner; with ``only_serving``, only one that takes tasks
    (one still starting is not serving anything yet). True if one was killed."""
    sup = r.sup.current
    if only_serving and not r.sup.ready:
        return False
    if sup is not None and not sup.finished:
        pid = sup.runner_pid or sup.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True
    return False


@pytest.mark.log_hook
async def test_a_task_handed_to_an_ending_runner_waits_for_the_next_one() -> None:
    # The fatal line fires the detector ~150 ms before the RunnerFailed is reported;
    # tasks submitted meanwhile go to a runner that will never take them.
    spec = RunnerSpec(engine=f"{ENGINES}:FatalOnPromptEngine")
    async with restarting(spec, RestartPolicy(backoff_base=0.0)) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="fatal", prompt="fatal", max_tokens=4))
        await r.rec.wait_for(lambda: len(r.rec.chunks("fatal")) >= 1)
        submitted: list[str] = []
        raised: dict[str, BaseException] = {}

        async def submit(task_id: str) -> None:
            try:
                await r.sup.start_task(Generate(task_id=task_id, prompt="a b", max_tokens=3))
            except SupervisorError as exc:
                raised[task_id] = exc

        async with anyio.create_task_group() as tg:
            while not r.rec.failures() and len(submitted) < 200:  # one every 5 ms
                submitted.append(f"g{len(submitted)}")
                tg.start_soon(submit, submitted[-1])
                await anyio.sleep(0.005)
        await r.rec.wait_for(lambda: all(r.rec.terminal(t) for t in submitted), within=30)
    for tid in submitted:  # exactly one answer each, whatever happened
        assert len(r.rec.terminal(tid)) == 1, tid
    for tid in raised:  # written to the wedged runner, never acknowledged (at-most-once)
        assert r.rec.terminal(tid) == [TaskStatus.Failed]
    window = [e.task_id for e in recovered(r) if e.mode == "requeue"]
    assert window, "no task was submitted in the end window"
    for tid in window:  # handed to the ending runner, never written: done by the next
        assert tid not in raised
        assert r.rec.terminal(tid) == [TaskStatus.Complete]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "anyio_backend"), [("replay", "asyncio"), ("resume", "trio")], ids=["replay", "resume"]
)
async def test_sixty_generations_outlive_a_sigkill_every_250_ms(mode: Recovery) -> None:
    policy = RestartPolicy(
        backoff_base=0.0,
        prespawn=True,
        task_recovery=mode,
        max_task_attempts=1000,
        max_restarts=10_000,
        crash_loop_threshold=10_000,
    )
    spec = RunnerSpec(engine="echo", options={"token_delay": 0.001})
    tasks = [
        Generate(task_id=f"g{i}", prompt=f"w{i} x{i} y{i} z{i} v{i}", max_tokens=40)
        for i in range(60)
    ]
    kills = 0
    async with restarting(spec, policy) as r:
        await r.ready()
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(r.sup.start_task, task)
        t0 = time.monotonic()
        with anyio.fail_after(120):  # ~10 s each on a quiet machine
            while not all(r.rec.terminal(t.task_id) for t in tasks):
                await anyio.sleep(0.25)
                kills += await kill_runner(r, only_serving=True)
        elapsed = time.monotonic() - t0
    print(f"{mode}: 60 x 40 tokens under {kills} SIGKILLs in {elapsed:.1f}s")
    assert kills >= 3  # the runner really died under them, more than once
    for task in tasks:
        assert r.rec.terminal(task.task_id) == [TaskStatus.Complete], task.task_id
        assert exact(r, task), task.task_id
    modes = {e.mode for e in recovered(r)}
    assert mode in modes
    if mode == "resume":
        assert any(e.from_index > 0 for e in recovered(r) if e.mode == "resume")
    assert not r.rec.of(SupervisorGaveUp)


@pytest.mark.parametrize("mode", ["replay", "resume"])
async def test_a_poison_task_costs_max_task_attempts_deaths_and_no_bystander(
    mode: Recovery,
) -> None:
    spec = RunnerSpec(engine=f"{ENGINES}:PoisonEngine", options={"token_delay": 0.01})
    policy = RestartPolicy(backoff_base=0.0, task_recovery=mode, max_task_attempts=3)
    assert policy.max_restarts > policy.max_task_attempts
    poison = Generate(task_id="poison", prompt="poison pill", max_tokens=10)
    others = [Generate(task_id=f"b{i}", prompt="fine words", max_tokens=5) for i in range(3)]
    async with restarting(spec, policy) as r:
        await r.ready()
        await r.sup.start_task(poison)
        for task in others:  # queued behind the poison: bystanders
            await r.sup.start_task(task)
        await r.rec.wait_for(
            lambda: all(r.rec.terminal(t.task_id) for t in [poison, *others]), within=30
        )
        after = Generate(task_id="after", prompt="still serving", max_tokens=3)
        await r.sup.start_task(after)
        await r.rec.wait_for(lambda: bool(r.rec.terminal("after")))
        assert r.sup.ready  # it goes on serving the others
    assert len(r.rec.failures()) == 3  # exactly max_task_attempts runner deaths
    (failed,) = finals(r, "poison")
    assert failed.status is TaskStatus.Failed
    assert failed.error is not None
    assert failed.error.startswith("quarantined")
    assert "3 incarnations" in failed.error
    for task in [*others, after]:
        assert r.rec.terminal(task.task_id) == [TaskStatus.Complete], task.task_id
        assert exact(r, task)
    # each index once, no gap: two new tokens per attempt when resumed, the same two
    # (compared, not sent again) when replayed
    want = 2 * policy.max_task_attempts if mode == "resume" else 2
    assert [c.index for c in r.rec.chunks("poison")] == list(range(want))
    assert not r.rec.of(SupervisorGaveUp)


async def test_resume_on_an_engine_without_resume_support_is_a_replay_and_says_so() -> None:
    spec = RunnerSpec(engine=f"{ENGINES}:ReplayOnlyEngine", options={"token_delay": 0.02})
    policy = RestartPolicy(backoff_base=0.0, task_recovery="resume")
    task = Generate(task_id="g", prompt="one two three four five", max_tokens=30)
    async with restarting(spec, policy) as r:
        await r.ready()
        await r.sup.start_task(task)
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 3)
        await kill_runner(r)
        await r.rec.wait_for(lambda: bool(r.rec.terminal("g")), within=30)
    assert r.rec.terminal("g") == [TaskStatus.Complete]
    assert exact(r, task)
    (event,) = recovered(r, "g")
    assert (event.mode, event.from_index) == ("replay", 0)


async def test_a_replay_that_regenerates_other_tokens_fails_as_diverged() -> None:
    spec = RunnerSpec(engine=f"{ENGINES}:CoinEngine", options={"token_delay": 0.02})
    policy = RestartPolicy(backoff_base=0.0, task_recovery="resume")  # falls back to replay
    task = Generate(task_id="coin", prompt="heads tails", max_tokens=200)
    async with restarting(spec, policy) as r:
        await r.ready()
        await r.sup.start_task(task)
        await r.rec.wait_for(lambda: len(r.rec.chunks("coin")) >= 3)
        await kill_runner(r)
        await r.rec.wait_for(lambda: bool(r.rec.terminal("coin")), within=30)
    assert r.rec.terminal("coin") == [TaskStatus.Failed]
    indexes = [c.index for c in r.rec.chunks("coin")]
    assert indexes == list(range(len(indexes)))  # nothing spliced after the divergence
    assert len({c.text.split("-")[0] for c in r.rec.chunks("coin")}) == 1
    (failed,) = finals(r, "coin")
    assert failed.error is not None
    assert "diverged" in failed.error


@pytest.mark.slow
async def test_a_one_for_all_restart_resumes_every_members_generation() -> None:
    ids = ["rank0", "rank1"]
    spec = RunnerSpec(engine="echo", options={"token_delay": 0.01})
    policy = RestartPolicy(backoff_base=0.0, task_recovery="resume")
    async with running_node(policy=policy) as (node, rec):
        node.add_group("g", dict.fromkeys(ids, spec), strategy="one_for_all")
        await rec.wait_for(lambda: all(rec.ready_count(r) >= 1 for r in ids), within=60)
        tasks = {r: Generate(task_id=f"{r}-g", prompt="a b c", max_tokens=60) for r in ids}
        for rid, task in tasks.items():
            await node.start_task(rid, task)
        await rec.wait_for(lambda: all(len(rec.chunks(t.task_id)) >= 5 for t in tasks.values()))
        os.kill(node["rank1"].pid or 0, signal.SIGKILL)  # rank0 is stopped with it
        await rec.wait_for(lambda: all(rec.terminal(t.task_id) for t in tasks.values()), 60)
    for task in tasks.values():
        assert rec.terminal(task.task_id) == [TaskStatus.Complete], task.task_id
        chunks = rec.chunks(task.task_id)
        assert [c.index for c in chunks] == list(range(task.max_tokens))
        assert [c.text for c in chunks] == list(echo_tokens(task.prompt, task.max_tokens))
    resumed = {e.task_id: e for e in rec.of(TaskRecovered)}
    assert set(resumed) == {t.task_id for t in tasks.values()}  # the stopped sibling's too
    assert all(e.mode == "resume" and e.from_index >= 5 for e in resumed.values())


async def test_only_the_supervisor_sets_where_a_task_resumes() -> None:
    async with restarting() as r:
        await r.ready()
        forged = Generate(task_id="f", prompt="a b", max_tokens=4, resume_from=("a ",))
        with pytest.raises(ValueError, match="resume_from"):
            await r.sup.start_task(forged)
        await r.sup.start_task(Generate(task_id="f", prompt="a b", max_tokens=4))  # not taken
        await r.rec.wait_for(lambda: r.rec.terminal("f") == [TaskStatus.Complete])
