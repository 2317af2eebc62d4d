"""Lock-free slots shared between the supervisor and its runner: a heartbeat counter
and two CLOCK_MONOTONIC stamps.

One ``RawArray('d')`` with a single writer per slot: a locked ``Value`` would deadlock
the reader forever if the runner died or stopped while holding the lock. Aligned
8-byte stores are atomic on the platforms we run on, and doubles count exactly to 2**53.
"""

from __future__ import annotations

import time
from multiprocessing.context import BaseContext
from typing import Any

_monotonic = time.monotonic

HEARTBEAT = 0  # bumped by the runner's heartbeat thread
EXTEND_UNTIL = 1  # CLOCK_MONOTONIC deadline an engine declared for a long step
LAST_TICK = 2  # CLOCK_MONOTONIC time of the main loop's last progress tick
RUNNER_PID = 3  # the runner's pid, written once by the runner (under a keeper it is not
# the process multiprocessing started); 0 until then
SENTINEL = 4  # the pids of the runner's sentinels (see runners.deathwatch), 0 until started
SENTINELS = 2
RUNNER_STATUS = SENTINEL + SENTINELS  # the runner's wait status + 1, written by the keeper
# when it reaps the runner (before it cleans the tree up and exits); 0 until then
_SLOTS = RUNNER_STATUS + 1


class SharedState:
    """The shared slots. Picklable to a spawned child through multiprocessing."""

    __slots__ = ("_array",)

    def __init__(self, array: Any) -> None:
        self._array = array

    @classmethod
    def create(cls, ctx: BaseContext) -> SharedState:
        return cls(ctx.RawArray("d", _SLOTS))

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedState, (self._array,))

    # runner side -----------------------------------------------------------
    def beat(self) -> None:
        self._array[HEARTBEAT] += 1.0

    def tick(self) -> None:
        """The main loop made progress (stamped, so the supervisor knows *when*)."""
        self._array[LAST_TICK] = _monotonic()

    def set_runner_pid(self, pid: int) -> None:
        self._array[RUNNER_PID] = float(pid)

    def set_sentinel(self, slot: int, pid: int) -> None:
        self._array[SENTINEL + slot] = float(pid)

    def set_runner_status(self, status: int) -> None:
        self._array[RUNNER_STATUS] = float(status + 1)

    def extend_deadline(self, seconds: float) -> None:
        """Declare that the current step may take up to ``seconds`` without progress."""
        self._array[EXTEND_UNTIL] = time.monotonic() + seconds
        self.tick()

    # supervisor side -------------------------------------------------------
    @property
    def heartbeat(self) -> float:
        return float(self._array[HEARTBEAT])

    @property
    def extend_until(self) -> float:
        return float(self._array[EXTEND_UNTIL])

    @property
    def runner_pid(self) -> int:
        """The runner's pid once it wrote it, else 0."""
        return int(self._array[RUNNER_PID])

    def sentinels(self) -> tuple[int, ...]:
        """The sentinels' pids the runner published (0 for one not started yet)."""
        return tuple(int(self._array[SENTINEL + i]) for i in range(SENTINELS))

    @property
    def runner_status(self) -> int | None:
        """The runner's wait status as its keeper reaped it; None before that."""
        value = int(self._array[RUNNER_STATUS])
        return value - 1 if value else None

    @property
    def last_tick(self) -> float:
        return float(self._array[LAST_TICK])
