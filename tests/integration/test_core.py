"""RunnerSupervisor core: real runner processes, real signals, both anyio backends."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time

import anyio
import psutil
import pytest

from supervisor import DuplicateTaskError, RunnerFailedError, RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE
from supervisor.errors import ReservedTaskIdError, SupervisorClosedError
from supervisor.protocol import (
    BaseTask,
    ChunkGenerated,
    Generate,
    LoadModel,
    RunnerFailed,
    RunnerIdle,
    RunnerLoaded,
    RunnerLoading,
    RunnerReady,
    RunnerRunning,
    RunnerShutdown,
    RunnerShuttingDown,
    RunnerStatusUpdated,
    RunnerWarmingUp,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)
from tests.support.engines import UnknownTask
from tests.support.harness import supervised


def _rebuild_only_in(pid: int, task_id: str) -> BaseTask:
    if os.getpid() != pid:
        raise ImportError("this task kind only exists in the parent")
    return ParentOnlyTask(task_id=task_id)


@dataclasses.dataclass(frozen=True, slots=True)
class ParentOnlyTask(BaseTask):
    """Pickles fine, but cannot be unpickled in the runner."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_only_in, (os.getpid(), self.task_id))


pytestmark = pytest.mark.anyio


async def test_happy_path_load_warmup_generate_shutdown() -> None:
    async with supervised(token_delay=0.001) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="one two three", max_tokens=7))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
        chunks = r.rec.chunks("g")
        assert [c.index for c in chunks] == list(range(7))
        assert "".join(c.text for c in chunks) == "one two three one two three one "
        assert r.sup.in_progress == {}
        assert r.sup.pending == {}
        r.sup.shutdown()
        await r.finished()
    statuses = [type(e.status) for e in r.rec.of(RunnerStatusUpdated)]
    assert statuses == [
        RunnerIdle,
        RunnerLoading,
        RunnerLoaded,
        RunnerWarmingUp,
        RunnerReady,
        RunnerRunning,
        RunnerReady,
        RunnerShuttingDown,
        RunnerShutdown,
    ]
    assert r.rec.failures() == []
    assert r.sup.exit_code == 0
    assert isinstance(r.sup.status, RunnerShutdown)
    for tid in ("load", "warmup", "g"):
        assert r.rec.task_statuses(tid) == [TaskStatus.Running, TaskStatus.Complete]
        assert [e.task_id for e in r.rec.of(TaskAcknowledged)].count(tid) == 1


async def test_sigkill_is_reported_as_signal_9_quickly() -> None:
    async with supervised(token_delay=0.01) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=1000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 2)
        killed_at = time.monotonic()
        os.kill(r.sup.pid, signal.SIGKILL)
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=5)
        latency = r.rec.failure_time() - killed_at
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "signalled"
    assert failure.signal == 9
    assert failure.exit_code is None
    assert failure.error_message == "signal=9 (Killed)"
    assert failure.detected_by in ("sentinel", "channel")
    assert any("SIGKILL" in line or "OOM" in line for line in failure.diagnostics)
    print(f"SIGKILL -> RunnerFailed in {latency * 1000:.1f} ms")
    assert latency < 0.5, f"death took {latency:.3f}s to report (event driven: expect ~ms)"
    assert r.rec.terminal("g") == [TaskStatus.Failed]


async def test_nonzero_exit_is_reported_with_exit_code() -> None:
    spec = RunnerSpec(engine="tests.support.engines:ExitEngine", options={"code": 7, "after": 2})
    async with supervised(spec) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=10))
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "exited"
    assert failure.exit_code == 7
    assert failure.signal is None
    assert failure.error_message == "exitcode=7"
    assert len(r.rec.chunks("g")) == 2  # chunks written before death are not lost
    assert r.rec.terminal("g") == [TaskStatus.Failed]


async def test_exit_0_without_shutdown_is_a_failure() -> None:
    spec = RunnerSpec(engine="tests.support.engines:ExitEngine", options={"code": 0, "after": 1})
    async with supervised(spec) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=10))
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "exited"
    assert failure.exit_code == 0
    assert "without a Shutdown" in failure.error_message


