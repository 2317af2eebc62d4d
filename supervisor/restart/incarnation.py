"""One incarnation of a restarted runner: its record, its run, and the host tasks handed to it.

Re-queueing (``policy.requeue_unacknowledged``) is decided here and only here:
a host task handed over but not yet acknowledged when the incarnation failed (or
was stopped with its group), with a new incarnation coming, has its ``Failed``
held back, and the `start_task` call that handed it over takes it back and hands
it to the next incarnation.

An incarnation can be *retired* (a replacement took over: it takes no new task,
drains and stops) and *stopped by the restart layer* (its group restarts, or its
drain timed out): then the host tasks it leaves unfinished end ``Failed`` with
``stop_cause`` as their error, whatever the runner called them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from loguru import logger

from supervisor.core.runner_supervisor import RunnerSupervisor
from supervisor.errors import RunnerFailedError, SupervisorClosedError
from supervisor.ops.phases import Phase, phase_of
from supervisor.protocol import (
    READY_STATUSES,
    BaseEvent,
    BaseTask,
    LoadModel,
    RunnerFailed,
    Shutdown,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)
from supervisor.restart.deathclock import ExitClock, detection_latency
from supervisor.restart.launcher import Launched
from supervisor.restart.policy import Decision, Replace, Restart, RestartTracker, Stop
from supervisor.restart.recycle import RecycleCounter


class Incarnation:
    """What one runner process did, as the restarting layer saw it."""

    __slots__ = (
        "_clock",
        "_requeued",
        "_unacked",
        "decision",
        "failure",
        "host_cancelled",
        "host_shutdown",
        "number",
        "ready_at",
        "recycle",
        "requeues",
        "restart_reason",
        "retired",
        "runner_id",
        "settled",
        "startup_ids",
        "stop_cause",
        "sup",
    )

    def __init__(self, number: int, runner_id: str, *, requeues: bool) -> None:
        self.number = number
        self.runner_id = runner_id
        #: our own LoadModel and Warmup task ids for this incarnation
        self.startup_ids = (f"{runner_id}:load:{number}", f"{runner_id}:warmup:{number}")
        #: the policy re-queues unacknowledged tasks
        self.requeues = requeues
        self.sup: RunnerSupervisor | None = None
        self.failure: RunnerFailed | None = None
        #: the policy's one decision about what follows this incarnation
        self.decision: Decision | None = None
        self.ready_at: float | None = None
        #: the host sent Shutdown: the runner's end is asked for, not a failure
        self.host_shutdown = False
        #: every event of this incarnation went through
        self.settled = anyio.Event()
        self._clock: ExitClock | None = None
        self._unacked: set[str] = set()  # handed over, no acknowledgement yet
        self._requeued: set[str] = set()  # of those, the ones whose Failed was held back
        #: a replacement took over: no new tasks; it drains, then stops
        self.retired = False
        #: the restart layer stopped it with tasks in flight: their error
        self.stop_cause: str | None = None
        #: tasks the host cancelled here (their Cancelled is theirs, never rewritten)
        self.host_cancelled: set[str] = set()
        #: why the next incarnation starts (RunnerRestarting.reason); None: derived
        self.restart_reason: str | None = None
        self.recycle: RecycleCounter | None = None

    # ------------------------------------------------------------------ views
    @property
    def takes_tasks(self) -> bool:
        """Ready, and nothing says it is about to end."""
        sup = self.sup
        return (
            sup is not None
            and self.failure is None
            and not self.host_shutdown
            and not self.retired
            and self.stop_cause is None
            and sup.failure is None
            and not sup.finished
            and isinstance(sup.status, READY_STATUSES)
        )

    @property
    def healthy(self) -> bool:
        """It reached Ready and has not failed."""
        return self.ready_at is not None and self.failure is None

    @property
    def drained(self) -> bool:
        """No host task of its own left (it may take none: it is retired)."""
        sup = self.sup
        return sup is None or sup.finished or not (sup.pending or sup.in_progress)

    @property
    def reason(self) -> str:
        """Why a new incarnation follows this one (`RunnerRestarting.reason`)."""
        if isinstance(self.decision, Replace):
            return self.decision.reason
        if self.restart_reason is not None:
            return self.restart_reason
        return "exit" if self.failure is None else "failure"

    @property
    def phase(self) -> Phase:
        if isinstance(self.decision, Stop):
            return "stopped"
        if self.sup is None or self.retired or self.stop_cause is not None:
            return "restarting"
        return phase_of(self.sup.status)

    def retire(self, reason: str) -> None:
        """A replacement takes over: no new tasks; what follows is decided (no budget)."""
        self.retired = True
        self.decision = Replace(reason)

    def detection_latency(self, failure: RunnerFailed) -> float | None:
        if self.sup is None or self._clock is None:
            return None  # it never started
        return detection_latency(self.sup, failure, self._clock.exited_at)

    def became_ready(self) -> float:
        """Note the first Ready; returns its time."""
        self.ready_at = time.monotonic()
        return self.ready_at

    def decide(self, tracker: RestartTracker, *, stopping: bool) -> Decision:
        """What follows this incarnation, decided once: at its failure (so that the
        requeue choice is known before its tasks' Failed events arrive) or its end."""
        if self.decision is None:
            if stopping:
                self.decision = Stop()
            else:
                self.decision = tracker.on_end(
                    time.monotonic(),
                    failed=self.failure is not None,
                    reached_ready=self.ready_at is not None,
                )
        return self.decision

    # -------------------------------------------------------------------- run
    async def run(
        self, launched: Launched, on_event: Callable[[BaseEvent], Awaitable[None]]
    ) -> None:
        """Drive the adopted runner to Ready and watch it until it is reaped; every
        event it emits goes to ``on_event``, in order."""
        sup = self.sup = launched.sup
        clock = self._clock = ExitClock()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, launched, on_event)
                async with anyio.create_task_group() as side:
                    side.start_soon(clock.watch, sup)
                    side.start_soon(self._drive_startup, sup)
                    await launched.done.wait()
                    side.cancel_scope.cancel()
        finally:
            self.settled.set()

    async def _pump(
        self, launched: Launched, on_event: Callable[[BaseEvent], Awaitable[None]]
    ) -> None:
        recv = launched.recv
        async with recv:
            async for event in recv:
                await on_event(event)
                # Then what else is queued, without an event-loop turn per event: with
                # many runners in one loop a turn is long, and one event per turn would
                # cap the whole node's throughput.
                while True:
                    try:
                        event = recv.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    await on_event(event)

    async def _drive_startup(self, sup: RunnerSupervisor) -> None:
        load_id, warmup_id = self.startup_ids
        try:
            await sup.start_task(LoadModel(task_id=load_id))
            await sup.start_task(Warmup(task_id=warmup_id))
        except (RunnerFailedError, SupervisorClosedError):
            return  # the failure (or the stop) comes through the event stream

    def startup_task_ended(self, event: TaskStatusUpdated, *, stopping: bool) -> None:
        """A start-up task that did not complete leaves a runner that will never be
        Ready: replace it (unless its end was asked for)."""
        if (
            event.status is TaskStatus.Complete
            or self.failure is not None
            or stopping
            or self.host_shutdown
            or self.retired
            or self.stop_cause is not None
        ):
            return
        logger.error(
            "runner {}: start-up task {} ended {} ({}); replacing the runner",
            self.runner_id,
            event.task_id,
            event.status,
            event.error,
        )
        if self.sup is not None:
            self.sup.kill()

    # ------------------------------------------------------------ host tasks
    async def deliver(self, task: BaseTask) -> bool:
        """Hand ``task`` over: True once acknowledged, False if the incarnation failed
        first and the task is to be re-queued. Raises `RunnerFailedError` otherwise."""
        sup = self.sup
        assert sup is not None, "deliver only to an incarnation that takes tasks"
        if isinstance(task, Shutdown):
            self.host_shutdown = True
        tid = task.task_id
        self.handed_over(tid)
        try:
            await sup.start_task(task)
        except RunnerFailedError:
            if not self.requeues:
                raise
            await self.settled.wait()  # until every Failed of this incarnation was seen
            if not self.take_requeued(tid):
                raise
            return False
        finally:
            self.acked(tid)  # acknowledged, failed or abandoned: a later Failed is final
        return True

    def handed_over(self, task_id: str) -> None:
        """``task_id`` goes to this incarnation; its acknowledgement is awaited."""
        self._unacked.add(task_id)

    def acked(self, task_id: str) -> None:
        """``task_id`` was acknowledged: the runner may have started it."""
        self._unacked.discard(task_id)

    def hold_back_failed(self, task_id: str) -> bool:
        """The incarnation reports ``task_id`` Failed: True to re-queue it instead.

        Only a task never acknowledged (the runner cannot have started it), after
        the incarnation failed or was stopped by the restart layer, when the policy
        re-queues and a new incarnation follows.
        """
        if (
            self.requeues
            and (self.failure is not None or self.stop_cause is not None)
            and task_id in self._unacked
            and isinstance(self.decision, (Restart, Replace))
        ):
            self._requeued.add(task_id)
            return True
        return False

    def take_requeued(self, task_id: str) -> bool:
        """True once if ``task_id``'s Failed was held back: the caller re-queues it."""
        if task_id in self._requeued:
            self._requeued.discard(task_id)
            return True
        return False

    def final_status(self, event: TaskStatusUpdated) -> TaskStatusUpdated:
        """A host task's terminal status as the host is told it: ``Failed`` with
        ``stop_cause`` when the restart layer stopped the runner under it."""
        if (
            self.stop_cause is None
            or event.status is TaskStatus.Complete
            or event.task_id in self.host_cancelled
        ):
            return event
        return TaskStatusUpdated(event.task_id, TaskStatus.Failed, self.stop_cause)

    def owes(self, task_id: str) -> bool:
        """``task_id``'s Failed was held back and nobody took it: the host got none."""
        return task_id in self._requeued


__all__ = ["Incarnation"]
