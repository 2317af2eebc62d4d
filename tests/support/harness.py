"""Runs one `RunnerSupervisor` in a task group and records its events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from supervisor import RunnerSpec, RunnerSupervisor, SupervisorConfig
from supervisor.protocol import LoadModel, TaskStatus, Warmup
from tests.support.recorder import Recorder, hosted


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
    async with hosted(
        lambda send: RunnerSupervisor.create(spec=spec, event_sender=send, config=config),
        stop_within=15,
    ) as (sup, rec):
        yield Running(sup, rec)
