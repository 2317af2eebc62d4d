"""SIGSTOP against ``heartbeat_stale_checks``: a short stop is survived, a long one is not."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import anyio
import pytest

from supervisor import SupervisorConfig
from supervisor.protocol import Generate, TaskStatus
from tests.support.harness import supervised

pytestmark = pytest.mark.anyio

CHECKS = 5
INTERVAL = 0.5
CONFIG = SupervisorConfig(heartbeat_stale_checks=CHECKS, heartbeat_check_interval=INTERVAL)


async def test_a_short_sigstop_within_the_stale_checks_is_not_a_failure() -> None:
    async with supervised(config=CONFIG, token_delay=0.01) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=200))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 1)
        pid = r.sup.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # 1.4 s: at most 3 checks see it stopped, 5 are needed.
            await anyio.sleep(1.4)
        finally:
            os.kill(pid, signal.SIGCONT)
        await r.rec.wait_for(lambda: bool(r.rec.terminal("g")), within=20)
        # Two more stale-check windows after the continue: a late verdict would show here.
        await anyio.sleep(INTERVAL * (CHECKS + 1))
        assert r.rec.failures() == []
        assert r.rec.terminal("g") == [TaskStatus.Complete]
        assert r.sup.pid == pid
    assert r.rec.failures() == []


async def test_a_long_sigstop_still_fails_the_runner_after_the_stale_checks() -> None:
    async with supervised(config=CONFIG) as r:
        await r.ready()
        pid = r.sup.pid
        assert pid is not None
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            await r.rec.wait_for(lambda: bool(r.rec.failures()), within=15)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # not left stopped for the harness to stop
            raise
        latency = r.rec.failure_time() - stopped_at
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "unresponsive"
    assert failure.detected_by == "heartbeat"
    assert "stopped" in failure.error_message
    print(f"SIGSTOP -> RunnerFailed in {latency:.2f}s with {CHECKS} stale checks")
    # The 5th stale check comes at least 4 intervals after the stop; the bound is 6.
    assert INTERVAL * (CHECKS - 1) - 0.1 <= latency <= INTERVAL * (CHECKS + 1) + 2.0
    assert r.sup.exit_code == -signal.SIGKILL
