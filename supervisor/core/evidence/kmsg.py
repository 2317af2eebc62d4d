"""The kernel log's word on a killed process: ``/dev/kmsg``, read without blocking.

Each ``read`` of /dev/kmsg returns one record, ``prio,seq,usec,flags;text``; a
non-blocking fd reports the end with EAGAIN, and records overwritten while we read
with EPIPE (reading goes on from the oldest left). The OOM killer writes
``[Memory cgroup ]Out of memory: Killed process PID (comm) ...`` and an
``oom-kill:...,pid=PID,...`` summary. Reading /dev/kmsg needs root or
CAP_SYSLOG where ``kernel.dmesg_restrict`` is set; without it there is no line.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
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


__all__ = ["KMSG", "oom_lines", "oom_pid", "parse_record", "read_records"]
