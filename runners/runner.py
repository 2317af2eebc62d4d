"""The runner's main loop: tasks in, statuses, acknowledgements and chunks out."""

from __future__ import annotations

import dataclasses
import os
import pickle
import select
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection

from runners.chaos import Chaos
from runners.engines.base import Engine, TaskError
from supervisor.ipc.shared import SharedState
from supervisor.ipc.wire import encode_chunk, encode_frame
from supervisor.protocol import (
    DEVICE_UNHEALTHY,
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    CancelTask,
    Generate,
    LoadModel,
    LoadProgress,
    Prepare,
    Probe,
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
    TaskUndecodable,
    Warmup,
)


class _Context:
    """The `EngineContext` handed to engines for one task."""

    def __init__(self, runner: Runner, task_id: str) -> None:
        self._runner = runner
        self._task_id = task_id

    @property
    def task_id(self) -> str:
        return self._task_id

    def tick(self) -> None:
        self._runner.shared.tick()

    def extend_deadline(self, seconds: float) -> None:
        self._runner.shared.extend_deadline(seconds)

    def report_progress(self, fraction: float, message: str = "") -> None:
        self._runner.emit(LoadProgress(self._task_id, fraction, message))

    def cancelled(self) -> bool:
        return self._runner.check_inbox(self._task_id)

    def emit(self, event: BaseEvent | TaskUndecodable) -> None:
        self._runner.emit(event)
        self._runner.shared.tick()


