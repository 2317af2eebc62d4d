"""The tests' one event recorder, and the one way to host a supervisor while recording.

`Recorder` keeps every event a host received, stamped on receipt, and indexes task
statuses, chunks, failures and readiness as they arrive: `wait_for` re-checks its predicate
after every event, so a predicate must not rescan the whole history (that made long
streaming tests quadratic).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from supervisor.core.statemachine import Notifier
from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    RunnerFailed,
    RunnerReady,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
)


class Recorder:
    """Every event received, with its receive time, and indexes kept up to date."""

    def __init__(self) -> None:
        self.events: list[tuple[float, BaseEvent]] = []
        self.changed = Notifier()
        self._statuses: dict[str, list[TaskStatus]] = {}
        self._chunks: dict[str, list[ChunkGenerated]] = {}
        self._failures: list[tuple[float, str, RunnerFailed]] = []
        self._ready: dict[str, int] = {}  # RunnerReady events per runner_id

    def add(self, event: BaseEvent) -> None:
        now = time.monotonic()
        self.events.append((now, event))
        if isinstance(event, TaskStatusUpdated):
            self._statuses.setdefault(event.task_id, []).append(event.status)
        elif isinstance(event, ChunkGenerated):
            self._chunks.setdefault(event.task_id, []).append(event)
        elif isinstance(event, RunnerStatusUpdated):
            if isinstance(event.status, RunnerFailed):
                self._failures.append((now, event.runner_id, event.status))
            elif isinstance(event.status, RunnerReady):
                self._ready[event.runner_id] = self._ready.get(event.runner_id, 0) + 1
        self.changed.notify()

    async def consume(self, events: MemoryObjectReceiveStream[BaseEvent]) -> None:
        """Record everything from ``events`` until its sender closes."""
        async with events:
            async for event in events:
                self.add(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def failures(self, runner_id: str | None = None) -> list[RunnerFailed]:
        """Every `RunnerFailed` received (of ``runner_id`` only, if given)."""
        return [f for _, rid, f in self._failures if runner_id in (None, rid)]

    def failure_time(self) -> float:
        """When the first `RunnerFailed` was received."""
        if not self._failures:
            raise AssertionError("no RunnerFailed")
        return self._failures[0][0]

    def ready_count(self, runner_id: str | None = None) -> int:
        """How many times ``runner_id`` (any runner if None) reached Ready."""
        if runner_id is None:
            return sum(self._ready.values())
        return self._ready.get(runner_id, 0)

    def task_statuses(self, task_id: str) -> list[TaskStatus]:
        return list(self._statuses.get(task_id, ()))

    def terminal(self, task_id: str) -> list[TaskStatus]:
        return [s for s in self._statuses.get(task_id, ()) if s.terminal]

    def chunks(self, task_id: str) -> list[ChunkGenerated]:
        return list(self._chunks.get(task_id, ()))

    async def wait_for(self, pred: Callable[[], bool], within: float = 10.0) -> None:
        with anyio.fail_after(within):
            await self.changed.wait_until(pred)


class Host(Protocol):
    """What `hosted` drives: a `RunnerSupervisor` or a `RestartingSupervisor`."""

    @property
    def finished(self) -> bool: ...

    async def run(self) -> None: ...

    def shutdown(self) -> object: ...

    async def wait_finished(self) -> None: ...


H = TypeVar("H", bound=Host)


@asynccontextmanager
async def hosted(
    build: Callable[[MemoryObjectSendStream[BaseEvent]], H], *, stop_within: float
) -> AsyncIterator[tuple[H, Recorder]]:
    """Build a host on an unbounded event stream, run it and record its events.

    On exit the host is shut down and must finish within ``stop_within`` seconds;
    if it does not (or the body raised), the task group is cancelled so the test
    ends, and the leak check reports whatever was left behind.
    """
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    host = build(send)
    rec = Recorder()

    async def run_and_close() -> None:
        async with send:
            await host.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.consume, recv)
        tg.start_soon(run_and_close)
        try:
            yield host, rec
            if not host.finished:
                host.shutdown()
            with anyio.fail_after(stop_within):
                await host.wait_finished()
        finally:
            if not host.finished:
                tg.cancel_scope.cancel()
