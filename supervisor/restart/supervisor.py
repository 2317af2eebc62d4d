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

import math
import os
import random
import time
from collections.abc import Mapping, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE, Done
from supervisor.core.host_stream import HostStream
from supervisor.core.liveness import ResourceSample
from supervisor.core.supervisor import RunnerSupervisor
from supervisor.errors import RunnerFailedError
from supervisor.ops.observe import Phase, RunnerHealth, SupervisorObserver
from supervisor.protocol import (
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    LoadModel,
    RunnerFailed,
    RunnerIdle,
    RunnerLoaded,
    RunnerLoading,
    RunnerReady,
    RunnerRunning,
    RunnerShutdown,
    RunnerShuttingDown,
    RunnerStatusUpdated,
    RunnerWarmingUp,
    Shutdown,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)
from supervisor.restart.events import RunnerRestarting, SupervisorGaveUp
from supervisor.restart.policy import Decision, GiveUp, Restart, RestartPolicy, RestartTracker, Stop

_READY = (RunnerReady, RunnerRunning)
_PHASES: dict[type[BaseRunnerStatus], Phase] = {
    RunnerIdle: "starting",
    RunnerLoading: "loading",
    RunnerLoaded: "warming_up",
    RunnerWarmingUp: "warming_up",
    RunnerReady: "ready",
    RunnerRunning: "running",
    RunnerShuttingDown: "shutting_down",
    RunnerShutdown: "restarting",
    RunnerFailed: "restarting",
}
#: Failures in which the process is gone: their death time is when it exited.
_DEATHS = frozenset({"exited", "signalled", "crashed"})


class RunnerUnavailableError(RunnerFailedError):
    """No Ready incarnation to take the task: restarting for too long, gave up or stopped.

    ``status`` is the last incarnation's `RunnerFailed`, or one describing the wait.
    """


