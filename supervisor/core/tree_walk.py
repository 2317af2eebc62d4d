"""A runner's descendants, walked every poll with /proc files kept open.

`supervisor.ipc.proctree.descendants` lists each process's threads and opens, reads
and closes one ``children`` file per thread: about 120 us for a runner with two
children, at every poll of every runner (64 idle runners: about 1% of a core for
nothing). Here each process's ``task`` directory and each thread's ``children``
file stay open: a walk is one ``fstat`` per process (the directory's link count is
its thread count plus 2, so a thread that starts or ends shows) and one ``pread``
per thread, a few microseconds.

Linux only (where the walk exists at all); a process whose files cannot be opened
has no children as far as the walk knows, as with `proctree.children`.
"""

from __future__ import annotations

import contextlib
import os

from supervisor.ipc.proctree import PROC


class _Process:
    """One process's open ``task`` directory and its threads' ``children`` files."""

    __slots__ = ("_links", "_proc", "_task", "_threads", "pid")

    def __init__(self, pid: int, proc: str) -> None:
        self.pid = pid
        self._proc = proc
        self._task: int | None = None
        self._links = -1
        self._threads: dict[str, int] = {}
        with contextlib.suppress(OSError):
            self._task = os.open(f"{proc}/{pid}/task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def children(self) -> list[int]:
        if self._task is None:
            return []
        try:
            links = os.fstat(self._task).st_nlink
        except OSError:
            return []
        if links != self._links:
            self._links = links
            self._relist()
        out: list[int] = []
        for tid, fd in list(self._threads.items()):
            try:
                data = os.pread(fd, 65536, 0)
            except OSError:  # the thread ended
                os.close(fd)
                del self._threads[tid]
                continue
            out.extend(int(word) for word in data.split() if word.isdigit())
        return out

    def _relist(self) -> None:
        try:
            tids = set(os.listdir(f"{self._proc}/{self.pid}/task"))
        except OSError:
            tids = set()
        for tid in set(self._threads) - tids:
            os.close(self._threads.pop(tid))
        for tid in tids - set(self._threads):
            with contextlib.suppress(OSError):
                path = f"{self._proc}/{self.pid}/task/{tid}/children"
                self._threads[tid] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        for fd in self._threads.values():
            os.close(fd)
        self._threads.clear()
        if self._task is not None:
            os.close(self._task)
            self._task = None


class TreeWalk:
    """Every process below a root, as `proctree.descendants` finds them, cheaply.

    Keeps the files of the processes it last found; those no longer in the tree are
    closed at the next walk. `close` when done.
    """

    def __init__(self, proc: str = PROC) -> None:
        self._proc = proc
        self._known: dict[int, _Process] = {}

    def descendants(self, root: int) -> list[int]:
        """Every process below ``root``, parents before their children."""
        out: list[int] = []
        seen = {root}
        frontier = [root]
        while frontier:
            found: list[int] = []
            for parent in frontier:
                for child in self._process(parent).children():
                    if child not in seen:  # a cycle is impossible, but a racy read is not
                        seen.add(child)
                        found.append(child)
            out.extend(found)
            frontier = found
        for pid in set(self._known) - seen:  # gone, or left the tree: its pid may be reused
            self._known.pop(pid).close()
        return out

    def _process(self, pid: int) -> _Process:
        known = self._known.get(pid)
        if known is None:
            known = self._known[pid] = _Process(pid, self._proc)
        return known

    def close(self) -> None:
        for known in self._known.values():
            known.close()
        self._known.clear()


__all__ = ["TreeWalk"]
