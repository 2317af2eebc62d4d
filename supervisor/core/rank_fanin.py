"""One logical runner's events from its N ranks' events: the rank group's fan-in.

Every task goes to every rank; the host must hear about it as if one runner ran it.
This is the pure decision (no I/O, no clock): `RankFanIn.on_event` takes one
rank's event and returns what the host hears, so each rule below is unit tested
without processes.

- Rank 0 speaks for the group: its chunks, acknowledgements, progress and Running
  statuses go to the host, once; the other ranks' copies are dropped.
- A task's terminal status is held until every rank has ended it: Complete if
  every rank completed it, else the first rank's (in rank order) Failed or
  Cancelled, naming that rank.
- Rank 0's Ready is held until every rank is ready: a group with one rank still
  warming up cannot serve.
- One rank's end is the group's end: the first rank to fail gives the group's one
  `RunnerFailed`, naming ``rank K``; every open task fails with it; everything
  after that is dropped (the other ranks were stopped for it: their stops are
  not news). A rank that stops while nobody asked the group to stop is a failure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import replace

from supervisor.core.tasks import RECENT_TASK_IDS
from supervisor.protocol import (
    READY_STATUSES,
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    RunnerFailed,
    RunnerIdle,
    RunnerReady,
    RunnerShutdown,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)


def rank_failure(rank: int, world_size: int, failure: RunnerFailed) -> RunnerFailed:
    """A rank's failure as its group's: the message and the diagnostics name the rank."""
    return replace(
        failure,
        error_message=f"rank {rank}: {failure.error_message}",
        diagnostics=(
            f"rank {rank} of {world_size} failed; every other rank was stopped with it",
            *failure.diagnostics,
        ),
    )


class RankFanIn:
    """The host's view of a group of ``world_size`` ranks that run every task together."""

    def __init__(self, runner_id: str, world_size: int) -> None:
        if world_size < 1:
            raise ValueError("a rank group has at least one rank")
        self.runner_id = runner_id
        self.world_size = world_size
        #: the group's status as the host last heard it (its failure once it failed)
        self.status: BaseRunnerStatus = RunnerIdle()
        self.failure: RunnerFailed | None = None
        #: the rank whose end ended the group (None while every rank runs)
        self.ended_by: int | None = None
        #: the group was asked to stop: a rank's stop is then no failure
        self.stopping = False
        self._open: dict[str, BaseTask] = {}  # in the order they were started
        self._acked: set[str] = set()  # by rank 0
        self._ended: dict[str, dict[int, TaskStatusUpdated]] = {}
        self._last: dict[int, BaseRunnerStatus] = {}
        self._ready_held = False
        self._recent: deque[str] = deque(maxlen=RECENT_TASK_IDS)

    # ------------------------------------------------------------ tasks
    @property
    def pending(self) -> Mapping[str, BaseTask]:
        """Tasks sent to the ranks, not yet acknowledged by rank 0."""
        return {tid: t for tid, t in self._open.items() if tid not in self._acked}

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        """Acknowledged tasks that some rank has not ended yet."""
        return {tid: t for tid, t in self._open.items() if tid in self._acked}

    def is_open(self, task_id: str) -> bool:
        return task_id in self._open

    def started(self, task: BaseTask) -> None:
        """``task`` is being sent to every rank."""
        self._open[task.task_id] = task

    def forget(self, task_id: str) -> None:
        """No rank took ``task_id`` (it was refused before it was sent)."""
        self._open.pop(task_id, None)
        self._ended.pop(task_id, None)

    # ------------------------------------------------------------ the end
    def rank_ending(self, rank: int) -> bool:
        """``rank`` started ending. True if that ends the group (stop the others now)."""
        if self.ended_by is not None or self.stopping:
            return False
        self.ended_by = rank
        return True

    def fail(self, rank: int, failure: RunnerFailed) -> list[BaseEvent]:
        """The group fails because ``rank`` did: its one RunnerFailed, then every open
        task's Failed. Nothing once the group has failed already."""
        if self.failure is not None:
            return []
        if self.ended_by is None:
            self.ended_by = rank
        self.failure = self.status = rank_failure(rank, self.world_size, failure)
        out: list[BaseEvent] = [RunnerStatusUpdated(self.runner_id, self.failure)]
        error = f"runner failed: {self.failure.error_message}"
        out += [TaskStatusUpdated(tid, TaskStatus.Failed, error) for tid in self._open]
        self._open.clear()
        self._ended.clear()
        return out

    # ------------------------------------------------------------ events
    def on_event(self, rank: int, event: BaseEvent) -> list[BaseEvent]:
        """What the host hears of ``rank``'s ``event`` (often nothing)."""
        if self.failure is not None:
            return []
        if isinstance(event, RunnerStatusUpdated):
            return self._on_status(rank, event.status)
        if isinstance(event, TaskStatusUpdated) and event.status.terminal:
            return self._on_task_end(rank, event)
        if self.ended_by is not None and self.ended_by != rank and not self.stopping:
            return []  # stopped because another rank ended: not news
        if rank != 0:
            return []
        if isinstance(event, TaskAcknowledged):
            self._acked.add(event.task_id)
        return [event]

    def _on_status(self, rank: int, status: BaseRunnerStatus) -> list[BaseEvent]:
        if isinstance(status, RunnerFailed):
            return self.fail(rank, status)
        self._last[rank] = status
        if isinstance(status, RunnerShutdown) and not self.stopping:
            if self.ended_by in (None, rank):
                return self.fail(
                    rank,
                    RunnerFailed(
                        reason="exited",
                        error_message="the rank stopped while its group was running",
                        detected_by="channel",
                    ),
                )
            return []
        if isinstance(status, RunnerReady) and rank == 0 and not self._all_ready():
            self._ready_held = True
            return []
        if rank == 0:
            self._ready_held = False
            return self._show(status)
        if self._ready_held and self._all_ready():
            self._ready_held = False
            return self._show(RunnerReady())
        return []

    def _show(self, status: BaseRunnerStatus) -> list[BaseEvent]:
        self.status = status
        return [RunnerStatusUpdated(self.runner_id, status)]

    def _all_ready(self) -> bool:
        return all(
            isinstance(self._last.get(rank), READY_STATUSES) for rank in range(self.world_size)
        )

    def _on_task_end(self, rank: int, event: TaskStatusUpdated) -> list[BaseEvent]:
        tid = event.task_id
        if tid not in self._open:
            if tid in self._recent:
                return []  # ended for the host already
            # Not the group's task (each rank's own Shutdown on a stop): rank 0 speaks.
            return [event] if rank == 0 else []
        ended = self._ended.setdefault(tid, {})
        ended.setdefault(rank, event)
        if len(ended) < self.world_size:
            return []
        del self._ended[tid]
        del self._open[tid]
        self._recent.append(tid)
        self._acked.discard(tid)
        for r in range(self.world_size):
            end = ended[r]
            if end.status is not TaskStatus.Complete:
                return [TaskStatusUpdated(tid, end.status, f"rank {r}: {end.error}")]
        return [ended[0]]


__all__ = ["RankFanIn", "rank_failure"]
