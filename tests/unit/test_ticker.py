"""The shared ticker: one task drives every check on a grid, and hands over when it leaves."""

from __future__ import annotations

import time

import anyio
import pytest

from supervisor.core import ticker

pytestmark = pytest.mark.anyio

INTERVAL = 0.05


async def test_every_check_on_the_same_grid_until_done(anyio_backend: str) -> None:
    calls: dict[int, list[float]] = {i: [] for i in range(5)}

    def check(i: int) -> ticker.Check:
        def run() -> bool:
            calls[i].append(time.monotonic())
            return len(calls[i]) >= 3 + i

        return run

    async with anyio.create_task_group() as tg:
        for i in calls:
            tg.start_soon(ticker.every, INTERVAL, check(i))
    assert [len(c) for c in calls.values()] == [3, 4, 5, 6, 7]
    # the checks of one tick run together, on the grid
    for n in range(3):
        instants = [c[n] for c in calls.values()]
        assert max(instants) - min(instants) < INTERVAL / 2
    assert ticker.subscribers(INTERVAL) == 0


async def test_a_check_that_raises_raises_in_its_own_task(anyio_backend: str) -> None:
    others = 0

    def fine() -> bool:
        nonlocal others
        others += 1
        return others >= 5

    def broken() -> bool:
        raise RuntimeError("bug in a check")

    errors: list[Exception] = []

    async def guarded() -> None:
        try:
            await ticker.every(INTERVAL, broken)
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.every, INTERVAL, fine)
        tg.start_soon(guarded)
    assert [str(e) for e in errors] == ["bug in a check"]
    assert others == 5  # the others went on


async def test_the_leader_leaving_loses_no_tick(anyio_backend: str) -> None:
    follower: list[float] = []

    def count() -> bool:
        follower.append(time.monotonic())
        return len(follower) >= 8

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as leader:
            tg.start_soon(ticker.every, INTERVAL, count)  # subscribes second: follows
            await ticker.every(INTERVAL, lambda: len(follower) >= 3)  # leads until 3 ticks
            leader.cancel()
    ticks = [int(t // INTERVAL) for t in follower]
    assert ticks == list(range(ticks[0], ticks[0] + 8)), ticks  # consecutive grid instants
