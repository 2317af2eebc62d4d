"""When one incarnation is due for recycling: pure counting, no processes.

Long-lived inference workers leak (allocator fragmentation, caches), so a runner
can be replaced gracefully after ``policy.max_tasks`` finished tasks (plus a
random ``0..max_tasks_jitter`` drawn once per incarnation, so that runners started
together are not all recycled together), or once its RSS read above
``policy.max_rss`` for `RSS_RECYCLE_SAMPLES` samples in a row.
"""

from __future__ import annotations

import random

from supervisor.restart.policy import RSS_RECYCLE_SAMPLES, RestartPolicy


class RecycleCounter:
    """Counts one incarnation's finished tasks and high-RSS samples.

    `task_ended` and `rss_sample` return True exactly once: when the incarnation
    becomes due (``reason`` then says why). Later calls return False, so one
    incarnation asks for one replacement.
    """

    __slots__ = ("_last_when", "_streak", "max_rss", "reason", "task_limit", "tasks")

    def __init__(self, policy: RestartPolicy, rng: random.Random) -> None:
        self.task_limit: int | None = None
        if policy.max_tasks is not None:
            self.task_limit = policy.max_tasks + rng.randint(0, policy.max_tasks_jitter)
        self.max_rss = policy.max_rss
        self.tasks = 0
        #: why the incarnation is due; None while it is not
        self.reason: str | None = None
        self._streak = 0
        self._last_when: float | None = None

    @property
    def due(self) -> bool:
        return self.reason is not None

    def task_ended(self) -> bool:
        """A host task reached a terminal status. True when this makes the runner due."""
        self.tasks += 1
        if self.task_limit is None or self.tasks < self.task_limit or self.due:
            return False
        self.reason = f"finished {self.tasks} tasks (max_tasks, this incarnation {self.task_limit})"
        return True

    def rss_sample(self, when: float, rss: int) -> bool:
        """One RSS reading taken at ``when``; the same reading seen twice counts once.
        True when this makes the runner due."""
        if self.max_rss is None or self.due or when == self._last_when:
            return False
        self._last_when = when
        self._streak = self._streak + 1 if rss > self.max_rss else 0
        if self._streak < RSS_RECYCLE_SAMPLES:
            return False
        self.reason = (
            f"RSS {rss / 2**20:.0f} MiB above max_rss {self.max_rss / 2**20:.0f} MiB "
            f"for {self._streak} samples"
        )
        return True

    @property
    def active(self) -> bool:
        """Anything to count at all."""
        return self.task_limit is not None or self.max_rss is not None


__all__ = ["RecycleCounter"]
