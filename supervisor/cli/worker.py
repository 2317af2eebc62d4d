"""The CLI's run loop: one supervised worker, fed tasks, until input ends or it stops for good.

The worker is a `RestartingSupervisor` whatever the flags: its policy's ``never``
mode is the plain run (one runner process; its failure ends the run), and it
drives LoadModel and Warmup for every runner process itself, so this loop only
feeds tasks, prints events and picks the exit code. Serving extras ride along:
``--serve`` keeps the worker up until a signal, ``--health-port`` serves
/healthz, /readyz and /metrics, and systemd is notified when ``NOTIFY_SOCKET``
is set.
"""

from __future__ import annotations

import enum
import math
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from loguru import logger

from supervisor.cli.exits import EXIT_BROKEN_PIPE as EXIT_BROKEN_PIPE
from supervisor.cli.exits import EXIT_OK as EXIT_OK
from supervisor.cli.exits import EXIT_RUNNER_FAILED as EXIT_RUNNER_FAILED
from supervisor.cli.exits import EXIT_TASK_FAILED as EXIT_TASK_FAILED
from supervisor.cli.exits import EXIT_USAGE, signal_exit
from supervisor.cli.inputs import InputError
from supervisor.cli.output import Output
from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.runner_supervisor import RunnerSupervisor
from supervisor.core.statemachine import Notifier, StateMachine
from supervisor.errors import (
    DuplicateTaskError,
    RunnerFailedError,
    RunnerUnavailableError,
    SupervisorError,
)
from supervisor.ops.sdnotify import run_sd_notify
from supervisor.protocol import BaseEvent, BaseTask, TaskStatus, TaskStatusUpdated
from supervisor.restart.events import RunnerRestarting, SupervisorGaveUp
from supervisor.restart.policy import RestartPolicy
from supervisor.restart.restarting_supervisor import RestartingSupervisor

if TYPE_CHECKING:  # the health and gpu extras are optional
    from supervisor.gpu.watcher import GpuWatcher
    from supervisor.ops.metrics import SupervisorMetrics
    from supervisor.ops.observe import HealthSource

# Exit codes: one set for every subcommand (supervisor.cli.exits), a bad stdin line
# being bad input like a bad flag.
EXIT_BAD_INPUT = EXIT_USAGE
#: Signals that stop the worker gracefully (exit 128 + the signal). SIGHUP and
#: SIGQUIT too: a closed terminal or Ctrl-\ must not leave tasks without an answer.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

#: What the driver serves: ``(stdin line or None for a prompt, task or bad line)``.
TaskSource = AsyncIterator[tuple[int | None, BaseTask | InputError]]


@dataclass
class TaskTracker:
    """Terminal statuses seen on the event stream, waited on by the driver."""

    terminal: dict[str, TaskStatus] = field(default_factory=dict)
    failed_tasks: list[str] = field(default_factory=list)
    closed: bool = False
    changed: Notifier = field(default_factory=Notifier)

    def note(self, event: BaseEvent) -> None:
        if isinstance(event, TaskStatusUpdated) and event.status.terminal:
            self.terminal[event.task_id] = event.status
            if event.status is not TaskStatus.Complete:
                self.failed_tasks.append(event.task_id)
            self.changed.notify()

    def close(self) -> None:
        self.closed = True
        self.changed.notify()

    async def wait_terminal(self, task_id: str) -> TaskStatus | None:
        """The task's terminal status; None if the event stream ended without one."""
        await self.changed.wait_until(lambda: task_id in self.terminal or self.closed)
        return self.terminal.pop(task_id, None)

    async def wait_closed(self) -> None:
        await self.changed.wait_until(lambda: self.closed)


class RunPhase(enum.Enum):
    FEEDING = "feeding"  # tasks from the input go to the worker
    SERVING = "serving"  # the input ended; --serve keeps the worker up until a signal
    STOPPING = "stopping"  # no more tasks: the worker shuts down, or is gone already


_RUN_PHASES: dict[RunPhase, frozenset[RunPhase]] = {
    RunPhase.FEEDING: frozenset({RunPhase.SERVING, RunPhase.STOPPING}),
    RunPhase.SERVING: frozenset({RunPhase.STOPPING}),
    RunPhase.STOPPING: frozenset(),
}


