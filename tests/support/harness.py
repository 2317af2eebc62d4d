"""A small harness that runs one supervisor and records its events."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from supervisor import RunnerSpec, RunnerSupervisor, SupervisorConfig
from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    LoadModel,
    RunnerFailed,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)


@dataclass
class Recorder:
    events: list[tuple[float, BaseEvent]] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    # Indexed as events arrive: predicates polled per event must not rescan the list.
    _statuses: dict[str, list[TaskStatus]] = field(default_factory=dict)
    _chunks: dict[str, list[ChunkGenerated]] = field(default_factory=dict)

    def add(self, event: BaseEvent) -> None:
        self.events.append((time.monotonic(), event))
        if isinstance(event, TaskStatusUpdated):
            self._statuses.setdefault(event.task_id, []).append(event.status)
        elif isinstance(event, ChunkGenerated):
            self._chunks.setdefault(event.task_id, []).append(event)
        self.changed.set()
        self.changed = anyio.Event()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def failures(self) -> list[RunnerFailed]:
        statuses = [e.status for e in self.of(RunnerStatusUpdated)]
        return [s for s in statuses if isinstance(s, RunnerFailed)]

    def failure_time(self) -> float:
        for t, e in self.events:
            if isinstance(e, RunnerStatusUpdated) and isinstance(e.status, RunnerFailed):
                return t
        raise AssertionError("no RunnerFailed")

    def task_statuses(self, task_id: str) -> list[TaskStatus]:
        return list(self._statuses.get(task_id, ()))

    def terminal(self, task_id: str) -> list[TaskStatus]:
        return [s for s in self.task_statuses(task_id) if s.terminal]

    def chunks(self, task_id: str) -> list[ChunkGenerated]:
        return list(self._chunks.get(task_id, ()))

    async def wait_for(self, pred: Callable[[], bool], within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not pred():
                await self.changed.wait()


@dataclass
class Running:
    sup: RunnerSupervisor
    rec: Recorder

    async def ready(self) -> None:
        await self.sup.start_task(LoadModel(task_id="load"))
        await self.sup.start_task(Warmup(task_id="warmup"))
        await self.rec.wait_for(lambda: self.rec.terminal("warmup") == [TaskStatus.Complete])

    async def finished(self, within: float = 15.0) -> None:
        with anyio.fail_after(within):
            await self.sup.wait_finished()


@asynccontextmanager
async def supervised(
    spec: RunnerSpec | None = None, config: SupervisorConfig | None = None, **options: Any
) -> AsyncIterator[Running]:
    """Run a supervisor in a task group; on exit, stop it and wait for the end."""
    if spec is None:
        spec = RunnerSpec(engine="echo", options=options)
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    sup = RunnerSupervisor.create(spec=spec, event_sender=send, config=config)
    rec = Recorder()

    async def pump() -> None:
        async with recv:
            async for event in recv:
                rec.add(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)

        async def run_and_close() -> None:
            async with send:
                await sup.run()

        tg.start_soon(run_and_close)
        try:
            yield Running(sup, rec)
            if not sup.finished:
                sup.shutdown()
            with anyio.fail_after(15):
                await sup.wait_finished()
        finally:
            if not sup.finished:
                tg.cancel_scope.cancel()
