"""One incarnation of a restarted runner: its record and its run.

Incarnations are executors: the host tasks handed to one are the ledger's
(`supervisor.restart.ledger`), which decides at the incarnation's end what becomes
of those it did not finish.

Its life is one state (`INCARNATION_TABLE`): it starts, becomes Ready, and then may
be *retired* (a replacement took over: it takes no new task, drains and stops),
*stopped by the restart layer* (its group restarts, or its drain timed out: the host
tasks it leaves unfinished are recovered or end ``Failed`` with ``stop_cause`` as
their error, whatever the runner called them), asked to shut down by the host, or
fail; it ends once every event it wrote went through.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
from loguru import logger

from supervisor.core.runner_supervisor import RunnerSupervisor
from supervisor.core.statemachine import StateMachine
from supervisor.errors import RunnerFailedError, SupervisorClosedError
from supervisor.ops.phases import Phase, phase_of
from supervisor.protocol import (
    READY_STATUSES,
    BaseEvent,
    LoadModel,
    RunnerFailed,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)
from supervisor.restart.deathclock import ExitClock, detection_latency
from supervisor.restart.launcher import Launched, startup_ids
from supervisor.restart.policy import Decision, Replace, RestartTracker, Stop
from supervisor.restart.recycle import RecycleCounter


class IncState(enum.Enum):
    """Where one incarnation is in its life, as the restarting layer sees it."""

    STARTING = "starting"  # created: its process not adopted, or not Ready yet
    READY = "ready"  # reached Ready: takes tasks while its runner does
    SHUTTING_DOWN = "shutting_down"  # the host sent Shutdown: its end is asked for
    RETIRED = "retired"  # a replacement took over: no new tasks; drains, then stops
    STOPPING = "stopping"  # the restart layer stops it (group round, drain timeout)
    FAILED = "failed"  # its RunnerFailed was seen
    ENDED = "ended"  # every event it wrote went through (settled)


_I = IncState
#: The moves of an incarnation's life; a failure or the end may come at any time.
INCARNATION_TABLE: Mapping[IncState, frozenset[IncState]] = {
    _I.STARTING: frozenset({_I.READY, _I.SHUTTING_DOWN, _I.STOPPING, _I.FAILED, _I.ENDED}),
    _I.READY: frozenset({_I.SHUTTING_DOWN, _I.RETIRED, _I.STOPPING, _I.FAILED, _I.ENDED}),
    _I.SHUTTING_DOWN: frozenset({_I.STOPPING, _I.FAILED, _I.ENDED}),
    _I.RETIRED: frozenset({_I.STOPPING, _I.FAILED, _I.ENDED}),
    _I.STOPPING: frozenset({_I.FAILED, _I.ENDED}),
    _I.FAILED: frozenset({_I.ENDED}),
    _I.ENDED: frozenset(),
}


class Incarnation:
    """What one runner process did, as the restarting layer saw it."""

    __slots__ = (
        "_clock",
        "decision",
        "failure",
        "life",
        "number",
        "ready_at",
        "recycle",
        "restart_reason",
        "runner_id",
        "settled",
        "startup_ids",
        "stop_cause",
        "sup",
    )

    def __init__(self, number: int, runner_id: str) -> None:
        self.number = number
        self.runner_id = runner_id
        #: our own Prepare, LoadModel and Warmup task ids for this incarnation
        self.startup_ids = startup_ids(runner_id, number)
        self.sup: RunnerSupervisor | None = None
        self.life = StateMachine(IncState.STARTING, INCARNATION_TABLE)
        #: its RunnerFailed, once seen (`failed`)
        self.failure: RunnerFailed | None = None
        #: the policy's one decision about what follows this incarnation
        self.decision: Decision | None = None
        self.ready_at: float | None = None
        #: every event of this incarnation went through (`IncState.ENDED`)
        self.settled = anyio.Event()
        self._clock: ExitClock | None = None
        #: the restart layer stopped it with tasks in flight: their error (`stop`)
        self.stop_cause: str | None = None
        #: why the next incarnation starts (RunnerRestarting.reason); None: derived
        self.restart_reason: str | None = None
        self.recycle: RecycleCounter | None = None

    # ------------------------------------------------------------------ moves
    def became_ready(self) -> float:
        """Note the first Ready; returns its time."""
        self.ready_at = time.monotonic()
        self.life.advance(IncState.READY)
        return self.ready_at

    def shutting_down(self) -> None:
        """The host handed it a Shutdown: its end is asked for, not a failure."""
        self.life.advance(IncState.SHUTTING_DOWN)

    def retire(self, reason: str) -> None:
        """A replacement takes over: no new tasks; what follows is decided (no budget)."""
        self.life.advance(IncState.RETIRED)
        self.decision = Replace(reason)

    def stop(self, cause: str) -> None:
        """The restart layer stops it; ``cause`` is the error of the tasks it leaves
        (the first cause stays)."""
        self.stop_cause = self.stop_cause or cause
        self.life.advance(IncState.STOPPING)

    def failed(self, failure: RunnerFailed) -> None:
        """Its RunnerFailed came through."""
        self.failure = failure
        self.life.advance(IncState.FAILED)

    def ended(self) -> None:
        """Every event it wrote went through."""
        self.life.advance(IncState.ENDED)
        self.settled.set()

    # ------------------------------------------------------------------ views
    @property
    def state(self) -> IncState:
        return self.life.state

    @property
    def takes_tasks(self) -> bool:
        """Ready, and nothing says it is about to end."""
        sup = self.sup
        return (
            self.life.state is IncState.READY
            and sup is not None
            and sup.failure is None
            and not sup.finished
            and isinstance(sup.status, READY_STATUSES)
        )

    @property
    def ending(self) -> bool:
        """It failed, or the restart layer is stopping it: a task status other than
        Complete is now its end's, not the task's (the ledger decides at the end)."""
        return self.failure is not None or self.stop_cause is not None

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
        if self.sup is None or self.life.state in (IncState.RETIRED, IncState.STOPPING):
            return "restarting"
        return phase_of(self.sup.status)

    def detection_latency(self, failure: RunnerFailed) -> float | None:
        if self.sup is None or self._clock is None:
            return None  # it never started
        return detection_latency(self.sup, failure, self._clock.exited_at)

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
        self,
        launched: Launched,
        on_event: Callable[[BaseEvent], Awaitable[None]],
        try_forward: Callable[[BaseEvent], bool] = lambda event: False,
    ) -> None:
        """Drive the adopted runner to Ready and watch it until it is reaped; every
        event it emits goes, in order, to ``try_forward`` (a synchronous fast path that
        says whether it took the event) and, when it did not, to ``on_event``."""
        sup = self.sup = launched.sup
        clock = self._clock = ExitClock()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, launched, on_event, try_forward)
                async with anyio.create_task_group() as side:
                    side.start_soon(clock.watch, sup)
                    if not launched.drives_startup:  # a loaded spare: already done
                        side.start_soon(self._drive_startup, sup)
                    await launched.done.wait()
                    side.cancel_scope.cancel()
        finally:
            self.ended()

    async def _pump(
        self,
        launched: Launched,
        on_event: Callable[[BaseEvent], Awaitable[None]],
        try_forward: Callable[[BaseEvent], bool],
    ) -> None:
        recv = launched.recv
        receive_nowait = recv.receive_nowait
        async with recv:
            async for event in recv:
                if not try_forward(event):
                    await on_event(event)
                # Then what else is queued, without an event-loop turn per event: with
                # many runners in one loop a turn is long, and one event per turn would
                # cap the whole node's throughput.
                while True:
                    try:
                        event = receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if not try_forward(event):
                        await on_event(event)

    async def _drive_startup(self, sup: RunnerSupervisor) -> None:
        _, load_id, warmup_id = self.startup_ids
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
            or stopping
            or self.life.state is not IncState.STARTING  # its end was asked for, or came
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


__all__ = ["Incarnation"]
