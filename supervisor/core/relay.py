"""Between the runner and the host: its events in order, and the report of its end.

Everything the host hears about one runner passes through the `Relay`, which is
why it can promise one RunnerFailed at most and one terminal status per task.
It also keeps the supervisor's view of the runner: its last status (the failure
once one is reported), its crash report, and the Generate task now running, which
sets the progress phase the progress watch holds the runner to. Acknowledgements
and terminal statuses go to the task book, probe events to the prober.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from loguru import logger

from supervisor.config import SupervisorConfig
from supervisor.core.channel import ChannelReader, FrameError
from supervisor.core.detection.interface import EndCause
from supervisor.core.detection.liveness import ProgressMonitor
from supervisor.core.detection.prober import Prober
from supervisor.core.detection.watches import Phase, phase_deadline
from supervisor.core.host_stream import HostStream
from supervisor.core.statemachine import Notifier
from supervisor.core.tasks import TaskBook
from supervisor.protocol import (
    BUSY_STATUSES,
    BaseEvent,
    BaseRunnerStatus,
    ChunkGenerated,
    CrashReport,
    Generate,
    RunnerFailed,
    RunnerIdle,
    RunnerRunning,
    RunnerShutdown,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
    TaskUndecodable,
)

if TYPE_CHECKING:
    from loguru import Logger


class Relay:
    """Forwards one runner's events to the host, then reports how it ended."""

    def __init__(
        self,
        reader: ChannelReader,
        host: HostStream,
        book: TaskBook,
        prober: Prober,
        config: SupervisorConfig,
        *,
        runner_id: str,
        started_at: float,
        end: Callable[[EndCause], None],
        log: Logger = logger,
    ) -> None:
        #: bound to the runner (id, incarnation, pid): its lines reach the runner's log file
        self._log = log
        self._reader = reader
        self._host = host
        self._book = book
        self._prober = prober
        self._config = config
        self._runner_id = runner_id
        self._end = end
        self.status: BaseRunnerStatus = RunnerIdle()
        self.failure: RunnerFailed | None = None
        self.crash: CrashReport | None = None
        self.failed_at: float | None = None
        #: Restarted at each phase change; read by the progress watch.
        self.progress = ProgressMonitor(started_at)
        #: Notified when the runner starts work, so an idle runner is not polled.
        self.busy = Notifier()
        # The Generate task now running, and whether it streamed its first chunk yet.
        self._generate: str | None = None
        self._first_chunk_seen = False

    def phase(self) -> Phase:
        """The progress deadline that applies now (None while idle)."""
        decoding = self._generate is not None and self._first_chunk_seen
        return phase_deadline(self.status, decoding, self._config)

    # ------------------------------------------------------------ runner -> host
    async def forward_events(self) -> None:
        """Until EOF on the event channel, which then ends the watch."""
        reader = self._reader
        try_send = self._host.try_send
        probes = self._prober.outstanding  # mutated in place, never replaced
        while True:
            try:
                messages = await reader.receive()
            except FrameError as exc:  # the runner's fault, not ours: it is failed for it
                message = f"runner sent an undecodable event: {exc}"
                self._end(EndCause(detected_by="channel", reason="crashed", message=message))
                return
            for msg in messages:
                # The hot path, one per token: no bookkeeping to do, no coroutine frames.
                if (
                    type(msg) is ChunkGenerated
                    and self._first_chunk_seen
                    and self.failure is None
                    and not probes
                    and try_send(msg)
                ):
                    continue
                await self.handle(msg)
            if reader.eof:
                self._end(EndCause(detected_by="channel"))
                return

    async def drain(self) -> None:
        """Take what the runner wrote before it died (chunks stay in order)."""
        for msg in self._reader.read_available():
            await self.handle(msg)

    async def handle(self, msg: object) -> None:
        if self.failure is not None:
            return  # a failed runner's late words are not news
        probes = self._prober.outstanding
        if probes and isinstance(msg, BaseEvent) and getattr(msg, "task_id", None) in probes:
            self._prober.on_event(msg)
            return  # probes are the supervisor's own business
        if isinstance(msg, ChunkGenerated):
            if not self._first_chunk_seen and msg.task_id == self._generate:
                self._first_chunk_seen = True
                self.progress.reset(time.monotonic())
        elif isinstance(msg, RunnerStatusUpdated):
            self._on_status(msg.status)
        elif isinstance(msg, TaskAcknowledged):
            self._prober.touch()
            self._book.acknowledged(msg.task_id)
        elif isinstance(msg, TaskStatusUpdated):
            self._prober.touch()
            if not self._on_task_status(msg):
                return
        elif isinstance(msg, CrashReport):
            self.crash = msg
            return
        elif isinstance(msg, TaskUndecodable):
            await self._reject_oldest_pending(msg.error)
            return
        elif not isinstance(msg, BaseEvent):
            self._log.warning("runner {} sent an unknown message {!r}", self._runner_id, msg)
            return
        await self._host.send(msg)

    def _on_status(self, status: BaseRunnerStatus) -> None:
        self.status = status
        self.progress.reset(time.monotonic())
        if isinstance(status, BUSY_STATUSES):
            self.busy.notify()
        if not isinstance(status, RunnerRunning):
            self._generate = None

    def _on_task_status(self, msg: TaskStatusUpdated) -> bool:
        """Follow the running Generate; False for a repeated terminal status (dropped)."""
        tid = msg.task_id
        if msg.status is TaskStatus.Running:
            if isinstance(self._book.in_progress.get(tid), Generate):
                self._generate = tid
                self._first_chunk_seen = False
                self.progress.reset(time.monotonic())
            return True
        if not self._book.finished(tid):
            self._log.warning("runner {} repeated the end of task {}", self._runner_id, tid)
            return False
        if tid == self._generate:
            self._generate = None
        return True

    async def _reject_oldest_pending(self, error: str) -> None:
        """The runner could not unpickle a task: the oldest unacknowledged one fails."""
        task_id = self._book.oldest_pending()
        if task_id is None:
            self._log.warning("runner {}: undecodable message: {}", self._runner_id, error)
            return
        await self.handle(TaskAcknowledged(task_id))
        await self.handle(
            TaskStatusUpdated(task_id, TaskStatus.Failed, f"runner cannot decode task: {error}")
        )

    # ------------------------------------------------------------ the end
    async def report_failure(self, failure: RunnerFailed) -> None:
        """Report the runner's failure, once; every open task then fails with it."""
        if self.failure is not None:
            return
        self.failure = self.status = failure  # later events are ignored from now on
        self.failed_at = time.monotonic()
        self._log.error(
            "runner {} failed ({}, by {}): {}",
            self._runner_id,
            failure.reason,
            failure.detected_by,
            failure.error_message,
        )
        await self._close(
            RunnerStatusUpdated(self._runner_id, failure),
            f"runner failed: {failure.error_message}",
        )

    async def report_stop(self, note: str) -> None:
        """The runner stopped because it was asked to; its open tasks fail (none will end)."""
        self._log.info("runner {} shut down{}", self._runner_id, note)
        status_event = None
        if not isinstance(self.status, RunnerShutdown):
            self.status = RunnerShutdown()
            status_event = RunnerStatusUpdated(self._runner_id, self.status)
        await self._close(status_event, "runner shut down before the task finished")

    async def report_abandoned(self, failure: RunnerFailed) -> None:
        """The host is leaving: say so briefly (never wait long on it), release everyone."""
        if self.failure is None and not isinstance(self.status, RunnerShutdown):
            self.failure = self.status = failure
            with anyio.move_on_after(0.5):
                await self._close(
                    RunnerStatusUpdated(self._runner_id, failure), "supervisor stopped"
                )
        self._book.release_waiters()

    async def _close(self, status_event: RunnerStatusUpdated | None, error: str) -> None:
        """Emit the runner's final status, then one Failed for every open task."""
        open_ids = self._book.close()
        try:
            if status_event is not None:
                await self._host.send(status_event)
            for task_id in open_ids:
                await self._host.send(TaskStatusUpdated(task_id, TaskStatus.Failed, error))
        finally:
            self._book.release_waiters()


__all__ = ["Relay"]