async def test_sigstop_freeze_is_detected_by_heartbeat() -> None:
    async with supervised(token_delay=0.05) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=1000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 1)
        stopped_at = time.monotonic()
        os.kill(r.sup.pid, signal.SIGSTOP)
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=10)
        latency = r.rec.failure_time() - stopped_at
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "unresponsive"
    assert failure.detected_by == "heartbeat"
    assert "stopped" in failure.error_message
    print(f"SIGSTOP -> RunnerFailed in {latency:.2f}s")
    assert latency <= 3.5
    assert r.rec.terminal("g") == [TaskStatus.Failed]
    assert r.sup.exit_code == -signal.SIGKILL  # a frozen runner is killed, not left stopped
    # The age is the heartbeat watch's: stale for (at least) the debounce before the verdict.
    age = r.sup.heartbeat_age
    assert age is not None
    assert age >= 2 * SupervisorConfig().heartbeat_check_interval
    later = r.sup.heartbeat_age
    assert later is not None
    assert later >= age


async def test_pending_start_task_waiters_are_released() -> None:
    spec = RunnerSpec(engine="tests.support.engines:SleepyLoadEngine", options={"load_sleep": 30})
    errors: list[BaseException] = []
    async with supervised(spec) as r:
        await r.sup.start_task(LoadModel(task_id="load"))

        async def submit(i: int) -> None:
            try:
                await r.sup.start_task(Generate(task_id=f"g{i}", prompt="x"))
            except RunnerFailedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(submit, i)
            await anyio.sleep(0.3)
            assert set(r.sup.pending) == {"g0", "g1", "g2"}  # the runner is busy loading
            os.kill(r.sup.pid, signal.SIGKILL)
        await r.finished()
        with pytest.raises(RunnerFailedError) as late:
            await r.sup.start_task(Generate(task_id="late", prompt="x"))
    assert len(errors) == 3
    (failure,) = r.rec.failures()
    assert all(isinstance(e, RunnerFailedError) and e.status == failure for e in errors)
    assert late.value.status == failure
    for tid in ("load", "g0", "g1", "g2"):
        assert r.rec.terminal(tid) == [TaskStatus.Failed], tid


async def test_every_in_flight_task_gets_exactly_one_failed() -> None:
    async with supervised(token_delay=0.01) as r:
        await r.ready()
        ids = [f"g{i}" for i in range(5)]
        for tid in ids:
            await r.sup.start_task(Generate(task_id=tid, prompt="x", max_tokens=500))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g0")) >= 3)
        os.kill(r.sup.pid, signal.SIGKILL)
        await r.finished()
    for tid in ids:
        assert r.rec.terminal(tid) == [TaskStatus.Failed], tid
    assert len(r.rec.failures()) == 1


@pytest.mark.parametrize("attempt", range(3))
async def test_exactly_one_runner_failed_when_detectors_race(attempt: int) -> None:
    # Poll, heartbeat and progress all checking every few ms, plus sentinel and EOF.
    config = SupervisorConfig(
        poll_interval=0.002,
        heartbeat_interval=0.002,
        heartbeat_check_interval=0.02,
        heartbeat_stale_checks=2,
        progress_check_interval=0.002,
        decode_timeout=0.2,
    )
    async with supervised(config=config, token_delay=0.001) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=100000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 5)
        os.kill(r.sup.pid, signal.SIGSTOP)  # heartbeat and progress both go stale...
        await anyio.sleep(0.02 * attempt)
        # ...while sentinel, EOF and poll see death. The 20 ms heartbeat check may have
        # found the freeze and reaped the runner already: then there is nothing to kill.
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.sup.pid, signal.SIGKILL)
        await r.finished()
        await anyio.sleep(0.05)
    assert len(r.rec.failures()) == 1
    assert r.rec.terminal("g") == [TaskStatus.Failed]


async def test_cancel_between_tokens_then_keep_serving() -> None:
    async with supervised(token_delay=0.01) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="long", prompt="x", max_tokens=10000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("long")) >= 2)
        await r.sup.cancel_task("long")  # awaitable or not: it never blocks
        await r.rec.wait_for(lambda: bool(r.rec.terminal("long")))
        assert r.rec.terminal("long") == [TaskStatus.Cancelled]
        assert len(r.rec.chunks("long")) < 10000
        await r.sup.start_task(Generate(task_id="next", prompt="a b", max_tokens=3))
        await r.rec.wait_for(lambda: r.rec.terminal("next") == [TaskStatus.Complete])
        assert isinstance(r.sup.status, RunnerReady)
        # cancelling a queued task before it runs
        await r.sup.start_task(Generate(task_id="busy", prompt="x", max_tokens=10000))
        await r.sup.start_task(Generate(task_id="queued", prompt="x", max_tokens=5))
        r.sup.cancel_task("queued")
        r.sup.cancel_task("busy")
        await r.rec.wait_for(lambda: bool(r.rec.terminal("queued") and r.rec.terminal("busy")))
        assert r.rec.chunks("queued") == []
        assert r.rec.terminal("queued") == [TaskStatus.Cancelled]
    assert r.rec.failures() == []


