"""Liveness in depth: wedged loops, no false kills, escalation, process trees, evidence."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from supervisor import RunnerSpec, SupervisorConfig
from supervisor.protocol import (
    Generate,
    LoadModel,
    RunnerLoaded,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)
from tests.support.harness import supervised

pytestmark = pytest.mark.anyio


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
async def test_wedged_main_loop_with_live_heartbeat_is_stalled() -> None:
    # EXO RUNNER MUST HANG: the main loop sleeps forever, the heartbeat thread beats on.
    config = SupervisorConfig(chaos=True, decode_timeout=1.0)
    async with supervised(config=config, token_delay=0.01) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="EXO RUNNER MUST HANG", max_tokens=50))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 1)
        t0 = time.monotonic()
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=10)
        latency = r.rec.failure_time() - t0
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "stalled"
    assert failure.detected_by == "progress"
    assert "decode" in failure.error_message
    print(f"wedge (decode_timeout=1s) detected in {latency:.2f}s")
    assert latency < 4
    # the stack dump (SIGUSR1 -> faulthandler) shows where the main loop is stuck
    assert any("most recent call first" in line for line in failure.diagnostics)
    assert any("_hang" in line for line in failure.diagnostics)
    assert r.rec.terminal("g") == [TaskStatus.Failed]


async def test_load_blocked_in_sleep_misses_its_deadline() -> None:
    spec = RunnerSpec(engine="tests.support.engines:SleepyLoadEngine", options={"load_sleep": 60})
    config = SupervisorConfig(load_timeout=0.8, stop_grace=0.5)
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "stalled"
    assert "phase load" in failure.error_message
    assert r.rec.terminal("load") == [TaskStatus.Failed]


@pytest.mark.parametrize("dump_stacks", [True, False])
async def test_stack_dump_is_asked_for_and_says_so_in_the_evidence(dump_stacks: bool) -> None:
    spec = RunnerSpec(engine="tests.support.engines:SleepyLoadEngine", options={"load_sleep": 60})
    config = SupervisorConfig(load_timeout=0.8, stop_grace=0.5, dump_stacks=dump_stacks)
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "stalled"
    notes = [line for line in failure.diagnostics if "stack dump requested" in line]
    dumped = any("most recent call first" in line for line in failure.diagnostics)
    if dump_stacks:
        assert notes == [f"stack dump requested (SIGUSR1) after: {failure.error_message}"]
        assert failure.diagnostics[0] == notes[0]  # it introduces the stacks that follow
        assert dumped
    else:
        assert notes == []
        assert not dumped


@pytest.mark.slow
async def test_gil_held_busy_in_native_code_is_not_killed() -> None:
    # sum(range(n)) never leaves C: the heartbeat thread starves for ~4 s, more than
    # twice the freeze bound, but psutil sees CPU time advancing: busy, not frozen.
    spec = RunnerSpec(engine="tests.support.engines:GilBusyLoadEngine", options={"gil_seconds": 4})
    config = SupervisorConfig()
    assert config.freeze_bound < 4
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("load")), within=30)
        assert r.rec.terminal("load") == [TaskStatus.Complete]
        assert isinstance(r.sup.status, RunnerLoaded)
    assert r.rec.failures() == []


@pytest.mark.slow
async def test_gil_held_while_sleeping_counts_as_frozen() -> None:
    # Holding the GIL and sleeping burns no CPU: indistinguishable from a deadlock.
    spec = RunnerSpec(
        engine="tests.support.engines:GilSleepLoadEngine", options={"gil_seconds": 60}
    )
    config = SupervisorConfig(stop_grace=0.5)
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        t0 = time.monotonic()
        await r.finished(within=20)
        took = time.monotonic() - t0
    (failure,) = r.rec.failures()
    assert failure.reason == "unresponsive"
    assert failure.detected_by == "heartbeat"
    assert "no CPU progress" in failure.error_message
    assert took < config.freeze_bound + 3


@pytest.mark.parametrize("how", ["sigkill", "stall"])
async def test_grandchildren_die_with_the_runner(how: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    spec = RunnerSpec(
        engine="tests.support.engines:GrandchildEngine", options={"pid_file": str(pid_file)}
    )
    config = SupervisorConfig(decode_timeout=0.5, stop_grace=0.5)
    async with supervised(spec, config) as r:
        await r.ready()
        grandchild = int(pid_file.read_text())
        assert _alive(grandchild)
        if how == "sigkill":
            os.kill(r.sup.pid, signal.SIGKILL)
        else:
            os.kill(r.sup.pid, signal.SIGSTOP)
        await r.finished()
    assert len(r.rec.failures()) == 1
    deadline = time.monotonic() + 2
    while _alive(grandchild) and time.monotonic() < deadline:
        await _sleep(0.02)
    assert not _alive(grandchild), "the runner's grandchild outlived it"


async def test_crash_evidence_has_traceback_and_oom_anchor() -> None:
    spec = RunnerSpec(engine="tests.support.engines:NoisyEngine")
    async with supervised(spec) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=5))
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "crashed"
    assert "MemoryError" in failure.error_message
    text = "\n".join(failure.diagnostics)
    assert "Traceback (most recent call last):" in text
    assert "CUDA out of memory" in text
    assert "allocating the KV cache" in text  # the runner's own stdout, captured
    assert len(failure.diagnostics) <= SupervisorConfig().diagnostics_lines


async def test_resource_sample_is_exposed() -> None:
    config = SupervisorConfig(poll_interval=0.1)
    async with supervised(config=config) as r:
        await r.ready()
        ready_at = time.monotonic()
        deadline = ready_at + 5
        while time.monotonic() < deadline and (
            r.sup.resources is None or r.sup.resources.when < ready_at
        ):
            await _sleep(0.05)
        sample = r.sup.resources
        assert sample is not None
        assert sample.rss > 10 * 2**20
        assert 0 <= sample.cpu_percent < 400
        assert r.sup.heartbeat_age is not None


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


@pytest.mark.parametrize("mode", ["hang", "raise"])
async def test_probe_failures_fail_the_runner_after_debounce(mode: str) -> None:
    spec = RunnerSpec(engine="tests.support.engines:ProbeEngine", options={"mode": mode, "good": 2})
    config = SupervisorConfig(
        probe_interval=0.2, probe_timeout=0.5, probe_failures=2, stop_grace=0.5
    )
    async with supervised(spec, config) as r:
        await r.ready()
        await r.finished(within=20)
    (failure,) = r.rec.failures()
    assert failure.reason == "probe_failed"
    assert failure.detected_by == "probe"
    assert r.sup.probes_sent >= 3
    # probes are the supervisor's business: none of their events reach the host
    probe_events = [
        e
        for e in r.rec.of(TaskAcknowledged) + r.rec.of(TaskStatusUpdated)
        if e.task_id.startswith("__probe")
    ]
    assert probe_events == []


async def test_broken_device_fails_the_runner_at_once() -> None:
    spec = RunnerSpec(
        engine="tests.support.engines:ProbeEngine", options={"mode": "device", "good": 1}
    )
    config = SupervisorConfig(probe_interval=0.2, probe_failures=3)
    async with supervised(spec, config) as r:
        await r.ready()
        await r.finished(within=20)
    (failure,) = r.rec.failures()
    assert failure.reason == "probe_failed"
    assert "illegal memory access" in failure.error_message
    assert r.sup.probes_sent == 2  # no debounce for a device that says it is broken


async def test_healthy_probes_never_fail_and_yield_to_work() -> None:
    config = SupervisorConfig(probe_interval=0.1, probe_timeout=2)
    async with supervised(config=config, token_delay=0.001) as r:
        await r.ready()
        for i in range(5):
            await _sleep(0.15)
            await r.sup.start_task(Generate(task_id=f"g{i}", prompt="x", max_tokens=3))
        await r.rec.wait_for(lambda: r.rec.terminal("g4") == [TaskStatus.Complete])
        await _sleep(0.5)
        assert r.sup.probes_sent >= 2
    assert r.rec.failures() == []
    assert all(e.runner_id == r.sup.runner_id for e in r.rec.of(RunnerStatusUpdated))


async def test_escalation_dumps_stacks_then_sigterm_then_sigkill() -> None:
    spec = RunnerSpec(engine="tests.support.engines:StubbornEngine")
    config = SupervisorConfig(load_timeout=0.5, stop_grace=0.5)
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        t0 = time.monotonic()
        await r.finished()
        took = time.monotonic() - t0
    (failure,) = r.rec.failures()
    assert failure.reason == "stalled"
    assert any("StubbornEngine" in line or "in load" in line for line in failure.diagnostics)
    assert r.sup.exit_code == -signal.SIGKILL  # SIGTERM was ignored
    assert took < 5


@pytest.mark.slow
async def test_busy_beyond_busy_grace_is_unresponsive() -> None:
    spec = RunnerSpec(engine="tests.support.engines:GilBusyLoadEngine", options={"gil_seconds": 8})
    config = SupervisorConfig(busy_grace=1.0, stop_grace=0.5)
    async with supervised(spec, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        await r.finished(within=20)
    (failure,) = r.rec.failures()
    assert failure.reason == "unresponsive"
    assert "busy_grace" in failure.error_message


@pytest.mark.slow
def test_runner_dies_within_a_second_of_its_host(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "host.py"
    script.write_text(
        "import math, anyio, sys\n"
        "from supervisor import RunnerSupervisor\n"
        "from supervisor.protocol import LoadModel\n"
        "async def main():\n"
        "    send, recv = anyio.create_memory_object_stream(math.inf)\n"
        "    sup = RunnerSupervisor.create(event_sender=send)\n"
        "    async with anyio.create_task_group() as tg:\n"
        "        tg.start_soon(sup.run)\n"
        "        await sup.start_task(LoadModel(task_id='l'))\n"
        "        print(sup.pid, flush=True)\n"
        "        await anyio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    anyio.run(main)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    host = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        assert host.stdout is not None
        runner = int(host.stdout.readline())
        assert _alive(runner)
        host.kill()
        host.wait()
        killed = time.monotonic()
        while _alive(runner) and time.monotonic() - killed < 3:
            time.sleep(0.01)
        took = time.monotonic() - killed
        assert not _alive(runner), "runner outlived its supervisor"
        print(f"runner gone {took * 1000:.0f} ms after its host was SIGKILLed")
        assert took < 1.0
    finally:
        host.kill()
        host.wait()
        if host.stdout is not None:
            host.stdout.close()
