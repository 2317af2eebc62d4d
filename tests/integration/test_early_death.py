"""The early death signal: a runner holding GiBs is reported failed once it is dying,
before its memory is torn down; its memory's release is reported separately."""

from __future__ import annotations

import os
import select
import signal
import time

import anyio
import psutil
import pytest

from supervisor import RestartPolicy, RunnerRestarting, RunnerSpec
from supervisor.protocol import Generate, TaskStatus
from tests.support.harness import supervised
from tests.support.leaks import running
from tests.support.restart_harness import restarting

pytestmark = pytest.mark.anyio

BIG_GIB = 1.5


def _available_gib() -> float:
    return psutil.virtual_memory().available / 2**30


def _sentinels(runner_pid: int) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(runner_pid).children()
        if p.status() != psutil.STATUS_ZOMBIE and p.name() == "sleep"
    ]


async def _wait_sentinels(runner_pid: int, count: int = 2, within: float = 10.0) -> list[int]:
    with anyio.fail_after(within):
        while len(found := _sentinels(runner_pid)) < count:  # noqa: ASYNC110 - no event
            await anyio.sleep(0.02)
    return [p.pid for p in found]


async def test_a_big_runner_is_reported_failed_before_its_memory_is_free() -> None:
    if _available_gib() < BIG_GIB + 3:
        pytest.skip(f"needs {BIG_GIB + 3:g} GiB of free memory; {_available_gib():.1f} here")
    spec = RunnerSpec(
        engine="bench.memory_engine:HoldMemory", options={"gib": BIG_GIB, "token_delay": 0.01}
    )
    async with supervised(spec) as r:
        await r.ready()
        runner = await r.sup.wait_runner_pid()
        await _wait_sentinels(runner)
        await r.sup.start_task(Generate(task_id="g", prompt="x " * 1000, max_tokens=1000))
        await r.rec.wait_for(lambda: bool(r.rec.chunks("g")))
        pidfd = os.pidfd_open(runner)
        try:
            killed_at = time.monotonic()
            os.kill(runner, signal.SIGKILL)
            await anyio.wait_readable(pidfd)
            exited_at = time.monotonic()
        finally:
            os.close(pidfd)
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=10)
        failed_at = r.rec.failure_time()
        await r.sup.wait_released()
        assert r.sup.released
        assert not running(runner)
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "signalled"
    assert failure.signal == signal.SIGKILL
    assert failure.detected_by == "sentinel"
    assert r.sup.dying_at is not None
    assert r.sup.dying_at <= failed_at
    assert r.rec.terminal("g") == [TaskStatus.Failed]
    seen, gone = failed_at - killed_at, exited_at - killed_at
    dying = r.sup.dying_at - killed_at
    print(
        f"{BIG_GIB:g} GiB: dying {dying * 1e3:.1f} ms, RunnerFailed {seen * 1e3:.1f} ms, ", end=""
    )
    print(f"pidfd {gone * 1e3:.1f} ms")
    # Generous for a loaded machine: the report comes in the first half of the teardown.
    assert seen < gone / 2, f"reported at {seen * 1e3:.1f} ms, exited at {gone * 1e3:.1f} ms"


async def test_a_sentinel_killed_alone_does_not_fail_the_runner() -> None:
    async with supervised() as r:
        await r.ready()
        runner = await r.sup.wait_runner_pid()
        first = await _wait_sentinels(runner)
        os.kill(first[0], signal.SIGKILL)
        # Its thread starts another (after a pause: it died young); nothing is reported.
        with anyio.fail_after(10):
            while first[0] in await _wait_sentinels(runner):  # noqa: ASYNC110 - no event
                await anyio.sleep(0.05)
        assert r.rec.failures() == []
        await r.sup.start_task(Generate(task_id="g", prompt="a b c", max_tokens=3))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("g")))
        assert r.rec.terminal("g") == [TaskStatus.Complete]
        # The replacement is watched: the runner's death is still seen by a sentinel.
        await anyio.sleep(0.1)
        os.kill(runner, signal.SIGKILL)
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=10)
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "signalled"
    assert failure.detected_by in ("sentinel", "channel")


async def test_a_clean_shutdown_is_still_a_stop_and_releases() -> None:
    async with supervised() as r:
        await r.ready()
        runner = await r.sup.wait_runner_pid()
        await _wait_sentinels(runner)
        r.sup.shutdown()
        await r.sup.wait_released()
        assert r.sup.released
        assert not running(runner)
    assert r.rec.failures() == []


async def test_a_restart_waits_for_the_dead_runners_memory() -> None:
    if _available_gib() < 2 * BIG_GIB + 3:
        pytest.skip(f"needs {2 * BIG_GIB + 3:g} GiB of free memory")
    spec = RunnerSpec(engine="bench.memory_engine:HoldMemory", options={"gib": BIG_GIB})
    async with restarting(spec, RestartPolicy(backoff_base=0.0)) as r:
        await r.ready()
        old = r.sup.pid
        assert old is not None
        await _wait_sentinels(old)
        pidfd = os.pidfd_open(old)
        try:
            os.kill(old, signal.SIGKILL)
            await r.rec.wait_for(lambda: bool(r.rec.failures()), within=10)
            failed_at = time.monotonic()
            # Reported while the old process still tears its memory down...
            assert not select.select([pidfd], [], [], 0)[0]
            await anyio.wait_readable(pidfd)
            released_at = time.monotonic()
        finally:
            os.close(pidfd)
        await r.ready(count=2)
    # ...and the next incarnation was announced only once the memory was free.
    restarted_at = next(t for t, e in r.rec.events if isinstance(e, RunnerRestarting))
    assert restarted_at >= released_at - 0.005
    assert failed_at < released_at


async def test_a_loaded_spare_takes_over_before_the_dead_runners_memory_is_free() -> None:
    if _available_gib() < 3 * BIG_GIB + 3:
        pytest.skip(f"needs {3 * BIG_GIB + 3:g} GiB of free memory")
    spec = RunnerSpec(engine="bench.memory_engine:HoldMemory", options={"gib": BIG_GIB})
    policy = RestartPolicy(backoff_base=0.0, prespawn=True, spare_stage="loaded")
    async with restarting(spec, policy) as r:
        await r.ready()
        with anyio.fail_after(60):
            while r.sup.spare_pid is None:  # noqa: ASYNC110 - no event names the spare
                await anyio.sleep(0.02)
        spare = r.sup.spare_pid
        assert spare is not None
        with anyio.fail_after(60):  # the spare loads its own copy
            while psutil.Process(spare).memory_info().rss < 0.9 * BIG_GIB * 2**30:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        old = r.sup.pid
        assert old is not None
        await _wait_sentinels(old)
        pidfd = os.pidfd_open(old)
        try:
            os.kill(old, signal.SIGKILL)
            await r.rec.wait_for(lambda: bool(r.rec.of(RunnerRestarting)), within=10)
            # the spare took over while the dead runner still tore its memory down
            assert not select.select([pidfd], [], [], 0)[0]
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        with anyio.fail_after(10):
            while r.sup.pid != spare:  # noqa: ASYNC110 - the adoption has no event of its own
                await anyio.sleep(0.02)