async def test_duplicate_task_ids_are_refused() -> None:
    async with supervised(token_delay=0.01) as r:
        await r.ready()
        with pytest.raises(DuplicateTaskError):
            await r.sup.start_task(LoadModel(task_id="load"))  # already finished
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=1000))
        with pytest.raises(DuplicateTaskError):
            await r.sup.start_task(Generate(task_id="g", prompt="y"))
        r.sup.cancel_task("g")
        await r.rec.wait_for(lambda: bool(r.rec.terminal("g")))
    assert r.rec.terminal("g") == [TaskStatus.Cancelled]
    assert len([c for c in r.rec.chunks("g") if c.text.startswith("y")]) == 0


async def test_host_ids_in_the_probe_namespace_are_refused_at_once() -> None:
    # Probes are "__probe-<n>": a host task that took the id of an unanswered probe had
    # its acknowledgement taken for the probe's, and its start_task hung.
    config = SupervisorConfig(probe_interval=0.1, probe_timeout=5)
    async with supervised(config=config, token_delay=0.001) as r:
        await r.ready()
        with anyio.fail_after(10):
            while r.sup.probes_sent < 1:  # noqa: ASYNC110 - probes emit no event to await
                await anyio.sleep(0.05)
        for n in (r.sup.probes_sent, r.sup.probes_sent + 1):
            with anyio.fail_after(1), pytest.raises(ReservedTaskIdError):
                await r.sup.start_task(Generate(task_id=f"__probe-{n}", prompt="x"))
        assert r.sup.pending == {}
        await r.sup.start_task(Generate(task_id="ok", prompt="a b", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("ok") == [TaskStatus.Complete])
    assert r.rec.failures() == []


@pytest.mark.parametrize("stop", ["shutdown", "kill"])
async def test_new_tasks_are_refused_once_a_stop_was_asked(stop: str) -> None:
    async with supervised() as r:
        await r.ready()
        assert getattr(r.sup, stop)() is DONE
        with pytest.raises(SupervisorClosedError, match="shutting down"):
            await r.sup.start_task(Generate(task_id="late", prompt="x"))
        await r.finished()
        with pytest.raises(SupervisorClosedError, match="shut down"):
            await r.sup.start_task(Generate(task_id="later", prompt="x"))
        assert r.sup.shutdown() is DONE  # and every stop call after the end too
        assert r.sup.kill() is DONE
        assert r.sup.cancel_task("later") is DONE
    assert r.rec.failures() == []
    assert r.rec.terminal("late") == []
    assert r.rec.terminal("later") == []


async def test_bad_input_is_refused_and_the_runner_keeps_serving() -> None:
    class Local(BaseTask):
        pass

    async with supervised() as r:
        await r.ready()
        with pytest.raises(ValueError, match="max_tokens"):
            await r.sup.start_task(Generate(task_id="neg", prompt="x", max_tokens=-1))
        with pytest.raises(TypeError, match="prompt"):
            await r.sup.start_task(Generate(task_id="typ", prompt=3))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="task_id"):
            await r.sup.start_task(Generate(task_id="", prompt="x"))
        with pytest.raises(TypeError, match="cannot send"):
            await r.sup.start_task(Local(task_id="local"))  # cannot even be pickled
        # A kind the runner's engine does not know: that task fails, nothing else does.
        await r.sup.start_task(UnknownTask(task_id="u"))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("u")))
        assert r.rec.terminal("u") == [TaskStatus.Failed]
        # A kind the runner cannot even import: fails alone too.
        await r.sup.start_task(ParentOnlyTask(task_id="p"))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("p")))
        assert r.rec.terminal("p") == [TaskStatus.Failed]
        (failed_p,) = [e for e in r.rec.of(TaskStatusUpdated) if e.task_id == "p"]
        assert "cannot decode" in (failed_p.error or "")
        # A task in the wrong state fails alone too.
        await r.sup.start_task(Warmup(task_id="again"))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("again")))
        assert r.rec.terminal("again") == [TaskStatus.Failed]
        await r.sup.start_task(Generate(task_id="ok", prompt="still here", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("ok") == [TaskStatus.Complete])
    assert r.rec.failures() == []


async def test_engine_exception_is_a_crash_with_traceback() -> None:
    spec = RunnerSpec(engine="tests.support.engines:CrashOnLoadEngine")
    async with supervised(spec) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        await r.finished()
        with pytest.raises(RunnerFailedError):
            await r.sup.start_task(Warmup(task_id="w"))
    (failure,) = r.rec.failures()
    assert failure.reason == "crashed"
    assert failure.exit_code == 1
    assert "ValueError: weights are corrupt" in failure.error_message
    assert any(line.startswith("Traceback") for line in failure.diagnostics)
    assert any("weights are corrupt" in line for line in failure.diagnostics)


async def test_shutdown_escalates_to_sigterm_for_a_stuck_runner() -> None:
    spec = RunnerSpec(engine="tests.support.engines:SleepyLoadEngine", options={"load_sleep": 60})
    config = SupervisorConfig(shutdown_grace=0.3, stop_grace=1.0)
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        queued = Warmup(task_id="w")  # sent, but the runner is stuck before reading it

        async def start_queued() -> None:
            with pytest.raises(SupervisorClosedError, match="before acknowledging"):
                await r.sup.start_task(queued)

        async with anyio.create_task_group() as tg:
            tg.start_soon(start_queued)
            await anyio.sleep(0.1)
            assert "w" in r.sup.pending
            t0 = time.monotonic()
            r.sup.shutdown()
        await r.finished()
        took = time.monotonic() - t0
    assert r.rec.failures() == []  # asked to stop, and it stopped: not a failure
    assert isinstance(r.sup.status, RunnerShutdown)
    assert r.sup.exit_code == -signal.SIGTERM
    assert r.rec.terminal("load") == [TaskStatus.Failed]
    assert r.rec.terminal("w") == [TaskStatus.Failed]  # its one end, never acknowledged
    assert took < 5


async def test_cancelling_the_host_task_group_leaves_nothing() -> None:
    import math

    from supervisor import RunnerSupervisor
    from supervisor.protocol import BaseEvent

    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    sup = RunnerSupervisor.create(spec=RunnerSpec(options={"token_delay": 0.01}), event_sender=send)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        await sup.start_task(LoadModel(task_id="load"))
        pending = anyio.Event()

        async def waiter() -> None:
            await sup.start_task(Warmup(task_id="w"))
            await sup.start_task(Generate(task_id="g", prompt="x", max_tokens=10**6))
            pending.set()
            await anyio.sleep_forever()

        tg.start_soon(waiter)
        await pending.wait()
        tg.cancel_scope.cancel()
    assert sup.finished
    assert not _alive(sup.pid)
    send.close()
    recv.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_chunks_keep_order_under_load() -> None:
    async with supervised() as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="big", prompt="a b c d", max_tokens=20000))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("big")), within=30)
    chunks = r.rec.chunks("big")
    assert [c.index for c in chunks] == list(range(20000))
    assert all(isinstance(c, ChunkGenerated) for c in chunks)
    assert r.rec.terminal("big") == [TaskStatus.Complete]


async def test_failure_fields_are_a_frozen_dataclass() -> None:
    failure = RunnerFailed(reason="exited", error_message="exitcode=1", exit_code=1)
    with pytest.raises(AttributeError):
        failure.reason = "crashed"  # type: ignore[misc]


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
async def test_start_methods(start_method: str) -> None:
    config = SupervisorConfig(start_method=start_method)  # type: ignore[arg-type]
    async with supervised(config=config, token_delay=0.01) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=1000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 1)
        os.kill(r.sup.pid, signal.SIGKILL)
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.signal == 9
    assert r.rec.terminal("g") == [TaskStatus.Failed]


def test_config_rejects_plain_fork_and_nonsense() -> None:
    with pytest.raises(ValueError, match="never plain fork"):
        SupervisorConfig(start_method="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_timeout"):
        SupervisorConfig(decode_timeout=0)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        SupervisorConfig(heartbeat_interval=1.5, heartbeat_check_interval=0.5)