def _open_pidfd(pid: int) -> int | None:
    """A pidfd turns readable when the process exits: an independent death clock."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


class _Incarnation:
    __slots__ = (
        "decision",
        "exited_at",
        "failure",
        "host_shutdown",
        "number",
        "ready_at",
        "requeued",
        "settled",
        "startup_ids",
        "sup",
        "unacked",
    )

    def __init__(self, number: int, startup_ids: tuple[str, str]) -> None:
        self.number = number
        self.startup_ids = startup_ids
        self.sup: RunnerSupervisor | None = None
        self.unacked: set[str] = set()  # host tasks handed over, not yet acknowledged
        self.requeued: set[str] = set()  # of those, the ones whose Failed we held back
        self.failure: RunnerFailed | None = None
        self.decision: Decision | None = None
        self.ready_at: float | None = None
        self.exited_at: float | None = None
        self.host_shutdown = False
        self.settled = anyio.Event()  # every event of this incarnation went through


class _Spare:
    """A runner process started ahead of need (``policy.prespawn``), Idle, watched."""

    __slots__ = ("adopted", "done", "recv", "sup")

    def __init__(self, sup: RunnerSupervisor, recv: MemoryObjectReceiveStream[BaseEvent]) -> None:
        self.sup = sup
        self.recv = recv  # its events wait here until it is adopted
        self.done = anyio.Event()
        self.adopted = False


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
        self._current: _Incarnation | None = None
        self._last_failure: RunnerFailed | None = None
        self._gave_up: str | None = None
        self._restart_at: float | None = None
        self._run_called = False
        self._stopping = False
        self._finished = False
        self._changed: anyio.Event | None = None
        self._stop_event: anyio.Event | None = None
        self._spare: _Spare | None = None
        self._spare_tg: anyio.abc.TaskGroup | None = None
        self._spare_scope: anyio.CancelScope | None = None

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
        spare = self._spare
        return None if spare is None or spare.done.is_set() else spare.sup.pid

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
        return self._gave_up is not None

    @property
    def gave_up_reason(self) -> str | None:
        return self._gave_up

    @property
    def started(self) -> bool:
        """True once `run` was called."""
        return self._run_called

    @property
    def finished(self) -> bool:
        return self._finished

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
        if self._gave_up is not None:
            return "gave_up"
        if self._finished:
            return "stopped"
        if self._stopping:
            return "shutting_down"
        inc = self._current
        if inc is None:
            return "starting"
        if isinstance(inc.decision, Stop):
            return "stopped"
        if inc.sup is None:
            return "restarting"
        return _PHASES.get(type(inc.sup.status), "starting")

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
            gave_up_reason=self._gave_up,
        )

    def health_snapshots(self) -> Sequence[RunnerHealth]:
        return [self.health()]

    def add_observer(self, observer: SupervisorObserver) -> None:
        self._observers.append(observer)

    async def wait_finished(self) -> None:
        """Wait until no incarnation runs and none will start."""
        while not self._finished:
            await self._wait_changed()

    # --------------------------------------------------------------- commands
    async def start_task(self, task: BaseTask, *, within: float | None = None) -> None:
        """Hand ``task`` to the current incarnation; return once it is acknowledged.

        While the runner is starting or restarting this waits for it to be Ready,
        up to ``within`` seconds (default ``policy.ready_wait``), then raises
        `RunnerUnavailableError`. Raises `RunnerFailedError` if the incarnation
        fails before acknowledging the task, unless the policy re-queues it: then
        it is handed to the next incarnation and this keeps waiting.
        """
        if isinstance(task, (LoadModel, Warmup)):
            raise ValueError(
                "RestartingSupervisor drives LoadModel and Warmup itself, for every incarnation"
            )
        tid = task.task_id
        wait = self.policy.ready_wait if within is None else within
        owed = False  # we held back this task's Failed and still owe the host an answer
        inc: _Incarnation | None = None
        try:
            while True:
                inc = await self._wait_ready(wait)
                sup = inc.sup
                assert sup is not None
                if isinstance(task, Shutdown):
                    inc.host_shutdown = True
                inc.unacked.add(tid)
                owed = False  # from here on, this incarnation answers for the task
                try:
                    await sup.start_task(task)
                except RunnerFailedError:
                    if not self.policy.requeue_unacknowledged:
                        inc.unacked.discard(tid)
                        raise
                    try:
                        await inc.settled.wait()  # until the pump saw all its events
                    finally:
                        inc.unacked.discard(tid)
                    if tid not in inc.requeued:
                        raise
                    inc.requeued.discard(tid)
                    owed = True
                    wait = self.policy.ready_wait
                    logger.info(
                        "runner {}: re-queueing unacknowledged task {}", self.runner_id, tid
                    )
                    continue
                except BaseException:
                    inc.unacked.discard(tid)
                    raise
                inc.unacked.discard(tid)
                return
        except BaseException as exc:
            if owed or (inc is not None and tid in inc.requeued):
                self._emit_nowait(
                    TaskStatusUpdated(
                        tid,
                        TaskStatus.Failed,
                        f"runner failed; re-queued task not delivered ({exc})",
                    )
                )
            raise

    def cancel_task(self, task_id: str) -> Done:
        """Cancel ``task_id`` in the current incarnation. Never blocks."""
        sup = self.current
        if sup is not None and not sup.finished:
            sup.cancel_task(task_id)
        return DONE

    def shutdown(self) -> Done:
        """Stop for good: no more restarts; the current runner shuts down gracefully."""
        if not self._stopping:
            self._stopping = True
            if self._stop_event is not None:
                self._stop_event.set()
            sup = self.current
            if sup is not None and not sup.finished:
                sup.shutdown()
            self._retire_spare()
            self._notify()
        return DONE

    # -------------------------------------------------------------------- run
    async def run(self) -> None:
        """Run incarnations until shut down or the policy gives up. Never raises for a failure."""
        if self._run_called:
            raise RuntimeError("RestartingSupervisor.run() may only be called once")
        self._run_called = True
        self._stop_event = anyio.Event()
        if self._stopping:
            self._stop_event.set()
        try:
            async with anyio.create_task_group() as spare_tg:
                self._spare_tg = spare_tg
                if self.policy.prespawn:
                    spare_tg.start_soon(self._keep_spare)
                try:
                    await self._incarnations()
                finally:
                    self._retire_spare()
                    if self._spare_scope is not None:
                        self._spare_scope.cancel()
        finally:
            self._restart_at = None
            self._finished = True
            self._notify()

    async def _incarnations(self) -> None:
        """The restart loop."""
        number = 0
        while not self._stopping:
            number += 1
            inc = _Incarnation(
                number, (f"{self.runner_id}:load:{number}", f"{self.runner_id}:warmup:{number}")
            )
            self._current = inc
            self._restart_at = None
            self._notify()
            await self._run_incarnation(inc)
            decision = self._decide(inc)
            if self._stopping or isinstance(decision, Stop):
                break
            if isinstance(decision, GiveUp):
                logger.error("runner {}: giving up: {}", self.runner_id, decision.reason)
                for obs in self._observers:
                    obs.on_gave_up(self.runner_id, decision.reason)
                await self._emit(
                    SupervisorGaveUp(
                        self.runner_id, decision.reason, self.restarts, self._last_failure
                    )
                )
                break
            logger.info(
                "runner {}: restart {} in {:.3f}s",
                self.runner_id,
                decision.attempt,
                decision.delay,
            )
            for obs in self._observers:
                obs.on_restart(self.runner_id, number + 1, decision.delay)
            self._restart_at = time.monotonic() + decision.delay
            await self._emit(
                RunnerRestarting(self.runner_id, number + 1, decision.delay, self.restarts)
            )
            self._notify()
            if decision.delay > 0:
                assert self._stop_event is not None
                with anyio.move_on_after(decision.delay):
                    await self._stop_event.wait()

    def _decide(self, inc: _Incarnation) -> Decision:
        """Once per incarnation: at its failure (so that the requeue choice is known
        before its tasks' Failed events arrive) or at its end."""
        if inc.decision is None:
            if self._stopping:
                inc.decision = Stop()
            else:
                inc.decision = self._tracker.on_end(
                    time.monotonic(),
                    failed=inc.failure is not None,
                    reached_ready=inc.ready_at is not None,
                )
            if isinstance(inc.decision, GiveUp):
                self._gave_up = inc.decision.reason
        return inc.decision

    async def _run_incarnation(self, inc: _Incarnation) -> None:
        launched = self._adopt_spare()
        if launched is None:
            try:
                launched = self._launch(inc.number)
            except Exception as exc:  # noqa: BLE001 - a spawn failure is this incarnation's failure
                logger.opt(exception=exc).error(
                    "runner {}: could not start the runner", self.runner_id
                )
                failure = RunnerFailed(
                    reason="crashed",
                    error_message=f"could not start the runner: {type(exc).__name__}: {exc}",
                    detected_by="channel",
                )
                self._record_failure(inc, failure, None)
                await self._emit(RunnerStatusUpdated(self.runner_id, failure))
                inc.settled.set()
                return
        launched.adopted = True
        sup = inc.sup = launched.sup
        if self._stopping:
            sup.shutdown()
        pidfd = _open_pidfd(sup.pid)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, inc, launched.recv)
                async with anyio.create_task_group() as side:
                    if pidfd is not None:
                        side.start_soon(self._watch_exit, inc, pidfd)
                    side.start_soon(self._drive_startup, inc, sup)
                    await launched.done.wait()
                    side.cancel_scope.cancel()
        finally:
            if pidfd is not None:
                os.close(pidfd)
            inc.settled.set()
            self._notify()

    def _launch(self, number: int) -> _Spare:
        """Spawn incarnation ``number`` and start watching it; its events queue until
        adopted."""
        assert self._spare_tg is not None
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        try:
            sup = RunnerSupervisor.create(
                spec=self.spec,
                event_sender=send,
                config=self.config,
                runner_id=self.runner_id,
                incarnation=number,
            )
        except BaseException:
            send.close()
            recv.close()
            raise
        launched = _Spare(sup, recv)

        async def watch() -> None:
            try:
                async with send:
                    await sup.run()
            finally:
                launched.done.set()
                if not launched.adopted:
                    recv.close()  # a spare that was never used: its events go nowhere
                self._notify()

        self._spare_tg.start_soon(watch, name=f"runner {self.runner_id} pid {sup.pid}")
        return launched

    def _adopt_spare(self) -> _Spare | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.done.is_set() or spare.sup.finished or spare.sup.failure is not None:
            logger.warning("runner {}: the spare runner died while waiting", self.runner_id)
            spare.sup.kill()
            return None
        logger.info("runner {}: adopting spare runner pid {}", self.runner_id, spare.sup.pid)
        return spare

    def _retire_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.sup.shutdown()

    async def _keep_spare(self) -> None:
        """``policy.prespawn``: once the current incarnation is Ready, start the next
        runner process and leave it Idle, so a restart skips interpreter start-up."""
        with anyio.CancelScope() as scope:
            self._spare_scope = scope
            while not self._stopping:
                inc = self._current
                if self._spare is not None and self._spare.done.is_set():
                    self._spare = None  # it died while waiting: replace it
                if (
                    self._spare is None
                    and inc is not None
                    and inc.ready_at is not None
                    and inc.failure is None
                ):
                    try:
                        self._spare = self._launch(inc.number + 1)
                    except Exception as exc:  # noqa: BLE001 - no spare is no failure
                        logger.opt(exception=exc).warning(
                            "runner {}: could not start a spare runner", self.runner_id
                        )
                        await anyio.sleep(1.0)
                await self._wait_changed()

    async def _watch_exit(self, inc: _Incarnation, pidfd: int) -> None:
        await anyio.wait_readable(pidfd)
        inc.exited_at = time.monotonic()

    async def _drive_startup(self, inc: _Incarnation, sup: RunnerSupervisor) -> None:
        load_id, warmup_id = inc.startup_ids
        try:
            await sup.start_task(LoadModel(task_id=load_id))
            await sup.start_task(Warmup(task_id=warmup_id))
        except RunnerFailedError:
            return  # the failure comes through the event stream

    async def _pump(self, inc: _Incarnation, recv: MemoryObjectReceiveStream[BaseEvent]) -> None:
        async with recv:
            async for event in recv:
                if self._absorb(inc, event):
                    await self._emit(event)
                self._notify()

    def _absorb(self, inc: _Incarnation, event: BaseEvent) -> bool:
        """Update our view from one incarnation event; False to hold it back."""
        if isinstance(event, RunnerStatusUpdated):
            status = event.status
            if isinstance(status, RunnerReady) and inc.ready_at is None:
                inc.ready_at = time.monotonic()
                self._tracker.on_ready(inc.ready_at)
            elif isinstance(status, RunnerFailed) and inc.failure is None:
                self._record_failure(inc, status, self._detection_latency(inc, status))
        elif isinstance(event, TaskAcknowledged):
            inc.unacked.discard(event.task_id)
        elif isinstance(event, TaskStatusUpdated) and event.status.terminal:
            tid = event.task_id
            if (
                event.status is TaskStatus.Failed
                and inc.failure is not None
                and tid in inc.unacked
                and self.policy.requeue_unacknowledged
                and isinstance(inc.decision, Restart)
            ):
                inc.requeued.add(tid)
                return False
            if tid in inc.startup_ids:
                if (
                    event.status is not TaskStatus.Complete
                    and inc.failure is None
                    and not self._stopping
                    and not inc.host_shutdown
                ):
                    logger.error(
                        "runner {}: start-up task {} ended {} ({}); replacing the runner",
                        self.runner_id,
                        tid,
                        event.status,
                        event.error,
                    )
                    if inc.sup is not None:
                        inc.sup.kill()
            else:
                for obs in self._observers:
                    obs.on_task_finished(self.runner_id, event.status)
        return True

    def _record_failure(
        self, inc: _Incarnation, failure: RunnerFailed, latency: float | None
    ) -> None:
        inc.failure = failure
        self._last_failure = failure
        for obs in self._observers:
            obs.on_failure(self.runner_id, failure, latency)
        self._decide(inc)

    def _detection_latency(self, inc: _Incarnation, failure: RunnerFailed) -> float | None:
        """Failure emitted minus the best estimate of when the runner died or froze.

        Deaths: the pidfd's exit time (the kernel's own notice, independent of the
        detectors). Freezes: the last heartbeat change the detector saw. Wedges,
        probe failures and internal errors have no death time: None.
        """
        sup = inc.sup
        if sup is None or sup.failed_at is None:
            return None
        exited_at = inc.exited_at
        if failure.reason in _DEATHS and exited_at is not None and exited_at <= sup.failed_at:
            # (an exit after the report is our own kill of a live runner: no death time)
            return sup.failed_at - exited_at
        if failure.reason == "unresponsive" and sup.heartbeat_age is not None:
            return sup.heartbeat_age
        return None

    # ------------------------------------------------------------- plumbing
    async def _wait_ready(self, within: float) -> _Incarnation:
        deadline = time.monotonic() + within
        while True:
            if self._gave_up is not None or self._finished or self._stopping:
                raise RunnerUnavailableError(
                    self._last_failure
                    or RunnerFailed(
                        reason="exited",
                        error_message=f"runner {self.runner_id} is {self.phase}; no new tasks",
                    )
                )
            inc = self._current
            if (
                inc is not None
                and inc.sup is not None
                and inc.failure is None
                and not inc.host_shutdown
                and inc.sup.failure is None
                and not inc.sup.finished
                and isinstance(inc.sup.status, _READY)
            ):
                return inc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerUnavailableError(
                    RunnerFailed(
                        reason="unresponsive",
                        error_message=(
                            f"runner {self.runner_id} not ready within {within:g}s "
                            f"(phase {self.phase}, restarts {self.restarts})"
                        ),
                    )
                )
            with anyio.move_on_after(remaining):
                await self._wait_changed()

    async def _wait_changed(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _emit(self, event: BaseEvent) -> None:
        await self._host.send(event)

    def _emit_nowait(self, event: BaseEvent) -> None:
        """For paths being cancelled: best effort, never waits."""
        self._host.send_nowait(event)


__all__ = ["RestartingSupervisor", "RunnerUnavailableError"]
