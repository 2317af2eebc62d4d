"""Chaos triggers through the library: each one fails the runner the way it claims to."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest

from runners.chaos import DIE, FAIL, FREEZE, HANG, OOM, SEGFAULT, TRIGGERS
from supervisor import RunnerSpec, SupervisorConfig
from supervisor.protocol import Generate, RunnerFailed, TaskStatus
from tests.support.harness import supervised
from tests.support.recorder import Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Generous: two shared cores, other test suites running beside us.
WITHIN = 30.0


async def _trigger(
    prompt: str,
    *,
    config: SupervisorConfig | None = None,
    env: Mapping[str, str] | None = None,
    max_tokens: int = 50,
) -> tuple[Recorder, RunnerFailed, float]:
    """Run ``prompt`` on a chaos-enabled echo runner; the failure and its latency."""
    config = config or SupervisorConfig(chaos=True)
    spec = RunnerSpec(engine="echo", options={"token_delay": 0.01}, env=dict(env or {}))
    async with supervised(spec, config) as r:
        await r.ready()
        started = time.monotonic()
        await r.sup.start_task(Generate(task_id="g", prompt=prompt, max_tokens=max_tokens))
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=WITHIN)
        await r.finished(within=WITHIN)
    failures = r.rec.failures()
    assert len(failures) == 1, failures
    # the in-flight task ends Failed, once, after at least one streamed chunk
    assert r.rec.terminal("g") == [TaskStatus.Failed]
    assert len(r.rec.chunks("g")) >= 1
    return r.rec, failures[0], r.rec.failure_time() - started


async def test_die_exits_1_mid_inference() -> None:
    rec, failed, _ = await _trigger(f"hello {DIE}")
    assert failed.reason == "exited"
    assert failed.exit_code == 1
    assert failed.signal is None
    assert "exitcode=1" in failed.error_message
    assert failed.detected_by in ("sentinel", "channel", "poll")
    assert 1 <= len(rec.chunks("g")) < 50


async def test_fail_crashes_with_its_traceback() -> None:
    _, failed, _ = await _trigger(f"hello {FAIL}")
    assert failed.reason == "crashed"
    assert failed.exit_code == 1
    assert "ChaosError" in failed.error_message
    assert "Traceback (most recent call last):" in failed.diagnostics
    assert any("ChaosError: chaos: EXO RUNNER MUST FAIL" in line for line in failed.diagnostics)


async def test_segfault_is_signalled_11_with_the_faulthandler_dump() -> None:
    _, failed, _ = await _trigger(f"hello {SEGFAULT}")
    assert failed.reason == "signalled"
    assert failed.signal == 11
    assert failed.exit_code is None
    assert "signal=11" in failed.error_message
    assert "Fatal Python error: Segmentation fault" in failed.diagnostics


async def test_freeze_is_unresponsive_by_heartbeat() -> None:
    config = SupervisorConfig(chaos=True)
    _, failed, latency = await _trigger(f"hello {FREEZE}", config=config)
    assert failed.reason == "unresponsive"
    assert failed.detected_by == "heartbeat"
    # the freeze bound plus a check, with room for a loaded machine
    assert latency < config.freeze_bound + 5.0


async def test_hang_is_stalled_by_progress_while_heartbeat_beats() -> None:
    config = SupervisorConfig(chaos=True, decode_timeout=1.0)
    _, failed, latency = await _trigger(f"hello {HANG}", config=config)
    assert failed.reason == "stalled"
    assert failed.detected_by == "progress"
    assert "decode" in failed.error_message
    assert 1.0 <= latency < 1.0 + 5.0


async def test_oom_crashes_with_memory_error() -> None:
    _, failed, _ = await _trigger(f"hello {OOM}", env={"EXO_RUNNER_OOM_CAP_MB": "256"})
    assert failed.reason == "crashed"
    assert "MemoryError" in failed.error_message
    assert any("MemoryError" in line for line in failed.diagnostics)


async def test_oom_over_memory_limit_is_reason_memory_limit() -> None:
    # The runner grows 64 MiB per 50 ms up to its cap; the limit is far below the cap
    # and the poll is fast, so the supervisor sees the limit crossed long before
    # the allocation fails by itself.
    config = SupervisorConfig(chaos=True, memory_limit=200 * 2**20, poll_interval=0.05)
    _, failed, _ = await _trigger(
        f"hello {OOM}", config=config, env={"EXO_RUNNER_OOM_CAP_MB": "1024"}
    )
    assert failed.reason == "memory_limit"
    assert failed.detected_by == "poll"
    assert "memory_limit 200 MiB" in failed.error_message


async def test_must_die_env_kills_after_n_tokens_of_any_task() -> None:
    spec = RunnerSpec(engine="echo", env={"EXO_RUNNER_MUST_DIE": "5"})
    async with supervised(spec, SupervisorConfig(chaos=True)) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="a", prompt="plain text", max_tokens=3))
        await r.rec.wait_for(lambda: r.rec.terminal("a") == [TaskStatus.Complete])
        await r.sup.start_task(Generate(task_id="b", prompt="more text", max_tokens=10))
        await r.finished(within=WITHIN)
    assert len(r.rec.chunks("a")) == 3
    assert len(r.rec.chunks("b")) == 2  # 5 tokens in all, then os._exit(1)
    assert r.rec.terminal("b") == [TaskStatus.Failed]
    [failed] = r.rec.failures()
    assert failed.reason == "exited"
    assert failed.exit_code == 1


async def test_chaos_can_be_enabled_from_the_runner_environment() -> None:
    spec = RunnerSpec(engine="echo", env={"EXO_RUNNER_CHAOS": "1"})
    async with supervised(spec, SupervisorConfig()) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt=DIE, max_tokens=5))
        await r.finished(within=WITHIN)
    [failed] = r.rec.failures()
    assert failed.exit_code == 1


async def test_triggers_are_plain_text_when_chaos_is_disabled() -> None:
    prompt = " ".join(TRIGGERS)
    spec = RunnerSpec(engine="echo", env={"EXO_RUNNER_MUST_DIE": "1"})  # ignored too
    async with supervised(spec, SupervisorConfig()) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt=prompt, max_tokens=40))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
        r.sup.shutdown()
        await r.finished(within=WITHIN)
    assert r.rec.failures() == []
    words = prompt.split()
    assert [c.text for c in r.rec.chunks("g")] == [f"{words[i % len(words)]} " for i in range(40)]
    assert r.sup.exit_code == 0
