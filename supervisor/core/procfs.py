"""Cheap readings of one process: /proc files kept open, read with pread.

psutil opens, reads and closes a /proc file per call (~30 us each); the supervisor
reads a runner's state every poll, for every runner in the loop. Keeping the two
files open makes a reading a pair of ``pread`` calls (~3 us). Elsewhere than
Linux, psutil does the same job.
"""

from __future__ import annotations

import os

import psutil

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATES = {
    "R": psutil.STATUS_RUNNING,
    "S": psutil.STATUS_SLEEPING,
    "D": psutil.STATUS_DISK_SLEEP,
    "T": psutil.STATUS_STOPPED,
    "t": psutil.STATUS_TRACING_STOP,
    "Z": psutil.STATUS_ZOMBIE,
    "X": psutil.STATUS_DEAD,
    "I": psutil.STATUS_IDLE,
}


class ProcFile:
    """One ``/proc/<pid>/<name>`` file kept open: a reading is one ``pread`` from its
    start (a few µs where an open/read/close costs about twice that). Once the process
    is reaped the fd names nobody, so a reused pid is never read through it."""

    __slots__ = ("_fd", "_size", "pid")

    def __init__(self, pid: int, name: str, *, proc: str = "/proc", size: int = 4096) -> None:
        self.pid = pid
        self._size = size  # the first read's buffer: the usual file fits in it
        try:
            self._fd: int | None = os.open(f"{proc}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def read(self) -> bytes | None:
        """The whole file; None if it could not be opened or the process is gone."""
        fd = self._fd
        if fd is None:
            return None
        try:
            data = os.pread(fd, self._size, 0)
            if len(data) < self._size:
                return data or None
            chunks = [data]
            while chunk := os.pread(fd, self._size, sum(map(len, chunks))):
                chunks.append(chunk)
        except OSError:  # ESRCH: the process was reaped
            return None
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ProcReader:
    """``status``, CPU seconds and RSS of one process; ``None`` once it is gone."""

    #: one process's reader does not look below it
    descendant_count = 0

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stat = ProcFile(pid, "stat", size=1024)
        self._statm = ProcFile(pid, "statm", size=256)
        self._psutil: psutil.Process | None = None
        if not (self._stat.opened and self._statm.opened):
            self.close()
            try:
                self._psutil = psutil.Process(pid)
            except psutil.Error:
                self._psutil = None

    def read(self) -> tuple[str, float, int] | None:
        """(psutil-style status, user+system CPU seconds, RSS bytes): one ``pread``
        of ``stat``, whose ``rss`` field is the resident count ``statm`` gives."""
        if self._psutil is not None:
            return self._psutil_read()
        data = self._stat.read()
        if data is None:
            return None
        # "pid (comm) S ppid ...": comm may hold spaces and parentheses
        fields = data[data.rindex(b")") + 2 :].split()
        state = _STATES.get(fields[0].decode(), fields[0].decode())
        return state, (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[21]) * _PAGE

    def rss(self) -> int | None:
        if self._psutil is not None:
            try:
                return int(self._psutil.memory_info().rss)
            except psutil.Error:
                return None
        data = self._statm.read()
        return None if data is None else int(data.split()[1]) * _PAGE

    def _psutil_read(self) -> tuple[str, float, int] | None:
        assert self._psutil is not None
        try:
            with self._psutil.oneshot():
                cpu = self._psutil.cpu_times()
                rss = int(self._psutil.memory_info().rss)
                return str(self._psutil.status()), cpu.user + cpu.system, rss
        except psutil.Error:
            return None

    def close(self) -> None:
        self._stat.close()
        self._statm.close()


def uss(pid: int, proc: str = "/proc") -> int | None:
    """Unique set size in bytes: the pages no other process maps (its private pages).

    What a fork child adds to its parent's memory: the pages it shares copy-on-write
    with the runner are the runner's, already in the runner's RSS. The kernel walks
    the child's page tables for it (Linux >= 4.14): far dearer than ``statm``.
    """
    try:
        with open(f"{proc}/{pid}/smaps_rollup", "rb") as f:
            data = f.read()
    except OSError:
        return None
    total = 0
    found = False
    for line in data.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            total += int(line.split()[1]) * 1024
            found = True
    return total if found else None
