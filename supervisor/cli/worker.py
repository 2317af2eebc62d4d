"""The CLI's run loop: one supervised worker, fed tasks, until input ends or it fails.

Kept apart from argument parsing so that other front ends (a health endpoint,
restart policies, systemd notification) can wrap or extend `WorkerRun` without
touching the parser.
"""

from __future__ import annotations

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

from supervisor.cli.inputs import InputError
from supervisor.cli.output import Output
from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.supervisor import RunnerSupervisor
from supervisor.errors import DuplicateTaskError, RunnerFailedError
from supervisor.protocol import (
    BaseEvent,
    BaseTask,
    LoadModel,
    RunnerFailed,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
    Warmup,
)

if TYPE_CHECKING:
    from supervisor.restart.supervisor import RestartingSupervisor

# Exit codes (documented in the CLI's --help epilog and docs/cli.md).
EXIT_OK = 0
EXIT_RUNNER_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TASK_FAILED = 3
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

#: What the driver serves: ``(stdin line or None for a prompt, task or bad line)``.
TaskSource = AsyncIterator[tuple[int | None, BaseTask | InputError]]


@dataclass
class TaskTracker:
    """Terminal statuses seen on the event stream, waited on by the driver."""

    terminal: dict[str, TaskStatus] = field(default_factory=dict)
    failed_tasks: list[str] = field(default_factory=list)
    failure: RunnerFailed | None = None
    closed: bool = False
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def note(self, event: BaseEvent) -> None:
        if isinstance(event, TaskStatusUpdated) and event.status.terminal:
            self.terminal[event.task_id] = event.status
            if event.status is not TaskStatus.Complete:
                self.failed_tasks.append(event.task_id)
        elif isinstance(event, RunnerStatusUpdated) and isinstance(event.status, RunnerFailed):
            self.failure = event.status
        else:
            return
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_terminal(self, task_id: str) -> TaskStatus | None:
        """The task's terminal status; None if the event stream ended without one."""
        while task_id not in self.terminal:
            if self.closed:
                return None
            await self._changed.wait()
        return self.terminal.pop(task_id)

    async def wait_closed(self) -> None:
        while not self.closed:
            await self._changed.wait()


