"""RestartingSupervisor with real runner processes and real signals, both anyio backends."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import anyio
import pytest

from supervisor import (
    RestartPolicy,
    RunnerFailedError,
    RunnerRestarting,
    RunnerSpec,
    RunnerUnavailableError,
    SupervisorClosedError,
    SupervisorGaveUp,
)
from supervisor.protocol import (
    Generate,
    LoadModel,
    RunnerFailed,
    RunnerLoading,
    RunnerStatusUpdated,
    Shutdown,
    TaskStatus,
)
from tests.support.restart_harness import poll_until, restarting

pytestmark = pytest.mark.anyio


async def test_restart_after_sigkill_reaches_ready_again() -> None:
    async with restarting(RunnerSpec(engine="echo", options={"token_delay": 0.001})) as r:
        await r.ready()
        first_pid = r.sup.pid
        assert r.sup.phase == "ready"
        assert (r.sup.incarnation, r.sup.restarts) == (1, 0)
        assert first_pid is not None
        killed_at = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        await r.ready(count=2)
        mttr = time.monotonic() - killed_at
        assert (r.sup.incarnation, r.sup.restarts) == (2, 1)
        assert r.sup.pid not in (None, first_pid)
        assert r.sup.phase == "ready"
        # The new incarnation serves tasks.
        await r.sup.start_task(Generate(task_id="g", prompt="after restart", max_tokens=3))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
    print(f"SIGKILL -> replacement Ready in {mttr * 1000:.0f} ms (echo, zero backoff)")
    (failure,) = r.rec.failures()
    assert failure.signal == signal.SIGKILL
    (restart,) = r.rec.of(RunnerRestarting)
    assert (restart.runner_id, restart.incarnation, restart.delay, restart.restarts) == (
        "r1",
        2,
        0.0,
        1,
    )
    # One stream, in order: failure, restart notice, then the new incarnation's statuses.
    kinds = [
        type(e.status).__name__ if isinstance(e, RunnerStatusUpdated) else type(e).__name__
        for _, e in r.rec.events
        if isinstance(e, (RunnerStatusUpdated, RunnerRestarting))
    ]
    i = kinds.index("RunnerFailed")
    assert kinds[i : i + 3] == ["RunnerFailed", "RunnerRestarting", "RunnerIdle"]
    assert kinds.count("RunnerReady") >= 2
    assert r.rec.of(SupervisorGaveUp) == []
    assert r.sup.phase == "stopped"


async def test_never_mode_does_not_restart_and_says_so() -> None:
    async with restarting(policy=RestartPolicy(mode="never")) as r:
        await r.ready()
        os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.rec.wait_for(lambda: bool(r.rec.of(SupervisorGaveUp)))
        with anyio.fail_after(10):
            await r.sup.wait_finished()
        with pytest.raises(RunnerUnavailableError, match="gave up: restart policy") as exc:
            await r.sup.start_task(Generate(task_id="late", prompt="x"))
    # Unavailable is not a failure of this task's runner: callers tell the two apart.
    assert not isinstance(exc.value, RunnerFailedError)
    assert exc.value.last_failure == r.rec.failures()[0]
    (gave_up,) = r.rec.of(SupervisorGaveUp)
    assert gave_up.reason == "restart policy is 'never'"
    assert gave_up.restarts == 0
    assert gave_up.last_failure == r.rec.failures()[0]
    assert r.sup.incarnation == 1
    assert r.sup.phase == "gave_up"


async def test_gives_up_after_the_intensity_limit() -> None:
    policy = RestartPolicy(backoff_base=0.0, max_restarts=2, restart_window=120.0)
    async with restarting(policy=policy) as r:
        for n in range(1, 4):
            await r.ready(count=n)
            os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.rec.wait_for(lambda: bool(r.rec.of(SupervisorGaveUp)), within=20)
        with anyio.fail_after(10):
            await r.sup.wait_finished()
    (gave_up,) = r.rec.of(SupervisorGaveUp)
    assert gave_up.reason == "gave up after 2 restarts in 120 s"
    assert gave_up.restarts == 2
    assert len(r.rec.failures()) == 3  # exactly one RunnerFailed per incarnation
    assert len(r.rec.of(RunnerRestarting)) == 2
    assert r.sup.gave_up
    assert r.sup.phase == "gave_up"
    assert isinstance(r.rec.events[-1][1], SupervisorGaveUp)  # the final word


@pytest.mark.slow
async def test_crash_loop_during_load_stops_early() -> None:
    spec = RunnerSpec(engine="tests.support.engines:CrashOnLoadEngine")
    policy = RestartPolicy(backoff_base=0.0, max_restarts=100, crash_loop_threshold=3)
    async with restarting(spec, policy=policy) as r:
        await r.rec.wait_for(lambda: bool(r.rec.of(SupervisorGaveUp)), within=60)
        with anyio.fail_after(10):
            await r.sup.wait_finished()
    (gave_up,) = r.rec.of(SupervisorGaveUp)
    assert gave_up.reason == "crash loop: 3 consecutive failures during load/warm-up"
    failures = r.rec.failures()
    assert len(failures) == 3
    assert all(f.reason == "crashed" and "weights are corrupt" in f.error_message for f in failures)
    assert r.rec.ready_count() == 0
    assert r.sup.restarts == 2  # far below max_restarts: stopped early


@pytest.mark.slow
async def test_backoff_grows_then_resets_after_a_healthy_period() -> None:
    policy = RestartPolicy(
        backoff_base=0.3, backoff_factor=2.0, backoff_cap=10.0, jitter=0.0, healthy_after=2.0
    )
    async with restarting(policy=policy) as r:
        gaps = []
        for n in range(1, 4):
            await r.ready(count=n)
            if n == 3:
                await anyio.sleep(2.5)  # healthy for longer than healthy_after
            os.kill(r.sup.pid or 0, signal.SIGKILL)
            await r.rec.wait_for(lambda n=n: len(r.rec.of(RunnerRestarting)) >= n)
            t_fail = r.rec.failure_time() if n == 1 else _nth_failure_time(r.rec, n)
            await r.rec.wait_for(lambda n=n: r.sup.incarnation == n + 1, within=30)
            gaps.append(time.monotonic() - t_fail)
        await r.ready(count=4)
    delays = [e.delay for e in r.rec.of(RunnerRestarting)]
    assert delays == [0.3, 0.6, 0.3]
    # The wait really happened (the next incarnation started no earlier than its delay).
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay - 0.05, (gaps, delays)


def _nth_failure_time(rec: object, n: int) -> float:
    times = [
        t
        for t, e in rec.events  # type: ignore[attr-defined]
        if isinstance(e, RunnerStatusUpdated) and isinstance(e.status, RunnerFailed)
    ]
    return float(times[n - 1])


@pytest.mark.slow
async def test_unacknowledged_tasks_are_requeued_to_the_next_incarnation() -> None:
    spec = RunnerSpec(
        engine="tests.support.node_engines:SlowPrefillEngine", options={"prefill_sleep": 60}
    )
    policy = RestartPolicy(backoff_base=0.0, requeue_unacknowledged=True)
    async with restarting(spec, policy=policy) as r:
        await r.ready()
        # The runner acknowledges "busy", then sits in a long prefill without reading
        # its task pipe: the next three stay unacknowledged.
        await r.sup.start_task(Generate(task_id="busy", prompt="slow", max_tokens=2))
        acked: list[str] = []

        async def submit(tid: str) -> None:
            await r.sup.start_task(Generate(task_id=tid, prompt="quick", max_tokens=2))
            acked.append(tid)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(submit, f"q{i}")
            await poll_until(lambda: len(r.sup.pending) == 3)
            assert acked == []
            os.kill(r.sup.pid or 0, signal.SIGKILL)
        ids = ["q0", "q1", "q2"]
        assert sorted(acked) == ids
        await r.rec.wait_for(lambda: all(r.rec.terminal(t) == [TaskStatus.Complete] for t in ids))
    assert r.rec.terminal("busy") == [TaskStatus.Failed]  # acknowledged: at-most-once
    for tid in ids:
        assert r.rec.terminal(tid) == [TaskStatus.Complete], tid
        assert len(r.rec.chunks(tid)) == 2
    assert r.sup.incarnation == 2


@pytest.mark.slow
async def test_without_requeue_unacknowledged_tasks_fail() -> None:
    spec = RunnerSpec(
        engine="tests.support.node_engines:SlowPrefillEngine", options={"prefill_sleep": 60}
    )
    async with restarting(spec, policy=RestartPolicy(backoff_base=0.0)) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="busy", prompt="slow", max_tokens=2))
        errors: list[BaseException] = []

        async def submit(tid: str) -> None:
            try:
                await r.sup.start_task(Generate(task_id=tid, prompt="quick", max_tokens=2))
            except RunnerFailedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "q0")
            await poll_until(lambda: len(r.sup.pending) == 1)
            os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.ready(count=2)
    assert len(errors) == 1
    assert r.rec.terminal("q0") == [TaskStatus.Failed]
    assert r.rec.terminal("busy") == [TaskStatus.Failed]


async def test_start_task_waits_for_ready_and_refuses_load_and_warmup() -> None:
    spec = RunnerSpec(engine="echo", options={"load_time": 0.5})
    async with restarting(spec) as r:
        with pytest.raises(ValueError, match="drives LoadModel"):
            await r.sup.start_task(LoadModel(task_id="l"))
        # Submitted before Ready: waits, then goes through.
        await r.sup.start_task(Generate(task_id="early", prompt="x", max_tokens=1))
        assert r.sup.phase in ("ready", "running")
        await r.rec.wait_for(lambda: r.rec.terminal("early") == [TaskStatus.Complete])


async def test_start_task_gives_up_waiting_after_within() -> None:
    spec = RunnerSpec(engine="echo", options={"load_time": 30})
    async with restarting(spec) as r:
        # A cold machine may take longer than 0.3 s just to start the interpreter.
        await r.rec.wait_for(
            lambda: any(isinstance(e.status, RunnerLoading) for e in r.rec.of(RunnerStatusUpdated))
        )
        t0 = time.monotonic()
        with pytest.raises(RunnerUnavailableError, match=r"not ready within 0\.3s"):
            await r.sup.start_task(Generate(task_id="g", prompt="x"), within=0.3)
        assert time.monotonic() - t0 < 5
        assert r.sup.phase == "loading"


async def test_shutdown_during_backoff_stops_at_once() -> None:
    policy = RestartPolicy(backoff_base=30.0, jitter=0.0)
    async with restarting(policy=policy) as r:
        await r.ready()
        os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.rec.wait_for(lambda: bool(r.rec.of(RunnerRestarting)))
        assert r.sup.phase == "restarting"
        assert 28 < (r.sup.retry_after or 0) <= 30
        t0 = time.monotonic()
        r.sup.shutdown()
        with anyio.fail_after(5):
            await r.sup.wait_finished()
        assert time.monotonic() - t0 < 5
        with pytest.raises(SupervisorClosedError, match="is stopped; no new tasks"):
            await r.sup.start_task(Generate(task_id="late", prompt="x"))
    assert r.sup.incarnation == 1
    assert r.sup.phase == "stopped"
    assert r.rec.of(SupervisorGaveUp) == []


async def test_shutdown_while_loading_is_graceful_not_a_failure() -> None:
    spec = RunnerSpec(engine="echo", options={"load_time": 0.5})
    async with restarting(spec) as r:
        await r.rec.wait_for(lambda: r.sup.phase == "loading")
        r.sup.shutdown()
        with anyio.fail_after(15):
            await r.sup.wait_finished()
    assert r.rec.failures() == []
    assert r.sup.incarnation == 1
    assert r.sup.current is not None
    assert r.sup.current.exit_code == 0


@pytest.mark.parametrize(("mode", "restarted"), [("on-failure", False), ("always", True)])
async def test_clean_exit_restarts_only_in_always_mode(mode: str, restarted: bool) -> None:
    policy = RestartPolicy(mode=mode, backoff_base=0.0)  # type: ignore[arg-type]
    async with restarting(policy=policy) as r:
        await r.ready()
        await r.sup.start_task(Shutdown(task_id="host-stop"))
        if restarted:
            await r.ready(count=2)
            assert r.sup.incarnation == 2
        else:
            with anyio.fail_after(15):
                await r.sup.wait_finished()
            assert r.sup.phase == "stopped"
    assert r.rec.failures() == []
    assert len(r.rec.of(RunnerRestarting)) == (1 if restarted else 0)


async def _poll(pred: Callable[[], bool], within: float) -> None:
    with anyio.fail_after(within):
        while not pred():  # noqa: ASYNC110 - nothing signals a spare runner's pid
            await anyio.sleep(0.02)


async def test_prespawned_spare_takes_over_after_a_kill() -> None:
    policy = RestartPolicy(backoff_base=0.0, prespawn=True)
    async with restarting(policy=policy) as r:
        await r.ready()
        # the spare's own pid is known once its runner reported it: no event says so
        await _poll(lambda: r.sup.spare_pid is not None, within=30)
        spare = r.sup.spare_pid
        await anyio.sleep(0.5)  # let the spare finish its own start-up
        killed_at = time.monotonic()
        os.kill(r.sup.pid or 0, signal.SIGKILL)
        await r.ready(count=2)
        mttr = time.monotonic() - killed_at
        assert r.sup.pid == spare  # the spare became the new incarnation
        assert r.sup.incarnation == 2
        # ... and a new spare is started for the next time.
        await _poll(lambda: r.sup.spare_pid not in (None, spare), within=30)
        await r.sup.start_task(Generate(task_id="g", prompt="spare works", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
    print(f"SIGKILL -> spare Ready in {mttr * 1000:.0f} ms")
    assert mttr < 5.0
    assert len(r.rec.failures()) == 1  # spares that were shut down unused are not failures
