"""Lifecycles as data: states, the transitions allowed between them, one `transition()`.

A supervisor's lifecycle is a `StateMachine` over a small `enum`; the table of
allowed transitions sits next to the enum, so every legal move is written in one
place and tested without processes. An illegal move raises `IllegalTransition`
(a bug in the caller, never an outside event).

`Notifier` is the one "something changed" wake-up every layer uses: waiters
re-check their condition after each `notify()`. Its event is created on first
wait, so a supervisor can be built outside a running event loop.

One runner incarnation (`RunnerSupervisor`) lives through `Life`. How far a stop of
it has gone is a separate `Stop` level, because a stop is independent of the life:
it can be asked before `run` starts, and while the end is reported it still decides
whether the exit was a stop or a failure.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import anyio

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A lifecycle was asked to move along an edge its table does not have."""


class Notifier:
    """Wakes every current waiter on `notify`; cheap when nobody waits."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        """Wait for the next `notify` (a cancellation point; nothing to clean up)."""
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checking after every `notify`."""
        while not condition():
            await self.wait()


class StateMachine(Generic[S]):
    """A current state, its allowed next states, and a `Notifier` fired on each move."""

    __slots__ = ("_state", "_table", "changed")

    def __init__(self, initial: S, table: Mapping[S, frozenset[S]]) -> None:
        self._state = initial
        self._table = table
        self.changed = Notifier()

    @property
    def state(self) -> S:
        return self._state

    def can(self, target: S) -> bool:
        return target in self._table[self._state]

    def transition(self, target: S) -> None:
        """Move to ``target``; `IllegalTransition` if the table has no such edge."""
        if target not in self._table[self._state]:
            raise IllegalTransition(f"{self._state.name} -> {target.name} is not allowed")
        self._state = target
        self.changed.notify()

    def advance(self, target: S) -> bool:
        """Move to ``target`` if allowed; False (and no move) otherwise.

        For moves that several racing paths may ask for (the first one wins)."""
        if target not in self._table[self._state]:
            return False
        self._state = target
        self.changed.notify()
        return True

    async def wait_for(self, *states: S) -> None:
        """Wait until the state is one of ``states`` (a cancellation point)."""
        await self.changed.wait_until(lambda: self._state in states)


def check_table(table: Mapping[S, frozenset[S]], states: type[S]) -> None:
    """Every state has a row and every edge ends in a known state (tests call this)."""
    missing = set(states) - set(table)
    if missing:
        raise ValueError(f"no row for {sorted(s.name for s in missing)}")
    for row in table.values():
        for target in row:
            if target not in states.__members__.values():
                raise ValueError(f"unknown target {target!r}")


# --------------------------------------------------- one runner incarnation
class Life(enum.Enum):
    """Where one incarnation is in its life (see `LIFE_TABLE` for the moves)."""

    CREATED = "created"  # spawned; `run` not called yet (tasks may already be sent)
    RUNNING = "running"  # watched by the detectors
    ENDING = "ending"  # a detector saw the end; it is being reported
    FINISHED = "finished"  # reported once, reaped, every fd closed


LIFE_TABLE: Mapping[Life, frozenset[Life]] = {
    Life.CREATED: frozenset({Life.RUNNING}),
    # RUNNING -> FINISHED: the host cancelled `run`; the runner is killed, not judged.
    Life.RUNNING: frozenset({Life.ENDING, Life.FINISHED}),
    Life.ENDING: frozenset({Life.FINISHED}),
    Life.FINISHED: frozenset(),
}


class Stop(enum.IntEnum):
    """How far a stop of the runner has gone; it only ever rises."""

    NONE = 0
    ASKED = 1  # `shutdown` or a Shutdown task: the runner is to exit by itself
    FORCED = 2  # we signalled it to make it stop (`kill`, SIGTERM): its death is a stop


__all__ = [
    "LIFE_TABLE",
    "IllegalTransition",
    "Life",
    "Notifier",
    "StateMachine",
    "Stop",
    "check_table",
]
