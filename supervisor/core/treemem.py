"""Readings of a runner for the detectors and the meter: its state, its tree's memory.

A runner's memory is its whole tree's: a tokenizer pool or a compile worker holding
500 MiB counts against ``memory_limit`` like the runner's own. The figure is the
runner's RSS plus each other process's *private* pages (USS): a fork child's
copy-on-write pages are the runner's, counted once, in the runner. Where the cgroup
layer has the memory controller, the cgroup's own accounting replaces the sum.

The runner itself costs one ``statm`` read as before; only its children are walked
(``smaps_rollup``), and no more often than a CPU budget allows. Without a
``memory_limit`` nothing acts on the children's memory at once (a gauge, the recycle
counter): the walk then runs every `MAX_AGE` seconds, not at every poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from supervisor.core.procfs import ProcReader, uss

#: Share of one core that tree readings may take: the kernel walks a process's page
#: tables for its USS, milliseconds for a child with gigabytes mapped.
CPU_BUDGET = 0.01
#: ...but a reading is never older than this.
MAX_AGE = 5.0


class TreeReader:
    """A `ProcReader` lookalike: ``stat`` of the runner, ``rss`` of its whole tree.

    Under a keeper the runner's pid is known only once the runner wrote it, so the
    readings follow ``target()`` (the keeper's pid until then). ``others()`` lists the
    tree's other live processes (neither keeper nor runner); ``cgroup_memory()``, where
    given and not None, replaces the sum. ``eager``: walk the tree at every reading
    the CPU budget allows (a ``memory_limit`` is enforced on it); otherwise at most
    every `MAX_AGE` seconds.
    """

    def __init__(
        self,
        target: Callable[[], int],
        others: Callable[[], list[int]],
        cgroup_memory: Callable[[], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        eager: bool = True,
    ) -> None:
        self._target = target
        self._others = others
        self._cgroup_memory = cgroup_memory
        self._clock = clock
        self._min_age = 0.0 if eager else MAX_AGE
        self._reader = ProcReader(target())
        self._children = 0
        self._due = 0.0
        #: the other processes of the tree at the last reading of their memory
        self.descendants: list[int] = []

    @property
    def pid(self) -> int:
        return self._current().pid

    @property
    def descendant_count(self) -> int:
        return len(self.descendants)

    def _current(self) -> ProcReader:
        pid = self._target()
        if pid != self._reader.pid:
            self._reader.close()
            self._reader = ProcReader(pid)
            self._due = 0.0
        return self._reader

    def read(self) -> tuple[str, float, int] | None:
        """(status, CPU seconds) of the runner and the tree's memory, in one reading
        of the runner; None once it is gone."""
        own = self._current().read()
        if own is None:
            return None
        return own[0], own[1], self._tree(own[2])

    def rss(self) -> int | None:
        """The tree's memory in bytes; None once the runner is gone."""
        own = self._current().rss()
        return None if own is None else self._tree(own)

    def _tree(self, own: int) -> int:
        """``own`` (the runner's RSS) plus the other processes' private memory, or the
        cgroup's own figure where it keeps one."""
        if self._cgroup_memory is not None:
            total = self._cgroup_memory()
            if total is not None:
                self.descendants = self._others()
                return total
        now = self._clock()
        if now >= self._due:
            # CPU time, not wall time: a loaded machine must not stretch the interval.
            started = time.thread_time()
            self.descendants = self._others()
            self._children = sum(_private(p) for p in self.descendants)
            spent = time.thread_time() - started
            self._due = now + max(self._min_age, min(spent / CPU_BUDGET, MAX_AGE))
        return own + self._children

    def close(self) -> None:
        self._reader.close()


def _private(pid: int) -> int:
    """USS where the kernel has ``smaps_rollup`` (Linux >= 4.14), RSS elsewhere."""
    private = uss(pid)
    if private is not None:
        return private
    reader = ProcReader(pid)
    try:
        return reader.rss() or 0
    finally:
        reader.close()
