"""The engine interface a runner drives."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from supervisor.protocol import BaseEvent, BaseTask, Generate


class TaskError(Exception):
    """Raised by an engine for a bad task: the task fails, the runner lives on.

    Any other exception from an engine is a crash: the engine's state is unknown,
    so the runner reports its traceback and exits non-zero.
    """


class EngineContext(Protocol):
    """What the runner offers an engine while it works."""

    @property
    def task_id(self) -> str: ...

    def tick(self) -> None:
        """Prove the main loop is making progress (call it on every step)."""

    def extend_deadline(self, seconds: float) -> None:
        """Declare that the next step may take up to ``seconds`` without ticking."""

    def report_progress(self, fraction: float, message: str = "") -> None:
        """Emit a LoadProgress event (loading and warm-up)."""

    def cancelled(self) -> bool:
        """True once the current task was cancelled or a shutdown arrived."""

    def emit(self, event: BaseEvent) -> None:
        """Send an event to the supervisor (for engine-specific task kinds)."""


class Engine:
    """Base class of engines: load, warm up, generate, and optionally probe."""

    name = "base"
    #: Task kinds beyond the built-in ones that `run_task` handles.
    task_kinds: tuple[type[BaseTask], ...] = ()
    #: False for engines that refuse Generate (embedding models).
    generates_text: bool = True
    #: True for engines whose ranks must stop a Generate at the same token (a
    #: collective per token): the engine checks ``ctx.cancelled()`` itself and ends
    #: its stream; the runner does not cut the stream between tokens.
    cancels_in_step: bool = False
    #: True when `generate` continues a `Generate` from ``len(task.resume_from)``
    #: (yielding only the tokens after the ones the host already has); otherwise a
    #: resumed task is replayed from its start (docs/recovery.md).
    supports_resume: bool = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    def prepare(self, ctx: EngineContext) -> None:
        """Get the device ready, without weights: CUDA context, kernels, allocator.

        Runs at most once per process, in state Idle: on a `Prepare` task (a
        ``prepared`` spare runs it ahead of need), else first thing in LoadModel."""

    def load(self, ctx: EngineContext) -> None:
        """Load weights. Runs in state Loading."""

    def warmup(self, ctx: EngineContext) -> None:
        """Run one representative step. Runs in state WarmingUp."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        """Yield the text of each token of ``task`` (from index ``len(task.resume_from)``
        when the engine `supports_resume`)."""
        raise TaskError(f"engine {self.name!r} does not generate text")

    def run_task(self, task: BaseTask, ctx: EngineContext) -> None:
        """Run an engine-specific task kind, emitting its events through ``ctx``."""
        raise TaskError(f"engine {self.name!r} does not support {type(task).__name__}")

    def probe(self, ctx: EngineContext) -> None:
        """Deep health check: replay a small known-good step. Raise if unhealthy."""

    def device_health(self) -> str | None:
        """``None`` if the device is healthy, else the cause of its failure."""
        return None

    def close(self) -> None:
        """Release resources before a clean exit."""
