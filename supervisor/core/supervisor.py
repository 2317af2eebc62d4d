"""`RunnerSupervisor`: one runner incarnation, watched from an anyio task group."""

from __future__ import annotations

import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import psutil
from anyio.streams.memory import MemoryObjectSendStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE, Done
from supervisor.core.host_stream import HostStream
from supervisor.core.liveness import (
    HeartbeatMonitor,
    ProgressMonitor,
    ResourceMeter,
    ResourceSample,
    is_stopped,
    sample_process,
)
from supervisor.core.process import RunnerProcess, describe_exit, describe_signal
from supervisor.errors import DuplicateTaskError, RunnerFailedError
from supervisor.logs.hook import fatal_message, output_hook
from supervisor.protocol import (
    BUSY_STATUSES,
    DEVICE_UNHEALTHY,
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    CancelTask,
    ChunkGenerated,
    CrashReport,
    Detector,
    FailureReason,
    Generate,
    Probe,
    RunnerFailed,
    RunnerIdle,
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
    TaskUndecodable,
)

#: How many finished task ids are remembered to refuse duplicates (bounded).
RECENT_TASK_IDS = 4096


async def _sleep_on_grid(interval: float) -> None:
    """Sleep until the next multiple of ``interval`` on the monotonic clock.

    Every supervisor in the loop then checks at the same instants, so a node of
    64 runners wakes its event loop a few times a second instead of 64 times as
    often: the periodic checks share one wake-up.
    """
    await anyio.sleep(interval - time.monotonic() % interval)


