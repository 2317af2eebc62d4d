"""What the outside (health endpoints, metrics, systemd) can see of supervised runners.

Plain data and protocols, with no HTTP or Prometheus imports, so the restart and
node layers work without the optional ``health`` extra installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from supervisor.ops.phases import Phase
from supervisor.protocol import RunnerFailed, TaskStatus


@dataclass(frozen=True, slots=True)
class RankHealth:
    """One rank of a rank group (``RunnerSpec.world_size`` > 1), as cheaply as its runner."""

    rank: int
    pid: int | None
    phase: Phase
    heartbeat_age: float | None
    rss: int | None


@dataclass(frozen=True, slots=True)
class RunnerHealth:
    """A cheap snapshot of one supervised runner (no system calls to take it)."""

    runner_id: str
    phase: Phase
    incarnation: int
    restarts: int
    pid: int | None
    heartbeat_age: float | None
    rss: int | None
    pending: int
    in_progress: int
    #: seconds until it may be ready again (restart backoff left plus a margin)
    retry_after: float | None = None
    #: why it gave up; our own words, never a traceback
    gave_up_reason: str | None = None
    #: what holds the runner's process tree: "cgroup", "keeper" or "group"
    containment: str | None = None
    #: processes the runner started that are alive (its tree, the runner excluded)
    descendants: int | None = None
    #: the group it restarts with (`RunnerNode.add_group`), if any
    group: str | None = None
    #: GPU memory its process tree holds, in bytes, per NVML (the GPU watcher)
    gpu_memory: int | None = None
    #: uuids of the GPUs its processes are on
    gpus: tuple[str, ...] = ()
    #: uncorrected ECC errors since the driver loaded, on those GPUs
    gpu_ecc_uncorrected: int | None = None
    #: pages retired or rows remapped for memory errors, on those GPUs
    gpu_retired_pages: int | None = None
    #: a retirement or remapping on those GPUs waits for a GPU reset
    gpu_retirement_pending: bool | None = None
    #: each rank, in rank order, when the runner is a rank group (empty otherwise)
    ranks: tuple[RankHealth, ...] = ()


class HealthSource(Protocol):
    """Anything health endpoints and sd_notify can report on.

    A source may also have a ``min_ready`` attribute (int or None, see
    `supervisor.ops.readiness`): `RunnerNode` does; readiness reads it when present.
    """

    def health_snapshots(self) -> Sequence[RunnerHealth]: ...

    def add_observer(self, observer: SupervisorObserver) -> None: ...


class SupervisorObserver(Protocol):
    """Told about what happens to supervised runners, as it happens (e.g. metrics)."""

    def on_failure(
        self, runner_id: str, failure: RunnerFailed, detection_latency: float | None
    ) -> None:
        """An incarnation failed. ``detection_latency``: failure emitted minus best
        estimate of the death time (see docs/operations.md), or None if unknown."""

    def on_restart(self, runner_id: str, incarnation: int, delay: float) -> None:
        """A new incarnation will start after ``delay`` seconds."""

    def on_gave_up(self, runner_id: str, reason: str) -> None:
        """No more incarnations will start."""

    def on_task_finished(self, runner_id: str, status: TaskStatus) -> None:
        """A host task reached a terminal status (the restart layer's own load and
        warm-up tasks are not counted)."""


__all__ = [
    "HealthSource",
    "RunnerHealth",
    "SupervisorObserver",
]
