"""`RestartingSupervisor`: one runner id, a succession of one-shot incarnations.

Each incarnation is a fresh `RunnerSupervisor` (one process, one `RunnerFailed` at
most). This layer decides, with a `RestartTracker`, whether to start another after
an incarnation ends, waits the backoff, and drives LoadModel and Warmup itself so
that a restarted runner becomes Ready again without the host's help. Host tasks
go to the current incarnation once it is Ready.

All incarnations' events go out on the host's one stream, in order, followed by
`RunnerRestarting` before each new incarnation and `SupervisorGaveUp` at the end
when the policy stops restarting after a failure.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Mapping, Sequence

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE, Done
from supervisor.core.host_stream import HostStream
from supervisor.core.liveness import ResourceSample
from supervisor.core.supervisor import RunnerSupervisor
from supervisor.errors import RunnerUnavailableError, SupervisorClosedError
from supervisor.ops.observe import RunnerHealth, SupervisorObserver
from supervisor.ops.phases import Phase
from supervisor.protocol import (
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    LoadModel,
    RunnerFailed,
    RunnerIdle,
    RunnerReady,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)
from supervisor.restart.events import RunnerRestarting, SupervisorGaveUp
from supervisor.restart.incarnation import Incarnation
from supervisor.restart.launcher import Launcher
from supervisor.restart.lifecycle import RestartState, restart_lifecycle
from supervisor.restart.policy import Decision, GiveUp, Restart, RestartPolicy, RestartTracker

_S = RestartState


class RestartingSupervisor:
    """Keeps one runner id served by restarting its runner process under a `RestartPolicy`."""

    def __init__(
        self,
        *,
        spec: RunnerSpec | None = None,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig | None = None,
        policy: RestartPolicy | None = None,
        runner_id: str | None = None,
        observers: Sequence[SupervisorObserver] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec or RunnerSpec()
        self.config = config or SupervisorConfig()
        self.policy = policy or RestartPolicy()
        self.runner_id = runner_id or self.spec.runner_id or f"runner-{os.urandom(4).hex()}"
        self._host = HostStream(event_sender, self.runner_id)
        self._observers: list[SupervisorObserver] = list(observers)
        self._tracker = RestartTracker(self.policy, rng)
        self._life = restart_lifecycle()
        self._changed = self._life.changed  # the one wake-up, for state and incarnation news
        self._launcher = Launcher(
            spec=self.spec, config=self.config, runner_id=self.runner_id, changed=self._changed
        )
        self._current: Incarnation | None = None
        self._last_failure: RunnerFailed | None = None
        self._restart_at: float | None = None

    # ---------------------------------------------------------------- read-only
    @property
    def incarnation(self) -> int:
        """Number of the current (or last) incarnation; 0 before the first."""
        return 0 if self._current is None else self._current.number

    @property
    def restarts(self) -> int:
        return self._tracker.restarts

    @property
    def current(self) -> RunnerSupervisor | None:
        """The current incarnation's one-shot supervisor (None between incarnations)."""
        inc = self._current
        return None if inc is None else inc.sup

    @property
    def spare_pid(self) -> int | None:
        """The pre-started spare runner's pid (``policy.prespawn``), if one is waiting."""
        return self._launcher.spare_pid

    @property
    def pid(self) -> int | None:
        sup = self.current
        return None if sup is None or sup.finished else sup.pid

    @property
    def status(self) -> BaseRunnerStatus:
        """The current incarnation's status (its `RunnerFailed` while restarting)."""
        sup = self.current
        if sup is not None:
            return sup.status
        return self._last_failure or RunnerIdle()

    @property
    def failure(self) -> RunnerFailed | None:
        """The latest incarnation failure, if any."""
        return self._last_failure

    @property
    def gave_up(self) -> bool:
        return self._life.state.gave_up

    @property
    def gave_up_reason(self) -> str | None:
        inc = self._current
        if self.gave_up and inc is not None and isinstance(inc.decision, GiveUp):
            return inc.decision.reason
        return None

    @property
    def started(self) -> bool:
        """True once `run` was called."""
        return self._life.state.started

    @property
    def finished(self) -> bool:
        return self._life.state.ended

    @property
    def heartbeat_age(self) -> float | None:
        sup = self.current
        return None if sup is None or sup.finished else sup.heartbeat_age

    @property
    def resources(self) -> ResourceSample | None:
        sup = self.current
        return None if sup is None or sup.finished else sup.resources

    @property
    def pending(self) -> Mapping[str, BaseTask]:
        sup = self.current
        return {} if sup is None else sup.pending

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        sup = self.current
        return {} if sup is None else sup.in_progress

    @property
    def phase(self) -> Phase:
        shown = self._life.state.shown_phase
        if shown is not None:
            return shown
        return "starting" if self._current is None else self._current.phase

    @property
    def retry_after(self) -> float | None:
        """Seconds left of the restart backoff, while one is under way."""
        if self._restart_at is None:
            return None
        return max(0.0, self._restart_at - time.monotonic())

    def health(self) -> RunnerHealth:
        rss = self.resources
        return RunnerHealth(
            runner_id=self.runner_id,
            phase=self.phase,
            incarnation=self.incarnation,
            restarts=self.restarts,
            pid=self.pid,
            heartbeat_age=self.heartbeat_age,
            rss=None if rss is None else rss.rss,
            pending=len(self.pending),
            in_progress=len(self.in_progress),
            retry_after=self.retry_after,
            gave_up_reason=self.gave_up_reason,
            containment=None if self.current is None else self.current.containment,
            descendants=None if rss is None else rss.descendants,
        )

    def health_snapshots(self) -> Sequence[RunnerHealth]:
        return [self.health()]

    def add_observer(self, observer: SupervisorObserver) -> None:
        self._observers.append(observer)

    async def wait_finished(self) -> None:
        """Wait until no incarnation runs and none will start."""
        await self._changed.wait_until(lambda: self._life.state.ended)

    # --------------------------------------------------------------- commands
    async def start_task(self, task: BaseTask, *, within: float | None = None) -> None:
        """Hand ``task`` to the current incarnation; return once it is acknowledged.

        While the runner is starting or restarting this waits for it to be Ready,
        up to ``within`` seconds (default ``policy.ready_wait``), then raises
        `RunnerUnavailableError` (also at once if the policy gave up);
        `SupervisorClosedError` once shut down or stopped. Raises
        `RunnerFailedError` if the incarnation fails before acknowledging the
        task, unless the policy re-queues it: then it is handed to the next
        incarnation and this keeps waiting.
        """
        if isinstance(task, (LoadModel, Warmup)):
            raise ValueError(
                "RestartingSupervisor drives LoadModel and Warmup itself, for every incarnation"
            )
        tid = task.task_id
        wait = self.policy.ready_wait if within is None else within
        owed = False  # we held back this task's Failed and still owe the host an answer
        inc: Incarnation | None = None
        try:
            while True:
                inc = await self._wait_ready(wait)
                owed = False  # from here on, this incarnation answers for the task
                if await inc.deliver(task):
                    return
                owed = True
                wait = self.policy.ready_wait
                logger.info("runner {}: re-queueing unacknowledged task {}", self.runner_id, tid)
        except BaseException as exc:
            if owed or (inc is not None and inc.owes(tid)):
                error = f"runner failed; re-queued task not delivered ({exc})"
                self._host.send_nowait(TaskStatusUpdated(tid, TaskStatus.Failed, error))
            raise

    def cancel_task(self, task_id: str) -> Done:
        """Cancel ``task_id`` in the current incarnation. Never blocks."""
        sup = self.current
        if sup is not None and not sup.finished:
            sup.cancel_task(task_id)
        return DONE

    def shutdown(self) -> Done:
        """Stop for good: no more restarts; the current runner shuts down gracefully."""
        target = _S.CLOSED if self._life.state is _S.CREATED else _S.STOPPING
        if self._life.advance(target):
            sup = self.current
            if sup is not None and not sup.finished:
                sup.shutdown()
            self._launcher.retire_spare()
        return DONE

    # -------------------------------------------------------------------- run
    async def run(self) -> None:
        """Run incarnations until shut down or the policy gives up. Never raises for a failure."""
        if self._life.state is _S.CLOSED:
            self._life.transition(_S.FINISHED)
            return
        if not self._life.advance(_S.RUNNING):
            raise RuntimeError("RestartingSupervisor.run() may only be called once")
        try:
            spare_wanted = self._spare_wanted if self.policy.prespawn else None
            async with self._launcher.open(spare_wanted):
                await self._incarnations()
        finally:
            self._restart_at = None
            self._life.transition(_S.GAVE_UP if self._life.state is _S.GIVING_UP else _S.FINISHED)

    async def _incarnations(self) -> None:
        """The restart loop."""
        number = 0
        while self._life.state is _S.RUNNING:
            number += 1
            inc = Incarnation(number, self.runner_id, requeues=self.policy.requeue_unacknowledged)
            self._current = inc
            self._restart_at = None
            self._changed.notify()
            await self._run_incarnation(inc)
            decision = self._decide(inc)
            if isinstance(decision, GiveUp):
                # In mode "never" the failure itself was the news (logged at ERROR once).
                level = "INFO" if self.policy.mode == "never" else "ERROR"
                logger.log(level, "runner {}: giving up: {}", self.runner_id, decision.reason)
                for obs in self._observers:
                    obs.on_gave_up(self.runner_id, decision.reason)
                last = self._last_failure
                await self._host.send(
                    SupervisorGaveUp(self.runner_id, decision.reason, self.restarts, last)
                )
                return
            if not isinstance(decision, Restart) or self._life.state is not _S.RUNNING:
                return
            await self._before_restart(number + 1, decision)

    async def _before_restart(self, number: int, decision: Restart) -> None:
        """Announce incarnation ``number`` and wait its backoff (cut short by a shutdown)."""
        logger.info(
            "runner {}: restart {} in {:.3f}s", self.runner_id, decision.attempt, decision.delay
        )
        for obs in self._observers:
            obs.on_restart(self.runner_id, number, decision.delay)
        self._restart_at = time.monotonic() + decision.delay
        await self._host.send(
            RunnerRestarting(self.runner_id, number, decision.delay, self.restarts)
        )
        self._changed.notify()
        if decision.delay > 0:
            with anyio.move_on_after(decision.delay):
                await self._changed.wait_until(lambda: self._life.state is not _S.RUNNING)

    def _decide(self, inc: Incarnation) -> Decision:
        decision = inc.decide(self._tracker, stopping=self._life.state is not _S.RUNNING)
        if isinstance(decision, GiveUp):
            self._life.advance(_S.GIVING_UP)  # (a second ask finds it there already)
        return decision

    def _spare_wanted(self) -> bool:
        """Once the current incarnation is Ready, a spare stands by for its successor."""
        inc = self._current
        return self._life.state is _S.RUNNING and inc is not None and inc.healthy

    async def _run_incarnation(self, inc: Incarnation) -> None:
        launched = self._launcher.take(inc.number)
        if isinstance(launched, RunnerFailed):
            self._record_failure(inc, launched)
            await self._host.send(RunnerStatusUpdated(self.runner_id, launched))
            inc.settled.set()
            return
        if self._life.state is not _S.RUNNING:
            launched.sup.shutdown()
        try:
            await inc.run(launched, functools.partial(self._on_event, inc))
        finally:
            self._changed.notify()

    async def _on_event(self, inc: Incarnation, event: BaseEvent) -> None:
        """Update our view from one incarnation event, then pass it on (or hold it back)."""
        if self._absorb(inc, event):
            await self._host.send(event)
        self._changed.notify()

    def _absorb(self, inc: Incarnation, event: BaseEvent) -> bool:
        if isinstance(event, RunnerStatusUpdated):
            status = event.status
            if isinstance(status, RunnerReady) and inc.ready_at is None:
                self._tracker.on_ready(inc.became_ready())
            elif isinstance(status, RunnerFailed) and inc.failure is None:
                self._record_failure(inc, status)
        elif isinstance(event, TaskAcknowledged):
            inc.acked(event.task_id)
        elif isinstance(event, TaskStatusUpdated) and event.status.terminal:
            tid = event.task_id
            if event.status is TaskStatus.Failed and inc.hold_back_failed(tid):
                return False
            if tid in inc.startup_ids:
                inc.startup_task_ended(event, stopping=self._life.state is not _S.RUNNING)
            else:
                for obs in self._observers:
                    obs.on_task_finished(self.runner_id, event.status)
        return True

    def _record_failure(self, inc: Incarnation, failure: RunnerFailed) -> None:
        inc.failure = failure
        self._last_failure = failure
        for obs in self._observers:
            obs.on_failure(self.runner_id, failure, inc.detection_latency(failure))
        self._decide(inc)

    # ------------------------------------------------------------- plumbing
    async def _wait_ready(self, within: float) -> Incarnation:
        deadline = time.monotonic() + within
        while True:
            self._check_open()
            inc = self._current
            if inc is not None and inc.takes_tasks:
                return inc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerUnavailableError(
                    f"runner {self.runner_id} not ready within {within:g}s "
                    f"(phase {self.phase}, restarts {self.restarts})",
                    self._last_failure,
                )
            with anyio.move_on_after(remaining):
                await self._changed.wait()

    def _check_open(self) -> None:
        if self.gave_up:
            raise RunnerUnavailableError(
                f"runner {self.runner_id} gave up: {self.gave_up_reason}", self._last_failure
            )
        if not self._life.state.takes_tasks:
            raise SupervisorClosedError(f"runner {self.runner_id} is {self.phase}; no new tasks")


__all__ = ["RestartingSupervisor", "RunnerUnavailableError"]
