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


class HealthSource(Protocol):
    """Anything health endpoints and sd_notify can report on."""

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


__all__ = ["HealthSource", "RunnerHealth", "SupervisorObserver"]