@dataclass
class WorkerRun:
    """One CLI run: start the worker, serve ``source``, shut down, pick an exit code."""

    spec: RunnerSpec
    config: SupervisorConfig
    source: TaskSource
    output: Output
    policy: RestartPolicy = field(default_factory=lambda: RestartPolicy(mode="never"))
    handle_signals: bool = True
    #: After the input ends, stay up until a signal (or the worker's end).
    keep_serving: bool = False
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    #: Watch the GPUs through NVML (docs/gpu.md); inactive without a GPU or the library.
    watch_gpus: bool = False

    bad_input: int = field(default=0, init=False)
    signal_received: int | None = field(default=None, init=False)
    tracker: TaskTracker = field(default_factory=TaskTracker, init=False)
    phase: StateMachine[RunPhase] = field(
        default_factory=lambda: StateMachine(RunPhase.FEEDING, _RUN_PHASES), init=False
    )
    # Made in run(): the supervisor and anyio objects need the running event loop.
    rsup: RestartingSupervisor = field(init=False)
    _feeding: anyio.CancelScope = field(init=False)
    _announced: RunnerSupervisor | None = field(default=None, init=False)
    _announce_next: bool = field(default=True, init=False)

    async def run(self) -> int:
        self._feeding = anyio.CancelScope()
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        metrics = None
        if self.health_port is not None:
            from supervisor.ops.metrics import SupervisorMetrics

            metrics = SupervisorMetrics()
        self.rsup = RestartingSupervisor(
            spec=self.spec,
            event_sender=send,
            config=self.config,
            policy=self.policy,
            observers=[metrics] if metrics is not None else (),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._supervise, send)
            tg.start_soon(self._consume, recv)
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            tg.start_soon(run_sd_notify, self.rsup)
            gpu = self._gpu_watcher()
            if gpu is not None:
                tg.start_soon(gpu.run)
            if metrics is not None:
                await self._serve_health(tg, metrics, gpu)
            await self._drive()
            self._stop()
            await self.rsup.wait_finished()
            await self.tracker.wait_closed()
            tg.cancel_scope.cancel()  # the signal watcher, health and systemd
        code = self.exit_code()
        current = self.rsup.current
        self.output.finished(code, current.exit_code if current is not None else None)
        return code

    def _gpu_watcher(self) -> GpuWatcher | None:
        if not self.watch_gpus:
            return None
        from supervisor.gpu.nvml import Nvml
        from supervisor.gpu.watcher import GpuWatcher

        nvml = Nvml.open()
        return None if nvml is None else GpuWatcher(nvml, lambda: {self.rsup.runner_id: self.rsup})

    async def _serve_health(
        self, tg: TaskGroup, metrics: SupervisorMetrics, gpu: GpuWatcher | None
    ) -> None:
        from supervisor.gpu.watcher import GpuHealth
        from supervisor.ops.health import serve_health

        source: HealthSource = self.rsup if gpu is None else GpuHealth(self.rsup, gpu)
        metrics.watch_live(source)
        try:
            await tg.start(serve_health, source, self.health_host, self.health_port, metrics)
        except OSError as exc:  # port in use, address not ours: a usage error
            logger.error(
                "cannot serve health endpoints on {}:{}: {}",
                self.health_host,
                self.health_port,
                exc.strerror or exc,
            )
            self.bad_input += 1
            self._stop()

    # ----------------------------------------------------------------- workers
    async def _supervise(self, send: MemoryObjectSendStream[BaseEvent]) -> None:
        async with send:
            await self.rsup.run()
        self._stop()  # gone for good: nothing left to feed (stdin may never end)

    async def _consume(self, recv: MemoryObjectReceiveStream[BaseEvent]) -> None:
        async with recv:
            async for event in recv:
                if isinstance(event, SupervisorGaveUp) and self.policy.mode == "never":
                    continue  # without restarts the RunnerFailed before it says it all
                self._announce_runner(event)
                self.output.event(event)
                self.tracker.note(event)
                if self.output.broken:
                    self._stop("stdout closed")
        self.tracker.close()

    def _announce_runner(self, event: BaseEvent) -> None:
        """A ``RunnerStarted`` record before the events of each runner process.

        Its events start the stream and follow each `RunnerRestarting` (events are
        read later than they happen, so the stream, not the supervisor's current
        state, says where one runner's events end). A runner that could not be
        spawned has none to announce.
        """
        if isinstance(event, RunnerRestarting):
            self._announce_next = True
            return
        current = self.rsup.current
        if self._announce_next and current is not None and current is not self._announced:
            self._announce_next = False
            self._announced = current
            # The runner wrote its own pid before its first event (under a keeper
            # ``pid`` may still be the keeper's when nothing was read yet).
            self.output.started(current.runner_pid or current.pid, self.rsup.runner_id)

    async def _watch_signals(self) -> None:
        async with anyio.create_task_group() as replacements:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP and self.keep_serving and not self.stopping:
                        # A service reloads on SIGHUP (as gunicorn and nginx do): a new
                        # runner takes new tasks, the old one finishes its own first.
                        logger.info("SIGHUP received: replacing the runner, no task lost")
                        replacements.start_soon(self._replace_runner)
                    elif self.signal_received is None:
                        self.signal_received = signum
                        self._stop(f"{name} received: shutting the runner down")
                    else:
                        logger.warning("{} received again: killing the runner", name)
                        self.rsup.kill()  # the draining old one of a replacement too

    @property
    def stopping(self) -> bool:
        return self.phase.state is RunPhase.STOPPING

    async def _replace_runner(self) -> None:
        try:
            await self.rsup.replace()  # a second SIGHUP meanwhile joins this one
        except SupervisorError as exc:  # gave up or shut down meanwhile: said elsewhere
            logger.warning("runner replacement did not complete: {}", exc)

    def _stop(self, why: str | None = None) -> None:
        """No more tasks: stop feeding and shut the worker down. The first caller says why."""
        if self.phase.advance(RunPhase.STOPPING):
            if why is not None:
                logger.warning("{}", why)
            self._feeding.cancel()
            if not self.rsup.gave_up:  # giving up ends the run by itself, announced
                self.rsup.shutdown()

    # ------------------------------------------------------------------ driver
    def _runner_gone(self) -> bool:
        """No runner will serve the next task: stop feeding."""
        return self.rsup.gave_up or self.rsup.finished

    async def _drive(self) -> None:
        with self._feeding:
            async for line, item in self.source:
                if isinstance(item, InputError):
                    self._reject(item.line, item.error)
                    continue
                await self._submit(item, line)
                if self._runner_gone():
                    return
        if self.keep_serving and self.phase.advance(RunPhase.SERVING):
            await self.phase.wait_for(RunPhase.STOPPING)  # a signal or the worker's end

    async def _submit(self, task: BaseTask, line: int | None = None) -> None:
        """Run one task to its end. Bad tasks are rejected; the run goes on."""
        try:
            await self.rsup.start_task(task)  # waits for a Ready runner
        except RunnerUnavailableError as exc:
            self._not_taken(task, exc)
        except RunnerFailedError:
            pass  # the runner failed with the task pending: its Failed is on the stream
        except SupervisorError as exc:  # closed: shut down, or its run ended
            self._not_taken(task, exc)
        except (DuplicateTaskError, TypeError, ValueError) as exc:
            self._reject(line, f"task {task.task_id!r}: {exc}")
        else:
            await self.tracker.wait_terminal(task.task_id)

    def _not_taken(self, task: BaseTask, exc: SupervisorError) -> None:
        """No runner took the task (none Ready within ``policy.ready_wait``): it failed.

        While the run is ending (gave up, shut down) it is simply not run, like the
        input after it; the exit code says why.
        """
        if self._runner_gone() or self.phase.state is RunPhase.STOPPING:
            return
        status = TaskStatusUpdated(task.task_id, TaskStatus.Failed, f"not run: {exc}")
        self.output.event(status)
        self.tracker.note(status)

    def _reject(self, line: int | None, error: str) -> None:
        self.bad_input += 1
        where = f"stdin line {line}: " if line is not None else ""
        # One line on stderr, whatever the log format: scripts grep for it.
        print(f"runner-supervisor: error: {where}{error}", file=sys.stderr, flush=True)
        self.output.rejected(line, error)

    # ----------------------------------------------------------------- verdict
    def _runner_failed(self) -> bool:
        """The run failed if the supervisor gave up. Without restarts any runner failure
        is final, even one while shutting down; with them, a failure the policy
        recovered from is not the run's (its tasks failed: 3)."""
        if self.rsup.gave_up:
            return True
        return self.policy.mode == "never" and self.rsup.failure is not None

    def exit_code(self) -> int:
        """Worst outcome wins: runner failure, signal, closed stdout, bad input, task failure."""
        if self._runner_failed():
            return EXIT_RUNNER_FAILED
        if self.signal_received is not None:
            return signal_exit(self.signal_received)
        if self.output.broken:
            return EXIT_BROKEN_PIPE
        if self.bad_input:
            return EXIT_BAD_INPUT
        if self.tracker.failed_tasks:
            return EXIT_TASK_FAILED
        return EXIT_OK
