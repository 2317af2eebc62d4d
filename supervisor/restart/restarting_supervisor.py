"""`RestartingSupervisor`: one runner id, a succession of one-shot incarnations.

Each incarnation is a fresh `RunnerSupervisor` (one process, one `RunnerFailed` at
most). This layer decides, with a `RestartTracker` (or its group's, see
`supervisor.restart.group`), whether to start another after an incarnation ends,
waits the backoff, and drives LoadModel and Warmup itself so that a restarted
runner becomes Ready again without the host's help. Host tasks go to the current
incarnation once it is Ready.

It also replaces a healthy runner on purpose (`replace`, recycling under
``policy.max_tasks``/``max_rss``): see `supervisor.restart.replace` for the order.
Then two incarnations may live at once; the old one drains and only the current
one speaks for the runner id (its runner status events are the ones forwarded).

All incarnations' events go out on the host's one stream, followed by
`RunnerRestarting` before each new incarnation and `SupervisorGaveUp` at the end
when the policy stops restarting after a failure.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from runners.engines import engine_supports_resume
from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE, Done
from supervisor.core.host_stream import HostStream
from supervisor.core.statemachine import Notifier
from supervisor.core.tasks import validate_task
from supervisor.errors import (
    RunnerFailedError,
    RunnerUnavailableError,
    SupervisorClosedError,
)
from supervisor.logs.files import runner_log_held, runner_logger
from supervisor.ops.observe import SupervisorObserver
from supervisor.protocol import (
    BaseEvent,
    BaseTask,
    ChunkGenerated,
    Detector,
    EmbeddingGenerated,
    FailureReason,
    Generate,
    LoadModel,
    RunnerFailed,
    RunnerReady,
    RunnerStatusUpdated,
    Shutdown,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)
from supervisor.restart.events import RunnerRestarting, SupervisorGaveUp
from supervisor.restart.incarnation import Incarnation
from supervisor.restart.launcher import Launcher
from supervisor.restart.ledger import Entry, Ledger, Stage
from supervisor.restart.policy import (
    Decision,
    GiveUp,
    Replace,
    Restart,
    RestartPolicy,
    RestartTracker,
)
from supervisor.restart.recycle import RecycleCounter
from supervisor.restart.replace import Replacement
from supervisor.restart.restart_states import RestartState, restart_lifecycle
from supervisor.restart.roster import Roster
from supervisor.restart.spares import check_spare_fits
from supervisor.restart.view import RestartingView

if TYPE_CHECKING:
    from supervisor.restart.group import RestartGroup

_S = RestartState


class RestartingSupervisor(RestartingView):
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
        group: RestartGroup | None = None,
    ) -> None:
        self.spec = spec or RunnerSpec()
        self.config = config or SupervisorConfig()
        self.policy = policy or RestartPolicy()
        rid = runner_id or self.spec.runner_id or f"runner-{os.urandom(4).hex()}"
        check_spare_fits(self.policy, self.config, self.spec)
        self._rng = rng or random.Random()
        life = restart_lifecycle()
        self._changed = life.changed  # the one wake-up, for state and incarnation news
        self._loop_wake = Notifier()  # the restart loop's own: an incarnation ended, a hand-over
        super().__init__(
            rid,
            group=group,
            life=life,
            roster=Roster(rid, changed=self._changed, wake=self._loop_wake),
            tracker=RestartTracker(self.policy, self._rng),
            launcher=Launcher(
                spec=self.spec,
                config=self.config,
                runner_id=rid,
                changed=self._changed,
                spare_stage=self.policy.spare_stage,
            ),
        )
        self._log = runner_logger(rid)  # lines about the runner, not one incarnation
        self._host = HostStream(event_sender, rid)
        self._observers: list[SupervisorObserver] = list(observers)
        #: every accepted host task until its one terminal status, across incarnations
        self._ledger = Ledger(
            self.runner_id,
            default_recovery=self.policy.task_recovery,
            max_task_attempts=self.policy.max_task_attempts,
            requeue_unacknowledged=self.policy.requeue_unacknowledged,
        )
        #: why an incarnation refused a task outright (its `start_task` raises it)
        self._refused: dict[str, BaseException] = {}
        self._resumes: bool | None = None  # the engine's supports_resume, once asked

    def add_observer(self, observer: SupervisorObserver) -> None:
        self._observers.append(observer)

    async def wait_finished(self) -> None:
        """Wait until no incarnation runs and none will start."""
        await self._changed.wait_until(lambda: self._life.state.ended)

    # --------------------------------------------------------------- commands
    async def start_task(self, task: BaseTask, *, within: float | None = None) -> None:
        """Accept ``task``; return once an incarnation has acknowledged it.

        While the runner is starting, restarting or being replaced the task waits for
        a Ready incarnation, up to ``within`` seconds (default ``policy.ready_wait``),
        then this raises `RunnerUnavailableError` and the task was not accepted (also
        at once if the policy gave up); `SupervisorClosedError` once shut down.
        A task handed to an incarnation that ends before taking it waits for the
        next one. From its first hand-over on the task is the ledger's: it gets
        exactly one terminal status (with `RunnerFailedError` raised here if that
        came before any acknowledgement), whatever incarnations run it.

        A cancellation point: cancelled before any hand-over, the task is withdrawn;
        after one, it stays accepted and still gets its terminal status.
        `cancel_task` reaches the task wherever it waits: it then ends with one
        ``Cancelled`` status and this returns normally.
        """
        if isinstance(task, (LoadModel, Warmup)):
            raise ValueError(
                "RestartingSupervisor drives LoadModel and Warmup itself, for every incarnation"
            )
        validate_task(task, self.config.max_task_bytes)
        if isinstance(task, Generate) and task.resume_from:
            raise ValueError("Generate.resume_from is set by the supervisor when it resumes a task")
        self.check_open()
        tid = task.task_id
        entry = self._ledger.accept(task)
        self._changed.notify()  # the dispatcher hands it over
        wait = self.policy.ready_wait if within is None else within
        deadline = time.monotonic() + wait
        try:
            while not (entry.acked or entry.stage is Stage.DONE or tid in self._refused):
                if entry.stage is Stage.WAITING:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        await self._waited_too_long(entry, wait)
                    with anyio.move_on_after(remaining):
                        await self._changed.wait()
                else:  # with an incarnation: it acknowledges or ends soon
                    await self._changed.wait()
        except BaseException:
            self._ledger.withdraw(tid)  # never handed over: not accepted
            raise
        refused = self._refused.pop(tid, None)
        if refused is not None:
            raise refused
        if entry.acked or entry.status is TaskStatus.Cancelled:
            return
        if self._last_failure is not None and self._life.state is _S.RUNNING:
            raise RunnerFailedError(self._last_failure)
        raise self._closed_error()

    async def _waited_too_long(self, entry: Entry, within: float) -> NoReturn:
        tid = entry.task.task_id
        error = RunnerUnavailableError(
            f"runner {self.runner_id} not ready within {within:g}s "
            f"(phase {self.phase}, restarts {self.restarts})",
            self._last_failure,
        )
        if not self._ledger.withdraw(tid):
            why = f"runner failed; the task was not handed over again ({error})"
            failed = self._ledger.fail_one(tid, why)
            if failed is not None:
                await self._final(failed)
        raise error

    def cancel_task(self, task_id: str) -> Done:
        """Cancel ``task_id`` wherever it is: waiting for a Ready incarnation, handed
        back across a restart, in flight, or draining on a replaced incarnation.
        Never blocks."""
        cancelled = self._ledger.cancel(task_id)
        if cancelled is not None:
            self._final_nowait(cancelled)
            self._changed.notify()
        self._roster.cancel(task_id)
        return DONE

    def shutdown(self) -> Done:
        """Stop for good: no more restarts; the runner (and one being replaced) shuts
        down gracefully. Tasks waiting for an incarnation end ``Failed``."""
        target = _S.CLOSED if self._life.state is _S.CREATED else _S.STOPPING
        if self._life.advance(target):
            for failed in self._ledger.fail_waiting(
                f"runner {self.runner_id} shut down before a runner took the task"
            ):
                self._final_nowait(failed)
            self._roster.shutdown()
            self._launcher.retire_spare()
            self._loop_wake.notify()
            self._tell_group()
        return DONE

    def kill(self) -> Done:
        """Stop for good now: `shutdown`, and SIGKILL every runner process of this id."""
        self.shutdown()
        self._roster.kill()
        return DONE

    def fail(
        self,
        reason: FailureReason,
        message: str,
        *,
        detected_by: Detector,
        diagnostics: Sequence[str] = (),
    ) -> Done:
        """An outside watcher (GPU health) found the current runner broken: fail that
        incarnation now, as if a detector had; the policy decides what follows, as
        after any failure. Nothing happens between incarnations. Never blocks."""
        sup = self.current
        if sup is not None and not sup.finished:
            sup.fail(reason, message, detected_by=detected_by, diagnostics=diagnostics)
        return DONE

    async def replace(self, *, drain_timeout: float | None = None) -> None:
        """Replace the runner with a new incarnation without losing a task (the order:
        `supervisor.restart.replace`; semantics: docs/groups.md). Returns once the old
        incarnation has stopped and a new one is Ready; a call during a replacement
        joins it. `RunnerUnavailableError` if the policy gives up first,
        `SupervisorClosedError` if shut down. Cancelling the caller does not stop it."""
        if self.group is not None:
            await self.group.replace(self, drain_timeout=drain_timeout)
        else:
            await self._replace_alone("replace", drain_timeout)

    # -------------------------------------------------------------------- run
    async def run(self) -> None:
        """Run incarnations until shut down or the policy gives up. Never raises for a failure."""
        # The runner's log file stays open between incarnations: this layer's lines reach it.
        with runner_log_held(self.config, self.runner_id):
            await self._run()

    async def _run(self) -> None:
        if self._life.state is _S.CLOSED:
            self._life.transition(_S.FINISHED)
            return
        if not self._life.advance(_S.RUNNING):
            raise RuntimeError("RestartingSupervisor.run() may only be called once")
        try:
            spare_wanted = self._spare_wanted if self.policy.prespawn else None
            async with self._launcher.open(spare_wanted), anyio.create_task_group() as tg:
                self._roster.tg = tg
                watcher = anyio.CancelScope()
                if self.policy.max_rss is not None:
                    interval = self.config.poll_interval
                    tg.start_soon(self._roster.watch_rss, interval, self._recycle, watcher)
                dispatcher = anyio.CancelScope()
                tg.start_soon(self._dispatch, tg, dispatcher)
                try:
                    await self._incarnations()
                finally:
                    watcher.cancel()
                    dispatcher.cancel()
        finally:
            self._roster.tg = None
            self._restart_at = None
            why = self.gave_up_reason
            error = (
                f"runner {self.runner_id} gave up ({why}) before the task could run again"
                if why is not None or self._life.state is _S.GIVING_UP
                else f"runner {self.runner_id} stopped before a runner took the task"
            )
            for failed in self._ledger.close(error):
                self._final_nowait(failed)
            self._life.transition(_S.GAVE_UP if self._life.state is _S.GIVING_UP else _S.FINISHED)
            self._tell_group()

    async def _incarnations(self) -> None:
        """The restart loop."""
        while self._life.state is _S.RUNNING:
            if self.group is not None:
                await self.group.before_start(self)
                if self._life.state is not _S.RUNNING:
                    return
                if self.group.gave_up is not None:
                    self._life.advance(_S.GIVING_UP)
                    await self._give_up(self.group.gave_up.reason)
                    return
            inc = self._start_incarnation()
            await self._loop_wake.wait_until(functools.partial(self._moves_on, inc))
            repl = self._roster.replacement
            if not inc.settled.is_set() and repl is not None:
                repl.overlapped = True  # the next one starts now; this one drains meanwhile
                await self._announce(inc.number + 1, 0.0, inc.reason)
                continue
            decision = self._decide(inc)
            await self._flush_group()
            if isinstance(decision, GiveUp):
                await self._give_up(decision.reason)
                return
            if self._life.state is not _S.RUNNING:
                return
            if isinstance(decision, Replace):
                await self._announce(inc.number + 1, 0.0, inc.reason)
            elif isinstance(decision, Restart):
                await self._before_restart(inc, decision)
            else:
                return

    async def _dispatch(self, tg: anyio.abc.TaskGroup, scope: anyio.CancelScope) -> None:
        """Hand every waiting task to the current incarnation once it takes tasks:
        new ones, and those an ended incarnation left (`Ledger.ended`)."""
        with scope:
            while True:
                await self._changed.wait_until(self._can_hand_over)
                inc = self._roster.current
                assert inc is not None
                for tid in self._ledger.waiting():
                    if not inc.takes_tasks:
                        break
                    await self.hand_over(inc, tid, tg)

    def _can_hand_over(self) -> bool:
        inc = self._roster.current
        return self._ledger.has_waiting and inc is not None and inc.takes_tasks

    async def hand_over(self, inc: Incarnation, task_id: str, tg: anyio.abc.TaskGroup) -> None:
        """Give waiting task ``task_id`` to incarnation ``inc`` (which takes tasks): the
        one hand-over verb, for new tasks and recovered ones alike. A `TaskRecovered`
        goes out first when ``inc`` is not the task's first incarnation."""
        task, recovered = self._ledger.hand_over(
            task_id, inc.number, can_resume=self._engine_resumes
        )
        if recovered is not None:
            self._log.info(
                "runner {}: task {} {} on incarnation {} from index {}",
                self.runner_id,
                task_id,
                recovered.mode,
                inc.number,
                recovered.from_index,
            )
            await self._host.send(recovered)
        if isinstance(task, Shutdown):
            inc.shutting_down()
        tg.start_soon(self._deliver, inc, task)

    def _engine_resumes(self) -> bool:
        """Whether the engine declares ``supports_resume`` (read once, off its factory,
        without starting it): a task to resume on an engine that cannot is replayed,
        and its `TaskRecovered` says ``replay``."""
        if self._resumes is None:
            self._resumes = engine_supports_resume(self.spec.engine)
        return self._resumes

    async def _deliver(self, inc: Incarnation, task: BaseTask) -> None:
        sup = inc.sup
        assert sup is not None
        tid = task.task_id
        try:
            await sup.start_task(task)
        except (RunnerFailedError, SupervisorClosedError):
            pass  # its incarnation's end decides (`Ledger.ended`)
        except (TypeError, ValueError, pickle.PicklingError) as exc:
            # refused outright (unpicklable, a duplicate id...): the caller hears why
            self._refused[tid] = exc
            failed = self._ledger.refuse(tid, inc.number, f"{type(exc).__name__}: {exc}")
            if failed is not None:
                await self._final(failed)
        self._changed.notify()

    def _moves_on(self, inc: Incarnation) -> bool:
        """The loop goes on: ``inc`` ended, or its successor starts now: its replacement
        (prespawn), or a loaded spare after its failure. A failed runner's memory is
        released after its failure is reported (`wait_released`): a new process that
        needs it waits for the end, a loaded spare holds its own copy already."""
        return (
            inc.settled.is_set()
            or self._roster.hands_over(inc, self.policy.prespawn)
            or (inc.failure is not None and self.group is None and self._launcher.has_loaded_spare)
        )

    def _start_incarnation(self) -> Incarnation:
        tg = self._roster.tg
        assert tg is not None
        inc = self._roster.next()
        counter = RecycleCounter(self.policy, self._rng)
        inc.recycle = counter if counter.active else None
        self._restart_at = None
        self._changed.notify()
        tg.start_soon(self._run_incarnation, inc, name=f"runner {self.runner_id}#{inc.number}")
        return inc

    async def _announce(self, number: int, delay: float, reason: str) -> None:
        await self._host.send(
            RunnerRestarting(self.runner_id, number, delay, self.restarts, reason)
        )

    async def _before_restart(self, inc: Incarnation, decision: Restart) -> None:
        """Announce the next incarnation and wait its backoff (cut short by a shutdown)."""
        number = inc.number + 1
        self._log.info(
            "runner {}: restart {} in {:.3f}s", self.runner_id, decision.attempt, decision.delay
        )
        for obs in self._observers:
            obs.on_restart(self.runner_id, number, decision.delay)
        self._restart_at = time.monotonic() + decision.delay
        await self._announce(number, decision.delay, inc.reason)
        self._changed.notify()
        if decision.delay > 0:
            with anyio.move_on_after(decision.delay):
                await self._changed.wait_until(self._stop_waiting)

    def _stop_waiting(self) -> bool:
        return self._life.state is not _S.RUNNING or (self.group_gave_up is not None)

    async def _give_up(self, reason: str) -> None:
        # In mode "never" the failure itself was the news (logged at ERROR once).
        level = "INFO" if self.policy.mode == "never" else "ERROR"
        self._log.log(level, "runner {}: giving up: {}", self.runner_id, reason)
        for obs in self._observers:
            obs.on_gave_up(self.runner_id, reason)
        last = self._last_failure
        await self._host.send(SupervisorGaveUp(self.runner_id, reason, self.restarts, last))
        if self.group is not None:
            final = self.group.member_gave_up(self)
            if final is not None:
                await self._host.send(final)

    def _decide(self, inc: Incarnation) -> Decision:
        stopping = self._life.state is not _S.RUNNING
        if inc.decision is None and not stopping and self.group is not None:
            inc.decision, inc.restart_reason = self.group.decide(self, inc)
        decision = inc.decide(self._tracker, stopping=stopping)
        if isinstance(decision, GiveUp):
            self._life.advance(_S.GIVING_UP)  # (a second ask finds it there already)
        return decision

    def _spare_wanted(self) -> bool:
        """Once the current incarnation is Ready, a spare stands by for its successor."""
        inc = self._roster.current
        return self._life.state is _S.RUNNING and inc is not None and inc.healthy

    async def _run_incarnation(self, inc: Incarnation) -> None:
        try:
            launched = self._launcher.take(inc.number)
            if isinstance(launched, RunnerFailed):
                self._record_failure(inc, launched)
                await self._host.send(RunnerStatusUpdated(self.runner_id, launched))
                await self._flush_group()
                inc.ended()
                return
            if self._life.state is not _S.RUNNING or inc.stop_cause is not None:
                launched.sup.shutdown()
            await inc.run(
                launched,
                functools.partial(self._on_event, inc),
                functools.partial(self._try_forward, inc),
            )
        finally:
            self._roster.ended(inc)
            await self._settle_tasks(inc)
            self._loop_wake.notify()
            self._changed.notify()
            self._tell_group()

    def _try_forward(self, inc: Incarnation, event: BaseEvent) -> bool:
        """The hot path, one per token: a chunk the host lacks next goes straight on,
        without a coroutine or a wake-up of everyone waiting on `_changed` (which
        `_on_event` gives every other event); the ledger notes it delivered. False: not
        taken (not a chunk, one a replay regenerates, or the host's bounded stream is
        full): `_on_event` does it."""
        if type(event) is not ChunkGenerated or not self._ledger.is_next(inc.number, event):
            return False
        if not self._host.try_send(event):
            return False
        self._ledger.output(inc.number, event)
        return True

    async def _on_event(self, inc: Incarnation, event: BaseEvent) -> None:
        """Update our view from one incarnation event, then pass it on (or hold it back)."""
        out = self._absorb(inc, event)
        if out is not None:
            await self._host.send(out)
        if isinstance(event, RunnerStatusUpdated):
            await self._flush_group()
        self._changed.notify()

    def _absorb(self, inc: Incarnation, event: BaseEvent) -> BaseEvent | None:
        if isinstance(event, RunnerStatusUpdated):
            status = event.status
            if isinstance(status, RunnerReady) and inc.ready_at is None:
                self._tracker.on_ready(inc.became_ready())
                self._tell_group()
            elif isinstance(status, RunnerFailed) and inc.failure is None:
                self._record_failure(inc, status)
            if inc is not self._roster.current and not isinstance(status, RunnerFailed):
                return None  # a replaced incarnation no longer speaks for the runner id
        elif isinstance(event, (ChunkGenerated, EmbeddingGenerated)):
            out = self._ledger.output(inc.number, event)
            if isinstance(out, TaskStatusUpdated):  # a replay diverged: stop it there
                if inc.sup is not None:
                    inc.sup.cancel_task(event.task_id)
                for obs in self._observers:
                    obs.on_task_finished(self.runner_id, out.status)
            return out
        elif isinstance(event, TaskAcknowledged):
            if event.task_id in inc.startup_ids:
                return event
            return event if self._ledger.acked(event.task_id, inc.number) else None
        elif isinstance(event, TaskStatusUpdated):
            if event.task_id in inc.startup_ids:
                if event.status.terminal:
                    stopping = self._life.state is not _S.RUNNING
                    inc.startup_task_ended(event, stopping=stopping)
                return event
            out = self._ledger.status(inc.number, event, ending=inc.ending)
            if out is not None and out.status.terminal:
                for obs in self._observers:
                    obs.on_task_finished(self.runner_id, out.status)
                if inc.recycle is not None and inc.recycle.task_ended():
                    self._recycle(inc)
            return out
        return event

    async def _settle_tasks(self, inc: Incarnation) -> None:
        """``inc`` ended and every event of it went through: the ledger decides what
        becomes of the tasks it held (fail, wait for the next incarnation, quarantine)."""
        self._decide(inc)
        decision = inc.decision
        recover = self._life.state is _S.RUNNING and (
            isinstance(decision, Restart)
            # a replaced incarnation that died draining; not one whose drain timed out
            or (isinstance(decision, Replace) and inc.stop_cause is None)
        )
        failure = inc.failure
        why = "it was stopped" if failure is None else failure.error_message
        for failed in self._ledger.ended(
            inc.number, recover=recover, cause=inc.stop_cause, failure=why
        ):
            await self._final(failed)
        self._changed.notify()

    async def _final(self, event: TaskStatusUpdated) -> None:
        """Send a terminal status the ledger decided (not the runner's own)."""
        for obs in self._observers:
            obs.on_task_finished(self.runner_id, event.status)
        await self._host.send(event)

    def _final_nowait(self, event: TaskStatusUpdated) -> None:
        for obs in self._observers:
            obs.on_task_finished(self.runner_id, event.status)
        self._host.send_nowait(event)

    def _record_failure(self, inc: Incarnation, failure: RunnerFailed) -> None:
        inc.failed(failure)
        self._last_failure = failure
        for obs in self._observers:
            obs.on_failure(self.runner_id, failure, inc.detection_latency(failure))
        self._decide(inc)
        self._loop_wake.notify()  # a loaded spare need not wait for the release

    async def _flush_group(self) -> None:
        """Send the group's news (a `GroupRestarting`) right after the event that caused it."""
        if self.group is not None:
            for event in self.group.take_announcements():
                await self._host.send(event)

    # ---------------------------------------------------- replacing, recycling
    async def _replace_alone(self, reason: str, drain_timeout: float | None) -> None:
        self.check_open()
        repl = self.begin_replace(reason, drain_timeout)
        if repl is None:  # (re)starting: the incarnation on its way is the replacement
            await self.wait_ready(self.policy.ready_wait)
        else:
            await repl.wait()

    def begin_replace(self, reason: str, drain_timeout: float | None) -> Replacement | None:
        """Start replacing the current incarnation (or join the replacement under way)."""
        if self._life.state is not _S.RUNNING:
            return None
        repl = self._roster.begin_replace(
            reason,
            self.policy.drain_timeout if drain_timeout is None else drain_timeout,
            still_open=lambda: self._life.state.takes_tasks and not self.gave_up,
            closed_error=self._closed_error,
        )
        if repl is not None:
            self._tell_group()
        return repl

    def _recycle(self, inc: Incarnation) -> None:
        assert inc.recycle is not None
        self._log.info("runner {}: recycling: {}", self.runner_id, inc.recycle.reason)
        tg = self._roster.tg
        if self.group is None:
            self.begin_replace("recycle", None)
        elif tg is not None:
            tg.start_soon(self.group.recycle, self)

    def _tell_group(self) -> None:
        """This member started, became Ready, changed its replacement, or ended one."""
        if self.group is not None:
            self.group.member_changed()

    # ------------------------------------------- verbs its RestartGroup uses
    def stop_with_group(self, cause: str) -> None:
        """End every live incarnation now (Shutdown, SIGKILL after ``stop_grace``); their
        unfinished host tasks fail with ``cause``."""
        self._roster.stop(cause, self.config.stop_grace)

    def wake(self) -> None:
        """Something this runner waits on changed elsewhere (its group decided)."""
        self._changed.notify()

    # ------------------------------------------------------------- plumbing
    async def wait_ready(self, within: float) -> Incarnation:
        """The Ready incarnation, once there is one (a replacement waits for it)."""
        deadline = time.monotonic() + within
        while True:
            self.check_open()
            inc = self._roster.current
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


__all__ = ["RestartingSupervisor", "RunnerUnavailableError"]
