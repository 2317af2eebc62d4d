"""The kernel log's word on a killed process: ``/dev/kmsg``, read without blocking.

Each ``read`` of /dev/kmsg returns one record, ``prio,seq,usec,flags;text`` (then
continuation lines that start with a space); a non-blocking fd reports the end with
EAGAIN, and records overwritten while we read with EPIPE (reading goes on from the
oldest left). The OOM killer writes ``[Memory cgroup ]Out of memory: Killed process
PID (comm) ...`` and an ``oom-kill:...,pid=PID,...`` summary. Reading /dev/kmsg needs
root or CAP_SYSLOG where ``kernel.dmesg_restrict`` is set; without it there is no line.

`KernelLog` is the host's one reader: opened at the end of the ring when the first
runner starts, it reads only what came since its last read and keeps the OOM
killer's lines, so a death costs the records of its own lifetime, not the ring's.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable

KMSG = "/dev/kmsg"
#: Records read at most: a full default ring (~1 MiB) is about 10 000 records.
MAX_RECORDS = 50_000
#: Wall-clock budget of one read of the ring.
BUDGET_S = 0.25

_KILLED = re.compile(r"Killed process (\d+) \(")
_SUMMARY = re.compile(r"^oom-kill:.*[,:]pid=(\d+)(?:,|$)")


def parse_record(record: str) -> tuple[float, str] | None:
    """(kernel time in seconds, text) of one /dev/kmsg record; None if malformed."""
    head, sep, text = record.partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 3 or not fields[2].isdigit():
        return None
    return int(fields[2]) / 1e6, text.split("\n", 1)[0]


def oom_pid(text: str) -> int | None:
    """The pid an OOM-killer line names; None for any other line."""
    match = _KILLED.search(text) or _SUMMARY.search(text)
    return int(match.group(1)) if match else None


def oom_lines(records: Iterable[str], pids: Collection[int], since: float) -> list[str]:
    """The OOM killer's lines naming one of ``pids``, logged at or after ``since``
    (kernel time, seconds: CLOCK_MONOTONIC on Linux). Pure."""
    out: list[str] = []
    for record in records:
        parsed = parse_record(record)
        if parsed is None:
            continue
        at, text = parsed
        if at >= since and oom_pid(text) in pids:
            out.append(text)
    return out


def read_records(
    path: str = KMSG, *, most: int = MAX_RECORDS, budget: float = BUDGET_S
) -> list[str]:
    """The kernel ring's records, oldest first; [] where /dev/kmsg is unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    records: list[str] = []
    deadline = time.monotonic() + budget
    try:
        while len(records) < most and time.monotonic() < deadline:
            try:
                data = os.read(fd, 8192)
            except BrokenPipeError:
                continue  # overwritten while we read: go on from the oldest left
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            records.append(data.decode("utf-8", "replace"))
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return records


class KernelLog:
    """The OOM killer's lines logged since `start`, read incrementally (thread safe)."""

    def __init__(self, path: str = KMSG, keep: int = 1024) -> None:
        self.path = path
        self._fd: int | None = None
        self._started = False
        #: (kernel time, pid, text) of the OOM killer's lines, newest last
        self._lines: deque[tuple[float, int, str]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        #: None before `start`; False where /dev/kmsg cannot be read
        self.readable: bool | None = None

    def start(self) -> None:
        """Open at the end of the ring, once (an open and a seek): what comes after is
        what `oom_lines` can find."""
        with self._lock:
            if self._started:
                return
            self._started = True
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self.readable = False
                return
            try:
                os.lseek(fd, 0, os.SEEK_END)
            except OSError:
                os.close(fd)
                self.readable = False
                return
            self._fd, self.readable = fd, True

    def oom_lines(self, pids: Collection[int], since: float) -> list[str] | None:
        """The OOM killer's lines naming one of ``pids`` at or after ``since`` (kernel
        time, s); None where the log cannot be read. Blocking reads of what is new,
        bounded: call it from a worker thread."""
        with self._lock:
            if self._fd is None:
                return None
            self._read_new()
            return [text for at, pid, text in self._lines if at >= since and pid in pids]

    def _read_new(self) -> None:
        assert self._fd is not None
        deadline = time.monotonic() + BUDGET_S
        for _ in range(MAX_RECORDS):
            if time.monotonic() > deadline:
                return
            try:
                data = os.read(self._fd, 8192)
            except BrokenPipeError:
                continue  # overwritten while we read: go on from the oldest left
            except OSError:  # BlockingIOError: nothing more for now
                return
            if not data:
                return
            # One record per read from /dev/kmsg; several lines from anything else.
            for line in data.decode("utf-8", "replace").splitlines():
                parsed = None if line.startswith(" ") else parse_record(line)
                if parsed is not None:
                    pid = oom_pid(parsed[1])
                    if pid is not None:
                        self._lines.append((parsed[0], pid, parsed[1]))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


_shared: dict[str, KernelLog] = {}
_shared_lock = threading.Lock()


def kernel_log(path: str = KMSG) -> KernelLog:
    """The host's one reader of ``path``, started."""
    with _shared_lock:
        log = _shared.get(path)
        if log is None:
            log = _shared[path] = KernelLog(path)
    log.start()
    return log


__all__ = [
    "KMSG",
    "KernelLog",
    "kernel_log",
    "oom_lines",
    "oom_pid",
    "parse_record",
    "read_records",
]