class Runner:
    """Drives the status machine Idle -> Loading -> Loaded -> WarmingUp -> Ready <-> Running.

    Shutdown is accepted in any state. Every task is acknowledged on receipt, then
    gets Running and exactly one terminal status. Bad tasks (wrong state, unknown
    kind, bad fields) fail alone; an engine exception is a crash and propagates.
    """

    def __init__(
        self,
        runner_id: str,
        engine: Engine,
        tasks: Connection,
        events: Connection,
        shared: SharedState,
        chaos: Chaos,
    ) -> None:
        self.runner_id = runner_id
        self.engine = engine
        self.shared = shared
        self.chaos = chaos
        self._tasks = tasks
        self._events = events
        self._events_fd = events.fileno()
        # One poll object for the life of the runner: Connection.poll(0) builds a
        # selector per call (~3 us), which is paid on every token.
        self._inbox = select.poll()
        self._inbox.register(tasks.fileno(), select.POLLIN)
        self._orphaned = False
        self._queue: deque[BaseTask] = deque()
        self._cancelled: set[str] = set()
        self._shutdown_seen = False
        self._prepared = False  # the engine's prepare hook ran
        self.status: BaseRunnerStatus = RunnerIdle()

    # -------------------------------------------------------------- messaging
    def emit(self, event: BaseEvent | TaskUndecodable) -> None:
        self._write(encode_frame(event))

    def _write(self, frame: bytes) -> None:
        fd = self._events_fd
        written = os.write(fd, frame)
        if written < len(frame):  # a full pipe took part of it: write the rest as it drains
            data = memoryview(frame)[written:]
            while data:
                data = data[os.write(fd, data) :]

    def _set_status(self, status: BaseRunnerStatus) -> None:
        self.status = status
        self.emit(RunnerStatusUpdated(self.runner_id, status))
        self.shared.tick()

    def _task_status(self, task_id: str, status: TaskStatus, error: str | None = None) -> None:
        self.emit(TaskStatusUpdated(task_id, status, error))

    def _accept(self, msg: object) -> None:
        """Take one message off the pipe: queue (and acknowledge) tasks, note cancels."""
        self.shared.tick()
        if isinstance(msg, CancelTask):
            self._cancel(msg.task_id)
        elif isinstance(msg, BaseTask):
            self.emit(TaskAcknowledged(msg.task_id))
            if isinstance(msg, Shutdown):
                self._shutdown_seen = True
                self._queue.appendleft(msg)
            else:
                self._queue.append(msg)
        else:
            # Not ours to crash on: report and carry on.
            task_id = getattr(msg, "task_id", None)
            if isinstance(task_id, str):
                self.emit(TaskAcknowledged(task_id))
                self._task_status(
                    task_id, TaskStatus.Failed, f"unknown task kind {type(msg).__name__}"
                )

    def _cancel(self, task_id: str) -> None:
        for queued in list(self._queue):
            if queued.task_id == task_id and not isinstance(queued, Shutdown):
                self._queue.remove(queued)
                self._task_status(task_id, TaskStatus.Cancelled)
                return
        self._cancelled.add(task_id)

    def check_inbox(self, current: str) -> bool:
        """Read what arrived without blocking; True if ``current`` must stop."""
        try:
            while self._inbox.poll(0):
                self._receive()
        except (EOFError, OSError):
            self._orphaned = True  # the supervisor is gone: stop and leave
            return True
        return current in self._cancelled or self._shutdown_seen

    def _receive(self) -> None:
        """Take one message; a task we cannot unpickle fails alone, not the runner."""
        data = self._tasks.recv_bytes()
        try:
            msg = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - whatever the pickle held
            self.emit(TaskUndecodable(f"{type(exc).__name__}: {exc}"))
            return
        self._accept(msg)

    def _next_task(self) -> BaseTask | None:
        while not self._queue:
            try:
                self._receive()
            except (EOFError, OSError):
                return None  # the supervisor is gone
        return self._queue.popleft()

    # --------------------------------------------------------------- the loop
    def run(self) -> bool:
        """Serve tasks until Shutdown (True) or the supervisor disappears (False)."""
        self._set_status(RunnerIdle())
        while True:
            task = None if self._orphaned else self._next_task()
            if task is None:
                return False
            self._cancelled.discard(task.task_id)
            if isinstance(task, Shutdown):
                self._shutdown(task)
                return True
            self._execute(task)

    def _execute(self, task: BaseTask) -> None:
        tid = task.task_id
        ctx = _Context(self, tid)
        try:
            error = self._check_task(task)
            if error is not None:
                raise TaskError(error)
            self._task_status(tid, TaskStatus.Running)
            if isinstance(task, Prepare):
                self._prepare(ctx)
            elif isinstance(task, LoadModel):
                self._set_status(RunnerLoading())
                self._prepare(ctx)
                self.engine.load(ctx)
                self._set_status(RunnerLoaded())
            elif isinstance(task, Warmup):
                self._set_status(RunnerWarmingUp())
                self.engine.warmup(ctx)
                self._set_status(RunnerReady())
            elif isinstance(task, Probe):
                # A failed probe is the supervisor's evidence, not a crash: it decides.
                try:
                    self.engine.probe(ctx)
                except Exception as exc:
                    raise TaskError(f"probe failed: {type(exc).__name__}: {exc}") from exc
                cause = self.engine.device_health()
                if cause is not None:
                    raise TaskError(f"{DEVICE_UNHEALTHY}: {cause}")
            elif isinstance(task, Generate):
                self._set_status(RunnerRunning())
                try:
                    if not self._stream(task, ctx):
                        self._task_status(tid, TaskStatus.Cancelled)
                        return
                finally:
                    self._back_to_ready()
            else:
                self._set_status(RunnerRunning())
                try:
                    self.engine.run_task(task, ctx)
                finally:
                    self._back_to_ready()
                # An engine stops early when ctx.cancelled() says so: a cancel, or
                # a Shutdown that arrived meanwhile. Either way the task did not finish.
                if tid in self._cancelled or self._shutdown_seen:
                    self._task_status(tid, TaskStatus.Cancelled)
                    return
        except TaskError as exc:
            self._task_status(tid, TaskStatus.Failed, str(exc))
            return
        finally:
            self._cancelled.discard(tid)
        self._task_status(tid, TaskStatus.Complete)

    def _prepare(self, ctx: _Context) -> None:
        """The engine's prepare hook, once per process (a prepared spare ran it)."""
        if not self._prepared:
            self.engine.prepare(ctx)
            self._prepared = True

    def _back_to_ready(self) -> None:
        if isinstance(self.status, RunnerRunning):
            self._set_status(RunnerReady())

    def _check_task(self, task: BaseTask) -> str | None:
        state = type(self.status).__name__
        if isinstance(task, (Prepare, LoadModel)):
            ok = isinstance(self.status, RunnerIdle)
        elif isinstance(task, Warmup):
            ok = isinstance(self.status, RunnerLoaded)
        elif isinstance(task, Generate):
            if not isinstance(task.prompt, str):
                return "Generate.prompt must be a str"
            if isinstance(task.max_tokens, bool) or not isinstance(task.max_tokens, int):
                return "Generate.max_tokens must be an int"
            if task.max_tokens < 0:
                return "Generate.max_tokens must be >= 0"
            ok = isinstance(self.status, RunnerReady)
        elif isinstance(task, Probe):
            ok = isinstance(self.status, (RunnerIdle, RunnerLoaded, RunnerReady))
        elif isinstance(task, self.engine.task_kinds):
            ok = isinstance(self.status, RunnerReady)
        else:
            return f"engine {self.engine.name!r} does not support {type(task).__name__} tasks"
        if not ok:
            return f"cannot run {type(task).__name__} while the runner is {state}"
        return None

    def _stream(self, task: Generate, ctx: _Context) -> bool:
        """Stream ``task``'s chunks; False if it was cancelled between tokens."""
        start = len(task.resume_from)
        if start and not self.engine.supports_resume:
            # Resume falls back to replay: start over; the supervisor compares the
            # indexes its host already has and sends none of them twice.
            task = dataclasses.replace(task, resume_from=())
            start = 0
        tokens: Iterator[str] = self.chaos.wrap(task, self.engine.generate(task, ctx))
        tid = task.task_id
        cut = not self.engine.cancels_in_step
        write = self._write
        tick = self.shared.tick
        for index, text in enumerate(tokens, start):
            if cut and self.check_inbox(tid):
                return False
            write(encode_chunk(tid, index, text))  # = emit(ChunkGenerated(...)), per token
            tick()
        return not self.check_inbox(tid)

    def _shutdown(self, task: Shutdown) -> None:
        self._task_status(task.task_id, TaskStatus.Running)
        self._set_status(RunnerShuttingDown())
        while self._queue:
            queued = self._queue.popleft()
            if not isinstance(queued, Shutdown):
                self._task_status(queued.task_id, TaskStatus.Cancelled, "runner shutting down")
            else:
                self._task_status(queued.task_id, TaskStatus.Complete)
        self.engine.close()
        self._task_status(task.task_id, TaskStatus.Complete)
        self._set_status(RunnerShutdown())