class _Waiter:
    __slots__ = ("acked", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.acked = False


@dataclass(frozen=True, slots=True)
class _EndCause:
    """Why the watch ended. ``reason`` is None when the process exited by itself."""

    detected_by: Detector
    reason: FailureReason | None = None
    message: str = ""
    frozen: bool = False
    evidence: tuple[str, ...] = ()  # lines put first in the diagnostics


class RunnerSupervisor:
    """Spawns one runner, forwards its events, and reports its failure exactly once."""

    def __init__(
        self,
        *,
        spec: RunnerSpec,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig,
        runner_id: str,
        proc: RunnerProcess,
        incarnation: int = 1,
    ) -> None:
        self.spec = spec
        self.config = config
        self.runner_id = runner_id
        self.incarnation = incarnation
        self._proc = proc
        # Lines bound to a runner reach its log file (and are fields of JSON logs).
        self._log = logger.bind(runner_id=runner_id, incarnation=incarnation, pid=proc.pid)
        self._output_hook = output_hook(
            config, runner_id, incarnation=incarnation, pid=proc.pid, on_fatal=self._fatal_line
        )
        if self._output_hook is not None:
            proc.output.on_line = self._output_hook.on_line
        self._host = HostStream(event_sender, runner_id)
        self._status: BaseRunnerStatus = RunnerIdle()
        self._waiters: dict[str, _Waiter] = {}
        self._pending: dict[str, BaseTask] = {}
        self._in_progress: dict[str, BaseTask] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._failure: RunnerFailed | None = None
        self._crash: CrashReport | None = None
        self._end_cause: _EndCause | None = None
        self._scope: anyio.CancelScope | None = None
        self._run_called = False
        self._finished = False
        self._finished_event: anyio.Event | None = None
        self._shutdown_requested = False
        self._shutdown_event: anyio.Event | None = None
        self._we_killed_it = False
        self._current_generate: str | None = None
        self._busy_event: anyio.Event | None = None
        self._probes: dict[str, anyio.Event] = {}
        self._probe_errors: dict[str, str | None] = {}
        self._last_activity = time.monotonic()
        self.probes_sent = 0
        self.probe_failures = 0
        self._first_chunk_seen = False
        self._progress = ProgressMonitor(time.monotonic())
        self.resources: ResourceSample | None = None
        self.started_at = time.monotonic()
        self.failed_at: float | None = None
        self.exit_code: int | None = None
        self._hb_seen: tuple[float, float] = (0.0, time.monotonic())
        self._meter = ResourceMeter(proc.reader)

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        *,
        spec: RunnerSpec | None = None,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig | None = None,
        runner_id: str | None = None,
        incarnation: int = 1,
    ) -> RunnerSupervisor:
        """Spawn the runner process now; call `run` to watch it.

        ``incarnation`` numbers this runner id's processes (a restarting supervisor
        counts them); it stamps the runner's log lines."""
        spec = spec or RunnerSpec()
        config = config or SupervisorConfig()
        rid = runner_id or spec.runner_id or f"runner-{uuid.uuid4().hex[:8]}"
        proc = RunnerProcess.spawn(spec, config, rid)
        sup = cls(
            spec=spec,
            event_sender=event_sender,
            config=config,
            runner_id=rid,
            proc=proc,
            incarnation=incarnation,
        )
        sup._log.info("spawned runner {} (pid {}, engine {})", rid, proc.pid, spec.engine)
        return sup

    # ---------------------------------------------------------------- read-only
    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def status(self) -> BaseRunnerStatus:
        return self._status

    @property
    def failure(self) -> RunnerFailed | None:
        return self._failure

    @property
    def pending(self) -> Mapping[str, BaseTask]:
        """Tasks sent to the runner and not yet acknowledged."""
        return dict(self._pending)

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        """Acknowledged tasks without a terminal status yet."""
        return dict(self._in_progress)

    @property
    def finished(self) -> bool:
        """True once the runner is gone and its end was reported."""
        return self._finished

    async def wait_finished(self) -> None:
        """Wait until `run` has reported the runner's end (shutdown or failure)."""
        while not self._finished:
            if self._finished_event is None:
                self._finished_event = anyio.Event()
            await self._finished_event.wait()

    def _mark_finished(self) -> None:
        self._finished = True
        if self._finished_event is not None:
            self._finished_event.set()

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the runner's heartbeat last changed (None before the first)."""
        value = self._proc.shared.heartbeat
        now = time.monotonic()
        if value != self._hb_seen[0]:
            self._hb_seen = (value, now)
        if value == 0:
            return None
        return now - self._hb_seen[1]

    # ------------------------------------------------------------------ commands
    async def start_task(self, task: BaseTask) -> None:
        """Send ``task``; return once the runner acknowledged it.

        Raises `RunnerFailedError` if the runner fails first or already failed,
        `DuplicateTaskError` for a task id already in use, and `TypeError` or
        `ValueError` for a malformed task (the supervisor keeps running).
        """
        self._validate(task)
        if self._failure is not None:
            raise RunnerFailedError(self._failure)
        if self._finished or (self._shutdown_requested and not isinstance(task, Shutdown)):
            raise RunnerFailedError(
                RunnerFailed(
                    reason="exited",
                    error_message="runner is shut down or shutting down; no new tasks",
                    exit_code=self.exit_code,
                )
            )
        tid = task.task_id
        if tid in self._pending or tid in self._in_progress or tid in self._recent:
            raise DuplicateTaskError(f"task id {tid!r} is already in use")
        if isinstance(task, Shutdown):
            self._request_shutdown()
        waiter = _Waiter()
        self._proc.tasks.put(task)  # pickles first: an unpicklable task raises here
        self._pending[tid] = task
        self._waiters[tid] = waiter
        await waiter.event.wait()
        if waiter.acked:
            return
        raise RunnerFailedError(
            self._failure
            or RunnerFailed(
                reason="exited",
                error_message="runner stopped before acknowledging the task",
                exit_code=self.exit_code,
            )
        )

    def cancel_task(self, task_id: str) -> Done:
        """Ask the runner to stop ``task_id`` at its next step. Never blocks."""
        if task_id in self._pending or task_id in self._in_progress:
            self._proc.tasks.put(CancelTask(task_id=task_id))
        return DONE

    def shutdown(self) -> Done:
        """Graceful stop: a Shutdown task, SIGTERM after ``shutdown_grace``, then SIGKILL."""
        if not self._shutdown_requested and not self._finished:
            self._request_shutdown()
            self._proc.tasks.put(Shutdown(task_id=f"shutdown-{uuid.uuid4().hex[:8]}"))
        return DONE

    def kill(self) -> Done:
        """Stop the runner now with SIGKILL (reported as a stop, not a failure)."""
        if not self._finished:
            self._shutdown_requested = True
            self._we_killed_it = True
            self._proc.kill_group()
        return DONE

    def _request_shutdown(self) -> None:
        self._shutdown_requested = True
        if self._shutdown_event is not None:
            self._shutdown_event.set()

    def _validate(self, task: BaseTask) -> None:
        if not isinstance(task, BaseTask):
            raise TypeError(f"start_task expects a task, got {type(task).__name__}")
        if not isinstance(task.task_id, str) or not task.task_id:
            raise ValueError("task_id must be a non-empty string")
        if isinstance(task, Generate):
            if not isinstance(task.prompt, str):
                raise TypeError("Generate.prompt must be a str")
            if not isinstance(task.max_tokens, int) or task.max_tokens < 0:
                raise ValueError("Generate.max_tokens must be an int >= 0")
            if len(task.prompt) > self.config.max_task_bytes:
                raise ValueError(
                    f"prompt of {len(task.prompt)} chars exceeds "
                    f"max_task_bytes={self.config.max_task_bytes}"
                )

    # ----------------------------------------------------------------------- run
    async def run(self) -> None:
        """Watch the runner until it shuts down or fails. Never raises for a failure."""
        if self._run_called:
            raise RuntimeError("RunnerSupervisor.run() may only be called once")
        self._run_called = True
        self._shutdown_event = anyio.Event()
        if self._shutdown_requested:
            self._shutdown_event.set()
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                for watcher in self._watchers():
                    tg.start_soon(self._guard, watcher)
            await self._finish()
        finally:
            if not self._finished:
                with anyio.CancelScope(shield=True):
                    await self._abandon()

    def _watchers(self) -> list[Callable[[], Awaitable[None]]]:
        return [
            self._forward_events,
            self._watch_sentinel,
            self._poll_alive,
            self._watch_heartbeat,
            self._watch_progress,
            self._proc.tasks.flush_forever,
            self._proc.output.pump,
            self._escalate_shutdown,
            self._watch_probe,
        ]

    def _end(self, cause: _EndCause) -> None:
        """First detector wins; the rest are cancelled. Synchronous: no race."""
        if self._end_cause is None:
            self._end_cause = cause
            if self._scope is not None:
                self._scope.cancel()

    def _fatal_line(self, name: str, line: str) -> None:
        """A fatal pattern matched a runner output line: end the runner now."""
        self._end(
            _EndCause(
                detected_by="log",
                reason="fatal_log",
                message=fatal_message(name, line),
                evidence=(line,),
            )
        )

    async def _guard(self, watcher: Callable[[], Awaitable[None]]) -> None:
        try:
            await watcher()
        except Exception as exc:  # noqa: BLE001 - a supervisor bug must not take down the host
            self._log.opt(exception=exc).error("supervisor {} internal error", self.runner_id)
            self._end(
                _EndCause(
                    detected_by="channel",
                    reason="crashed",
                    message=f"supervisor internal error: {type(exc).__name__}: {exc}",
                )
            )

    # ------------------------------------------------------------- detectors
    async def _forward_events(self) -> None:
        reader = self._proc.events
        try_send = self._host.try_send
        while True:
            messages = await reader.receive()
            for msg in messages:
                # The hot path, one per token: no bookkeeping to do, no coroutine frames.
                if (
                    type(msg) is ChunkGenerated
                    and self._first_chunk_seen
                    and self._failure is None
                    and not self._probes
                    and try_send(msg)
                ):
                    continue
                await self._handle(msg)
            if reader.eof:
                self._end(_EndCause(detected_by="channel"))
                return

    async def _watch_sentinel(self) -> None:
        await anyio.wait_readable(self._proc.sentinel)
        self._end(_EndCause(detected_by="sentinel"))

    async def _poll_alive(self) -> None:
        limit = self.config.memory_limit
        while True:
            await _sleep_on_grid(self.config.poll_interval)
            if not self._proc.is_alive():
                self._end(_EndCause(detected_by="poll"))
                return
            sample = self._meter.sample()
            if sample is not None:
                self.resources = sample
                if limit is not None and sample.rss > limit:
                    self._end(
                        _EndCause(
                            detected_by="poll",
                            reason="memory_limit",
                            message=(
                                f"RSS {sample.rss / 2**20:.0f} MiB exceeds "
                                f"memory_limit {limit / 2**20:.0f} MiB"
                            ),
                        )
                    )
                    return

    async def _watch_heartbeat(self) -> None:
        cfg = self.config
        shared = self._proc.shared
        monitor = HeartbeatMonitor(
            stale_checks=cfg.heartbeat_stale_checks,
            check_interval=cfg.heartbeat_check_interval,
            busy_grace=cfg.busy_grace,
            start_timeout=cfg.start_timeout,
            started_at=self.started_at,
        )
        busy_logged = False
        ps = self._proc.reader
        while True:
            await _sleep_on_grid(cfg.heartbeat_check_interval)
            now = time.monotonic()
            verdict = monitor.check(shared.heartbeat, now, lambda: sample_process(ps))
            sample = monitor.last_sample
            if verdict.verdict == "ok":
                busy_logged = False
            elif verdict.verdict == "busy" and not busy_logged:
                busy_logged = True
                self._log.warning("runner {}: {}", self.runner_id, verdict.message)
            elif verdict.verdict == "dead":
                self._end(_EndCause(detected_by="heartbeat"))
                return
            elif verdict.verdict == "frozen":
                self._end(
                    _EndCause(
                        detected_by="heartbeat",
                        reason="unresponsive",
                        message=verdict.message,
                        frozen=sample is not None and is_stopped(sample),
                    )
                )
                return

    def _phase_deadline(self) -> tuple[str, float] | None:
        cfg = self.config
        status = self._status
        if isinstance(status, RunnerLoading):
            return "load", cfg.load_timeout
        if isinstance(status, RunnerWarmingUp):
            return "warmup", cfg.warmup_timeout
        if isinstance(status, RunnerRunning):
            if self._current_generate is not None and self._first_chunk_seen:
                return "decode", cfg.decode_timeout
            return "prefill", cfg.prefill_timeout
        return None

    async def _watch_progress(self) -> None:
        shared = self._proc.shared
        while True:
            if self._phase_deadline() is None:
                # Idle runners cost nothing here: wait for work instead of polling.
                self._busy_event = anyio.Event()
                await self._busy_event.wait()
                self._progress.reset(time.monotonic())
                continue
            phase = self._phase_deadline()
            if phase is None:
                continue
            now = time.monotonic()
            stalled_for, left = self._progress.check(
                shared.last_tick, now, phase[1], shared.extend_until
            )
            if stalled_for is None:
                # Wake at the deadline (plus a hair), or sooner to notice a phase change.
                await anyio.sleep(min(left + 0.002, self.config.progress_check_interval))
                continue
            self._end(
                _EndCause(
                    detected_by="progress",
                    reason="stalled",
                    message=(
                        f"main loop made no progress for {stalled_for:.1f}s in phase "
                        f"{phase[0]} (deadline {phase[1]:g}s)"
                    ),
                )
            )
            return

    def _idle(self) -> bool:
        return (
            isinstance(self._status, RunnerReady)
            and not self._pending
            and not self._in_progress
            and not self._shutdown_requested
        )

    async def _watch_probe(self) -> None:
        """Deep health canary: when idle for ``probe_interval``, ask the engine to
        replay a known-good step. ``probe_failures`` misses in a row (no answer within
        ``probe_timeout`` each, or a failed answer) fail the runner; a device the
        engine reports broken fails it at once."""
        cfg = self.config
        if cfg.probe_interval <= 0:
            return
        misses = 0
        while True:
            await anyio.sleep(min(cfg.probe_interval, 0.25))
            now = time.monotonic()
            if not self._idle() or now - self._last_activity < cfg.probe_interval:
                continue
            self.probes_sent += 1
            probe_id = f"__probe-{self.probes_sent}"
            answered = anyio.Event()
            self._probes[probe_id] = answered
            self._proc.tasks.put(Probe(task_id=probe_id))
            error: str | None = None
            while True:
                with anyio.move_on_after(cfg.probe_timeout):
                    await answered.wait()
                if answered.is_set():
                    error = self._probe_errors.pop(probe_id, None)
                    break
                misses += 1  # each probe_timeout without an answer is one miss
                self.probe_failures += 1
                self._log.warning(
                    "runner {}: probe unanswered for {:g}s ({}/{})",
                    self.runner_id,
                    cfg.probe_timeout * misses,
                    misses,
                    cfg.probe_failures,
                )
                if misses >= cfg.probe_failures:
                    self._fail_probe(
                        f"probe unanswered for {cfg.probe_timeout * misses:g}s "
                        f"({misses} consecutive misses)"
                    )
                    return
            self._probes.pop(probe_id, None)
            self._last_activity = time.monotonic()
            if error is None:
                misses = 0
                continue
            self.probe_failures += 1
            if error.startswith(DEVICE_UNHEALTHY):
                self._fail_probe(error)
                return
            misses += 1
            self._log.warning(
                "runner {}: {} ({}/{})", self.runner_id, error, misses, cfg.probe_failures
            )
            if misses >= cfg.probe_failures:
                self._fail_probe(f"{misses} consecutive probe failures; last: {error}")
                return

    def _fail_probe(self, message: str) -> None:
        self._end(_EndCause(detected_by="probe", reason="probe_failed", message=message))

    def _on_probe_event(self, msg: BaseEvent) -> None:
        if isinstance(msg, TaskStatusUpdated) and msg.status.terminal:
            if msg.status is not TaskStatus.Complete:
                self._probe_errors[msg.task_id] = msg.error or str(msg.status)
            event = self._probes.get(msg.task_id)
            if event is not None:
                event.set()

    async def _escalate_shutdown(self) -> None:
        assert self._shutdown_event is not None
        await self._shutdown_event.wait()
        await anyio.sleep(self.config.shutdown_grace)
        self._log.warning(
            "runner {} did not shut down within {:g}s; sending SIGTERM",
            self.runner_id,
            self.config.shutdown_grace,
        )
        self._we_killed_it = True
        self._proc.signal_group(signal.SIGTERM)
        await anyio.sleep(self.config.stop_grace)
        self._log.warning("runner {} ignored SIGTERM; sending SIGKILL", self.runner_id)
        self._proc.kill_group()

    # ------------------------------------------------------------ event intake
    async def _handle(self, msg: object) -> None:
        if self._failure is not None:
            return  # a failed runner's late words are not news
        if self._probes and isinstance(msg, BaseEvent):
            task_id = getattr(msg, "task_id", None)
            if task_id in self._probes:
                self._on_probe_event(msg)
                return  # probes are the supervisor's own business
        if type(msg) is ChunkGenerated:  # the hot path: one per token
            if not self._first_chunk_seen and msg.task_id == self._current_generate:
                self._first_chunk_seen = True
                self._progress.reset(time.monotonic())
            await self._forward(msg)
            return
        if isinstance(msg, (TaskStatusUpdated, TaskAcknowledged)):
            self._last_activity = time.monotonic()
        if isinstance(msg, RunnerStatusUpdated):
            self._status = msg.status
            self._progress.reset(time.monotonic())
            if self._busy_event is not None and isinstance(msg.status, BUSY_STATUSES):
                self._busy_event.set()
            if not isinstance(msg.status, RunnerRunning):
                self._current_generate = None
        elif isinstance(msg, TaskAcknowledged):
            task = self._pending.pop(msg.task_id, None)
            if task is not None:
                self._in_progress[msg.task_id] = task
            waiter = self._waiters.pop(msg.task_id, None)
            if waiter is not None:
                waiter.acked = True
                waiter.event.set()
        elif isinstance(msg, TaskStatusUpdated):
            if msg.status is TaskStatus.Running:
                task = self._in_progress.get(msg.task_id)
                if isinstance(task, Generate):
                    self._current_generate = msg.task_id
                    self._first_chunk_seen = False
                    self._progress.reset(time.monotonic())
            else:
                self._retire(msg.task_id)
                if msg.task_id == self._current_generate:
                    self._current_generate = None
        elif isinstance(msg, ChunkGenerated):
            if msg.task_id == self._current_generate and not self._first_chunk_seen:
                self._first_chunk_seen = True
                self._progress.reset(time.monotonic())
        elif isinstance(msg, CrashReport):
            self._crash = msg
            return
        elif isinstance(msg, TaskUndecodable):
            await self._reject_oldest_pending(msg.error)
            return
        elif not isinstance(msg, BaseEvent):
            self._log.warning("runner {} sent an unknown message {!r}", self.runner_id, msg)
            return
        await self._forward(msg)

    async def _reject_oldest_pending(self, error: str) -> None:
        task_id = next(iter(self._pending), None)
        if task_id is None:
            self._log.warning("runner {}: undecodable message: {}", self.runner_id, error)
            return
        await self._handle(TaskAcknowledged(task_id))
        await self._handle(
            TaskStatusUpdated(task_id, TaskStatus.Failed, f"runner cannot decode task: {error}")
        )

    def _retire(self, task_id: str) -> None:
        self._in_progress.pop(task_id, None)
        self._pending.pop(task_id, None)
        self._recent[task_id] = None
        if len(self._recent) > RECENT_TASK_IDS:
            self._recent.popitem(last=False)

    async def _forward(self, event: BaseEvent) -> None:
        await self._host.send(event)

    # ------------------------------------------------------------------ ending
    async def _drain_events(self) -> None:
        for msg in self._proc.events.read_available():
            await self._handle(msg)

    async def _finish(self) -> None:
        """The one path that ends an incarnation: report once, then clean up."""
        cause = self._end_cause or _EndCause(detected_by="channel")
        proc = self._proc
        # Events the runner wrote before it died come first (chunks in order).
        await self._drain_events()
        if cause.reason is not None and proc.exitcode is None:
            await self._fail_live_runner(cause)
        else:
            await self._end_exited_runner(cause)
        proc.close()
        self._close_output_hook()
        self._mark_finished()

    def _close_output_hook(self) -> None:
        if self._output_hook is not None:
            self._output_hook.close()

    async def _fail_live_runner(self, cause: _EndCause) -> None:
        """Heartbeat, progress, memory or internal failure: the process still exists."""
        assert cause.reason is not None
        proc = self._proc
        extra: list[str] = []
        if self.config.dump_stacks and not cause.frozen and cause.reason != "memory_limit":
            # faulthandler in the runner prints every thread's stack on SIGUSR1.
            proc.signal_group(signal.SIGUSR1)
            # faulthandler writes from the signal handler at once; 0.15 s is slack.
            await proc.output.drain(0.15)
            extra.append(f"stack dump requested (SIGUSR1) after: {cause.message}")
        await self._report_failure(
            RunnerFailed(
                reason=cause.reason,
                error_message=cause.message,
                detected_by=cause.detected_by,
                diagnostics=proc.output.evidence(self.config.diagnostics_lines, cause.evidence),
            )
        )
        self.exit_code = await proc.terminate(self.config.stop_grace, frozen=cause.frozen)
        await proc.output.drain(0.1)

    async def _end_exited_runner(self, cause: _EndCause) -> None:
        proc = self._proc
        code = await proc.wait_exit(1.0)
        if code is None:
            # EOF on the event channel but still running: it closed its end or is
            # tearing down; it is useless to us either way.
            code = await proc.terminate(self.config.stop_grace)
            self._we_killed_it = self._we_killed_it or self._shutdown_requested
        proc.kill_group()  # grandchildren in the runner's group die with it
        await proc.output.drain(0.1)
        await self._drain_events()
        self.exit_code = code
        shut_down = isinstance(self._status, (RunnerShuttingDown, RunnerShutdown))
        if (code == 0 and shut_down) or (self._we_killed_it and self._shutdown_requested):
            await self._report_stop(code)
            return
        await self._report_failure(self._describe_exit(code, cause.detected_by))

    def _describe_exit(self, code: int | None, detected_by: Detector) -> RunnerFailed:
        proc = self._proc
        extra: list[str] = []
        signum: int | None = None
        reason: FailureReason
        if code is None:
            reason, message = "exited", "runner could not be reaped"
        elif self._crash is not None:
            reason = "crashed"
            message = f"{describe_exit(code)}: {self._crash.error}"
            extra.extend(self._crash.traceback.rstrip().splitlines())
        elif code < 0:
            signum = -code
            reason, message = "signalled", describe_exit(code)
            if signum == signal.SIGKILL:
                extra.append(self._sigkill_hint())
        elif code == 0:
            reason = "exited"
            message = "exitcode=0 without a Shutdown"
        else:
            reason, message = "exited", describe_exit(code)
        return RunnerFailed(
            reason=reason,
            error_message=message,
            exit_code=code if code is not None and code >= 0 else None,
            signal=signum,
            detected_by=detected_by,
            diagnostics=proc.output.evidence(self.config.diagnostics_lines, extra),
        )

    def _sigkill_hint(self) -> str:
        """SIGKILL that we did not send is most often the kernel's OOM killer."""
        if self.resources is None:
            return "SIGKILL from outside: an OOM kill or an operator (no RSS sample yet)"
        rss = self.resources.rss
        limit = self.config.memory_limit
        high = rss > (limit * 0.8 if limit else psutil.virtual_memory().total * 0.5)
        verdict = "likely OOM-killed" if high else "SIGKILL from outside (OOM killer or operator)"
        return f"{verdict}; last RSS {rss / 2**20:.0f} MiB"

    async def _report_failure(self, failure: RunnerFailed) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        self.failed_at = time.monotonic()
        self._status = failure
        self._log.error(
            "runner {} failed ({}, by {}): {}",
            self.runner_id,
            failure.reason,
            failure.detected_by,
            failure.error_message,
        )
        await self._terminate_tasks(
            RunnerStatusUpdated(self.runner_id, failure),
            f"runner failed: {failure.error_message}",
        )

    async def _report_stop(self, code: int | None) -> None:
        note = "" if code == 0 else f" ({describe_exit(code) if code is not None else 'unreaped'})"
        self._log.info("runner {} shut down{}", self.runner_id, note)
        status_event = None
        if not isinstance(self._status, RunnerShutdown):
            self._status = RunnerShutdown()
            status_event = RunnerStatusUpdated(self.runner_id, self._status)
        await self._terminate_tasks(status_event, "runner shut down before the task finished")

    async def _terminate_tasks(self, status_event: RunnerStatusUpdated | None, error: str) -> None:
        """Emit the runner's final status, then one Failed for every open task."""
        open_ids = [*self._in_progress, *self._pending]
        self._pending.clear()
        self._in_progress.clear()
        waiters = list(self._waiters.values())
        self._waiters.clear()
        try:
            if status_event is not None:
                await self._forward(status_event)
            for task_id in open_ids:
                self._recent[task_id] = None
                await self._forward(TaskStatusUpdated(task_id, TaskStatus.Failed, error))
        finally:
            for waiter in waiters:
                waiter.event.set()

    async def _abandon(self) -> None:
        """The host cancelled `run` (or it broke): kill the runner, release everyone."""
        proc = self._proc
        if proc.exitcode is None:
            self._we_killed_it = True
        proc.kill_group()
        code = await proc.wait_exit(2.0)
        self.exit_code = code
        if self._failure is None and not isinstance(self._status, RunnerShutdown):
            failure = RunnerFailed(
                reason="signalled" if code is not None and code < 0 else "exited",
                error_message="supervisor stopped; runner killed"
                + (f" ({describe_signal(-code)})" if code is not None and code < 0 else ""),
                exit_code=code if code is not None and code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                detected_by="channel",
            )
            self._failure = failure
            self._status = failure
            with anyio.move_on_after(0.5):  # the host is leaving: never wait long on it
                await self._terminate_tasks(
                    RunnerStatusUpdated(self.runner_id, failure), "supervisor stopped"
                )
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()
        proc.close()
        self._close_output_hook()
        self._mark_finished()