@dataclass
class WorkerRun:
    """One CLI run: spawn, load, warm up, serve ``source``, shut down, pick an exit code."""

    spec: RunnerSpec
    config: SupervisorConfig
    source: TaskSource
    output: Output
    handle_signals: bool = True
    #: After the input ends, stay up until a signal (or the runner's end).
    keep_serving: bool = False

    sup: RunnerSupervisor | None = field(default=None, init=False)
    bad_input: int = field(default=0, init=False)
    signal_received: int | None = field(default=None, init=False)
    # anyio objects need a running event loop: made in run().
    tracker: TaskTracker = field(init=False)
    _driver: anyio.CancelScope = field(init=False)

    async def run(self) -> int:
        self.tracker = TaskTracker()
        self._driver = anyio.CancelScope()
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        try:
            sup = RunnerSupervisor.create(spec=self.spec, event_sender=send, config=self.config)
        except Exception as exc:  # noqa: BLE001 - could not even start: say why, exit 1
            logger.error("could not start the runner: {}: {}", type(exc).__name__, exc)
            send.close()
            recv.close()
            self.output.finished(EXIT_RUNNER_FAILED, None)
            return EXIT_RUNNER_FAILED
        self.sup = sup
        self.output.started(await sup.wait_runner_pid(), sup.runner_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._supervise, sup, send)
            tg.start_soon(self._consume, recv)
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            await self.serve(tg)
            sup.shutdown()
            await sup.wait_finished()
            await self.tracker.wait_closed()
            tg.cancel_scope.cancel()  # the signal watcher
        code = self.exit_code()
        self.output.finished(code, sup.exit_code)
        return code

    async def serve(self, tg: TaskGroup) -> None:
        """Drive the runner until the input ends, a signal arrives or the runner is gone.

        A hook for front ends that need more concurrent jobs: ``tg`` is the run's
        task group (cancelled once the runner has finished and output is drained).
        """
        with self._driver:
            await self._drive()

    # ----------------------------------------------------------------- workers
    async def _supervise(
        self, sup: RunnerSupervisor | RestartingSupervisor, send: MemoryObjectSendStream[BaseEvent]
    ) -> None:
        async with send:
            await sup.run()
        # The runner is gone: there is nothing left to feed (stdin may never end).
        self._driver.cancel()

    def _before_event(self, event: BaseEvent) -> None:
        """Hook: called for each event before it is printed."""

    def _shutdown_runner(self) -> None:
        if self.sup is not None:
            self.sup.shutdown()

    def _kill_runner(self) -> None:
        if self.sup is not None:
            self.sup.kill()

    async def _consume(self, recv: MemoryObjectReceiveStream[BaseEvent]) -> None:
        async with recv:
            async for event in recv:
                self._before_event(event)
                self.output.event(event)
                self.tracker.note(event)
                if self.output.broken:
                    self._stop("stdout closed")
        self.tracker.close()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.signal_received is None:
                    self.signal_received = signum
                    self._stop(f"{name} received: shutting the runner down")
                else:
                    logger.warning("{} received again: killing the runner", name)
                    self._kill_runner()

    def _stop(self, why: str) -> None:
        if not self._driver.cancel_called:
            logger.warning("{}", why)
            self._driver.cancel()
            self._shutdown_runner()

    # ------------------------------------------------------------------ driver
    def _startup_tasks(self) -> tuple[BaseTask, ...]:
        """Driven before the input: this run loads and warms up its one runner."""
        return (LoadModel(task_id="load"), Warmup(task_id="warmup"))

    async def _start_task(self, task: BaseTask) -> None:
        assert self.sup is not None
        await self.sup.start_task(task)

    def _runner_gone(self) -> bool:
        """No runner will serve the next task: stop feeding."""
        return self.tracker.failure is not None or (self.sup is not None and self.sup.finished)

    async def _drive(self) -> None:
        for task in self._startup_tasks():
            status = await self._submit(task)
            if status is not TaskStatus.Complete:
                return
        async for line, item in self.source:
            if isinstance(item, InputError):
                self._reject(item.line, item.error)
                continue
            await self._submit(item, line)
            if self._runner_gone():
                return
        if self.keep_serving:
            await anyio.sleep_forever()  # cancelled by a signal or the runner's end

    async def _submit(self, task: BaseTask, line: int | None = None) -> TaskStatus | None:
        """Run one task to its end. Bad tasks are rejected; the run goes on."""
        try:
            await self._start_task(task)
        except RunnerFailedError:
            return None  # reported on the event stream; the exit code says so
        except (DuplicateTaskError, TypeError, ValueError) as exc:
            self._reject(line, f"task {task.task_id!r}: {exc}")
            return None
        return await self.tracker.wait_terminal(task.task_id)

    def _reject(self, line: int | None, error: str) -> None:
        self.bad_input += 1
        where = f"stdin line {line}: " if line is not None else ""
        # One line on stderr, whatever the log format: scripts grep for it.
        print(f"runner-supervisor: error: {where}{error}", file=sys.stderr, flush=True)
        self.output.rejected(line, error)

    # ----------------------------------------------------------------- verdict
    def _runner_failed(self) -> bool:
        sup = self.sup
        return self.tracker.failure is not None or (sup is not None and sup.failure is not None)

    def exit_code(self) -> int:
        """Worst outcome wins: runner failure, signal, closed stdout, bad input, task failure."""
        if self._runner_failed():
            return EXIT_RUNNER_FAILED
        if self.signal_received is not None:
            return 128 + self.signal_received
        if self.output.broken:
            return EXIT_BROKEN_PIPE
        if self.bad_input:
            return EXIT_BAD_INPUT
        if self.tracker.failed_tasks:
            return EXIT_TASK_FAILED
        return EXIT_OK
