"""One timer per event loop and interval for every runner's periodic checks.

A node of 64 runners ran two sleeping tasks per runner (the is_alive poll, the
heartbeat check), all woken at the same grid instants: 128 task switches and timer
entries for work that is a few reads each. Here every check that shares an interval
is called, synchronously, by one task at each multiple of the interval on the
monotonic clock: the task of whichever subscriber leads that grid. When the leader
leaves (its runner ended, its task group was cancelled), a waiting subscriber takes
over before the next instant, so no tick is lost and the instants do not move.

A check is a plain function: it must not block, and returns True once it is done
(it saw its runner's end). What it raises is raised in its own subscriber's task, as
if it had run there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from anyio.lowlevel import RunVar

from supervisor.core.statemachine import Notifier

#: A periodic check: True once it is done and wants no more calls.
Check = Callable[[], bool]


class _Subscriber:
    __slots__ = ("check", "done", "error")

    def __init__(self, check: Check) -> None:
        self.check = check
        self.done = False
        self.error: Exception | None = None


class _Grid:
    """The checks sharing one interval in one event loop, and who drives them."""

    __slots__ = ("changed", "interval", "leading", "subscribers")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: insertion order: checks run in the order they subscribed
        self.subscribers: dict[_Subscriber, None] = {}
        self.leading = False
        #: a subscriber finished, or the leader left
        self.changed = Notifier()

    def tick(self) -> None:
        finished = False
        for sub in list(self.subscribers):  # a check may end runners: iterate a copy
            try:
                sub.done = sub.check()
            except Exception as exc:  # noqa: BLE001 - re-raised in the subscriber's task
                sub.error, sub.done = exc, True
            if sub.done:
                del self.subscribers[sub]
                finished = True
        if finished:
            self.changed.notify()


_grids: RunVar[dict[float, _Grid]] = RunVar("supervisor_ticker_grids")


def _grid(interval: float) -> _Grid:
    try:
        grids = _grids.get()
    except LookupError:
        grids = {}
        _grids.set(grids)
    grid = grids.get(interval)
    if grid is None:
        grid = grids[interval] = _Grid(interval)
    return grid


async def sleep_on_grid(interval: float) -> None:
    """Sleep until the next multiple of ``interval`` on the monotonic clock."""
    await anyio.sleep(interval - time.monotonic() % interval)


async def every(interval: float, check: Check) -> None:
    """Call ``check()`` at each multiple of ``interval`` until it returns True.

    Returns then; raises what ``check`` raised. Cancelling the caller stops the calls.
    """
    grid = _grid(interval)
    me = _Subscriber(check)
    grid.subscribers[me] = None
    try:
        while not me.done:
            if grid.leading:
                await grid.changed.wait()
                continue
            grid.leading = True
            try:
                while not me.done:
                    await sleep_on_grid(interval)
                    grid.tick()
            finally:
                grid.leading = False
                grid.changed.notify()  # a waiting subscriber takes over
    finally:
        grid.subscribers.pop(me, None)
    if me.error is not None:
        raise me.error


def subscribers(interval: float) -> int:
    """How many checks share ``interval``'s grid in this event loop (for tests)."""
    return len(_grid(interval).subscribers)


__all__ = ["Check", "every", "sleep_on_grid", "subscribers"]
