"""The wire protocol shared by the supervisor (parent) and the runner (child).

Everything here is a frozen, slotted dataclass so it pickles small and cannot be
mutated after it crossed the pipe. Names are the public contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

# --------------------------------------------------------------------------- tasks

#: What becomes of an acknowledged task whose runner dies (docs/recovery.md).
Recovery: TypeAlias = Literal["fail", "replay", "resume"]


@dataclass(frozen=True, slots=True)
class BaseTask:
    """A unit of work sent to the runner. Engines may subclass it for new kinds."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Prepare(BaseTask):
    """Idle -> Idle: the engine's ``prepare`` hook (device context, kernels, allocator
    warmed; no weights), ahead of LoadModel. A prepared spare has run it; LoadModel
    runs it first where it has not run."""


@dataclass(frozen=True, slots=True)
class LoadModel(BaseTask):
    """Idle -> Loading -> Loaded."""


@dataclass(frozen=True, slots=True)
class Warmup(BaseTask):
    """Loaded -> WarmingUp -> Ready."""


@dataclass(frozen=True, slots=True)
class Generate(BaseTask):
    """Ready -> Running -> Ready, streaming one ChunkGenerated per token.

    ``recovery``: what happens to it when its runner dies after acknowledging it
    (None: the restart policy's ``task_recovery``; see docs/recovery.md).
    ``resume_from``: set by the supervisor when it resumes the task on a new runner:
    the texts the host already has, in index order; the engine continues from index
    ``len(resume_from)`` (engines without ``supports_resume`` start over instead)."""

    prompt: str = ""
    max_tokens: int = 16
    recovery: Recovery | None = None
    resume_from: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Embed(BaseTask):
    """Ready -> Running -> Ready, one EmbeddingGenerated per text (embedding engines)."""

    texts: tuple[str, ...] = ()
    recovery: Recovery | None = None


@dataclass(frozen=True, slots=True)
class Probe(BaseTask):
    """A deep health check: the engine replays a small known-good step."""


@dataclass(frozen=True, slots=True)
class Shutdown(BaseTask):
    """Any -> ShuttingDown -> Shutdown; the process then exits 0."""


Task: TypeAlias = BaseTask

# ------------------------------------------------------------------ runner status


@dataclass(frozen=True, slots=True)
class BaseRunnerStatus:
    """Base of every runner status."""


@dataclass(frozen=True, slots=True)
class RunnerIdle(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerLoading(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerLoaded(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerWarmingUp(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerReady(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerRunning(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerShuttingDown(BaseRunnerStatus):
    pass


@dataclass(frozen=True, slots=True)
class RunnerShutdown(BaseRunnerStatus):
    pass


#: Why a runner failed; docs/operations.md ("Why did my runner die?") gives each one's
#: evidence and how to tell it from its look-alikes.
FailureReason: TypeAlias = Literal[
    "exited",
    "signalled",
    "oom_killed",  # SIGKILL from the kernel's OOM killer (its counters or log say so)
    "crashed",
    "channel_closed",  # the runner closed its event channel and lived on: we stopped it
    "unresponsive",
    "stalled",
    "memory_limit",
    "probe_failed",
    "fatal_log",
    "supervisor_error",  # a bug in the supervisor, not the runner
    "spawn_failed",  # the runner process could not be started
    "abandoned",  # the host cancelled the supervisor: it killed the runner
    "gpu_fault",  # NVML: an Xid critical error, a double-bit ECC error, a lost GPU
]
Detector: TypeAlias = Literal[
    "sentinel", "poll", "channel", "heartbeat", "progress", "probe", "log", "supervisor", "nvml"
]


@dataclass(frozen=True, slots=True)
class RunnerFailed(BaseRunnerStatus):
    """Terminal: the runner died, froze or wedged. Emitted once per incarnation."""

    reason: FailureReason
    error_message: str
    exit_code: int | None = None
    signal: int | None = None
    detected_by: Detector = "channel"
    diagnostics: tuple[str, ...] = ()


RunnerStatus: TypeAlias = BaseRunnerStatus

#: Statuses in which the runner's main loop is doing work and must tick progress.
BUSY_STATUSES: tuple[type[BaseRunnerStatus], ...] = (
    RunnerLoading,
    RunnerWarmingUp,
    RunnerRunning,
)
#: Statuses in which the runner takes new work.
READY_STATUSES: tuple[type[BaseRunnerStatus], ...] = (RunnerReady, RunnerRunning)
#: Statuses after which the incarnation says nothing more.
FINAL_STATUSES: tuple[type[BaseRunnerStatus], ...] = (RunnerShutdown, RunnerFailed)

# -------------------------------------------------------------------- task status


class TaskStatus(enum.StrEnum):
    """Task status. A StrEnum so ``status == "Failed"`` and JSON both work."""

    Running = "Running"
    Complete = "Complete"
    Failed = "Failed"
    Cancelled = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self is not TaskStatus.Running


# ------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class BaseEvent:
    """Base of every event forwarded to the host."""


@dataclass(frozen=True, slots=True)
class RunnerStatusUpdated(BaseEvent):
    runner_id: str
    status: BaseRunnerStatus


@dataclass(frozen=True, slots=True)
class TaskAcknowledged(BaseEvent):
    task_id: str


@dataclass(frozen=True, slots=True)
class TaskStatusUpdated(BaseEvent):
    task_id: str
    status: TaskStatus
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkGenerated(BaseEvent):
    task_id: str
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class EmbeddingGenerated(BaseEvent):
    """One embedding vector (float32 little-endian bytes) for text ``index`` of a task."""

    task_id: str
    index: int
    dim: int
    vector: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class LoadProgress(BaseEvent):
    """Optional progress of a long load or warm-up step (fraction in [0, 1])."""

    task_id: str
    fraction: float
    message: str = ""


Event: TypeAlias = BaseEvent

#: Prefix of a Probe's error when the engine says its device is permanently broken.
DEVICE_UNHEALTHY = "device unhealthy"

# ------------------------------------------- control messages (never forwarded)


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Parent -> runner: stop task ``task_id`` at the next token boundary."""

    task_id: str


@dataclass(frozen=True, slots=True)
class TaskUndecodable:
    """Runner -> parent: the next task in the pipe could not be unpickled there.

    Tasks are acknowledged in the order they were sent, so the parent knows which
    one it was: the oldest task still waiting for its acknowledgement.
    """

    error: str


@dataclass(frozen=True, slots=True)
class CrashReport:
    """Runner -> parent, just before a crash exit: the traceback that killed it."""

    error: str
    traceback: str


__all__ = [
    "BUSY_STATUSES",
    "DEVICE_UNHEALTHY",
    "FINAL_STATUSES",
    "READY_STATUSES",
    "BaseEvent",
    "BaseRunnerStatus",
    "BaseTask",
    "CancelTask",
    "ChunkGenerated",
    "CrashReport",
    "Detector",
    "Embed",
    "EmbeddingGenerated",
    "Event",
    "FailureReason",
    "Generate",
    "LoadModel",
    "LoadProgress",
    "Prepare",
    "Probe",
    "Recovery",
    "RunnerFailed",
    "RunnerIdle",
    "RunnerLoaded",
    "RunnerLoading",
    "RunnerReady",
    "RunnerRunning",
    "RunnerShutdown",
    "RunnerShuttingDown",
    "RunnerStatus",
    "RunnerStatusUpdated",
    "RunnerWarmingUp",
    "Shutdown",
    "Task",
    "TaskAcknowledged",
    "TaskStatus",
    "TaskStatusUpdated",
    "TaskUndecodable",
    "Warmup",
]
