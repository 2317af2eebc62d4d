"""What every benchmark shares: the mode, progress lines, and a fleet of supervisors.

`Fleet` runs many supervisors in one task group; each is `Watched`: every event is
stamped with ``time.monotonic()`` the moment the host receives it, which is where
every latency here ends. `Watched` is the benchmarks' only event consumer: it keeps
counters and first/last times, never the events themselves, so a long run stays
flat in memory and a chunk costs a few attribute updates.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from loguru import logger

from supervisor import (
    RestartingSupervisor,
    RunnerFailedError,
    RunnerSpec,
    RunnerSupervisor,
    SupervisorConfig,
)
from supervisor.core.statemachine import Notifier
from supervisor.protocol import (
    BaseEvent,
    BaseRunnerStatus,
    ChunkGenerated,
    EmbeddingGenerated,
    LoadModel,
    RunnerFailed,
    RunnerReady,
    RunnerStatusUpdated,
    TaskStatusUpdated,
    Warmup,
)

T = TypeVar("T")
Supervised = RunnerSupervisor | RestartingSupervisor
EventSender = MemoryObjectSendStream[BaseEvent]
OnEvent = Callable[[float, BaseEvent], None]

_T0 = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Mode:
    quick: bool
    backend: str = "asyncio"

    @property
    def name(self) -> str:
        return "quick" if self.quick else "full"

    def pick(self, quick: T, full: T) -> T:
        return quick if self.quick else full


#: The supervisor's own log lines (loguru), kept for a failure report instead of
#: flooding the progress output. The records are still formatted: their cost is real.
SUPERVISOR_LOG: deque[str] = deque(maxlen=200)


def quiet_supervisor_logs() -> None:
    logger.remove()
    logger.add(lambda message: SUPERVISOR_LOG.append(str(message)), level="INFO")


@dataclass
class Watched:
    """One supervisor and what its host received from it, stamped on receipt."""

    sup: Supervised
    status: BaseRunnerStatus | None = None
    failure: RunnerFailed | None = None
    failed_at: float | None = None
    ready_at: float | None = None
    failures: int = 0
    chunks: int = 0
    #: receive time of the first chunk of each task (the wedge benchmark needs it)
    first_chunk_at: dict[str, float] = field(default_factory=dict)
    terminal: dict[str, str] = field(default_factory=dict)
    changed: Notifier = field(default_factory=Notifier)
    #: called with every event and its receive time, before the counters are updated
    on_event: OnEvent | None = None

    @property
    def pid(self) -> int:
        pid = self.sup.pid
        assert pid is not None, "no runner process"
        return pid

    def note(self, now: float, event: BaseEvent) -> None:
        if self.on_event is not None:
            self.on_event(now, event)
        if type(event) is ChunkGenerated:
            self.chunks += 1
            if event.index == 0:
                self.first_chunk_at[event.task_id] = now
            return  # chunks wake nobody: streaming must stay cheap
        if type(event) is EmbeddingGenerated:
            return  # nor do vectors, for the same reason
        if isinstance(event, RunnerStatusUpdated):
            self.status = event.status
            if isinstance(event.status, RunnerFailed):
                self.failures += 1
                if self.failure is None:
                    self.failure = event.status
                    self.failed_at = now
            elif isinstance(event.status, RunnerReady) and self.ready_at is None:
                self.ready_at = now
        elif isinstance(event, TaskStatusUpdated) and event.status.terminal:
            self.terminal[event.task_id] = str(event.status)
        self.changed.notify()

    async def wait(self, pred: Callable[[], bool], within: float) -> None:
        with anyio.fail_after(within):
            await self.changed.wait_until(pred)

    async def run_task(self, task: Any, within: float) -> str:
        """Start ``task`` and wait for its terminal status (its string)."""
        await self.sup.start_task(task)
        await self.wait(lambda: task.task_id in self.terminal, within)
        return self.terminal[task.task_id]

    async def wait_failed(self, within: float = 30.0) -> float:
        await self.wait(lambda: self.failed_at is not None, within)
        assert self.failed_at is not None
        return self.failed_at

    async def ready(self, within: float = 60.0) -> float:
        """LoadModel + Warmup; returns when the host received RunnerReady."""
        await self.sup.start_task(LoadModel(task_id="load"))
        await self.sup.start_task(Warmup(task_id="warmup"))
        await self.wait(lambda: self.ready_at is not None or self.failure is not None, within)
        if self.failure is not None:
            raise RunnerFailedError(self.failure)
        assert self.ready_at is not None
        return self.ready_at

    def sigkill(self) -> float:
        """SIGKILL the runner from outside (as the OOM killer would); the kill time."""
        t0 = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)
        return t0

    async def kill_and_time(self, within: float = 10.0) -> tuple[float, float]:
        """SIGKILL the runner; seconds until the host received RunnerFailed, and until
        the kernel said the process had exited (a pidfd of it, awaited in this loop):
        the part of the latency that no supervisor can remove."""
        exited: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(exited_at, os.pidfd_open(self.pid), exited)
            await anyio.lowlevel.checkpoint()
            t0 = self.sigkill()
            failed = await self.wait_failed(within)
        return failed - t0, exited[0] - t0


async def exited_at(pidfd: int, out: list[float]) -> None:
    """Append when ``pidfd`` turns readable (its process exited) to ``out``; closes it."""
    try:
        await anyio.wait_readable(pidfd)
        out.append(time.monotonic())
    finally:
        os.close(pidfd)


class Fleet:
    """Supervisors sharing one event loop, like a cluster node's."""

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        self.members: list[Watched] = []

    def spawn(
        self,
        spec: RunnerSpec | None = None,
        config: SupervisorConfig | None = None,
        on_event: OnEvent | None = None,
    ) -> Watched:
        """A `RunnerSupervisor` of ``spec``, running and watched."""
        return self.host(
            lambda send: RunnerSupervisor.create(spec=spec, event_sender=send, config=config),
            on_event,
        )

    def host(self, build: Callable[[EventSender], Supervised], on_event: OnEvent | None) -> Watched:
        """Any supervisor ``build`` makes on an unbounded event stream, running and watched."""
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        sup = build(send)
        w = Watched(sup, on_event=on_event)
        self.members.append(w)

        async def run() -> None:
            async with send:
                await sup.run()

        self._tg.start_soon(_receive, recv, w)
        self._tg.start_soon(run)
        return w

    async def spawn_ready(
        self, count: int, spec: RunnerSpec | None = None, config: SupervisorConfig | None = None
    ) -> list[Watched]:
        """``count`` runners started together, returned once all are Ready."""
        members = [self.spawn(spec, config) for _ in range(count)]
        await gather([m.ready for m in members])
        return members

    async def stop_all(self, within: float = 20.0) -> None:
        for m in self.members:
            m.sup.shutdown()
        with anyio.move_on_after(within):
            for m in self.members:
                await m.sup.wait_finished()
        for m in self.members:
            if not m.sup.finished and isinstance(m.sup, RunnerSupervisor):
                m.sup.kill()
        with anyio.move_on_after(10):
            for m in self.members:
                await m.sup.wait_finished()


async def _receive(recv: MemoryObjectReceiveStream[BaseEvent], w: Watched) -> None:
    """Read the stream as docs/operations.md tells a host to: one event with
    ``receive()``, then everything already queued without waiting. ``async for`` alone
    spends an event-loop turn per event (an anyio checkpoint: ~3.4 us of host CPU on
    this kind of machine, more than the supervisor's own forwarding)."""
    monotonic = time.monotonic
    note = w.note
    receive_nowait = recv.receive_nowait
    async with recv:
        async for event in recv:
            note(monotonic(), event)
            while True:
                try:
                    event = receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                note(monotonic(), event)


@asynccontextmanager
async def fleet() -> AsyncIterator[Fleet]:
    """A fleet whose runners are all stopped (shut down, else killed) on exit."""
    async with anyio.create_task_group() as tg:
        f = Fleet(tg)
        try:
            yield f
        finally:
            with anyio.CancelScope(shield=True):
                await f.stop_all()
            tg.cancel_scope.cancel()


async def gather(calls: Sequence[Callable[[], Any]]) -> None:
    """Run the calls concurrently; return when all are done."""
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call)


def run_async(mode: Mode, func: Callable[[], Any]) -> Any:
    return anyio.run(func, backend=mode.backend)
