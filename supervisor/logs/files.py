"""Per-runner log files: ``DIR/<runner id>.log``, across restarts, rotated and pruned.

Every line the runner writes, and every supervisor log line bound to that runner
(``logger.bind(runner_id=..., incarnation=..., pid=...)``), goes to the runner's file,
stamped with the time, the stream (``stdout``, ``stderr``, ``output`` for the two
merged, ``supervisor``), the incarnation and the pid::

    2026-05-09T12:00:01.123+00:00 output     inc=2 pid=4242 | loading weights
    2026-05-09T12:00:03.456+00:00 supervisor inc=2 pid=4242 | ERROR   runner r1 failed ...

Writing never blocks the caller (the supervisor's event loop): lines go into one
bounded in-memory queue per directory, and one thread writes them through loguru file
sinks (rotation, retention, compression). When the queue is full (a slow or full disk)
lines are dropped and counted, never waited for. A line longer than `MAX_LINE_CHARS` is
cut, with `TRUNCATED` at its end.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable

from supervisor.logs.writer import (
    MAX_LINE_CHARS,
    TRUNCATED,
    LogWriter,
    RunnerLog,
    Stream,
    check_file_options,
    log_file_name,
    log_path,
)

# ------------------------------------------------------------- process-wide
_writers: dict[str, LogWriter] = {}
_registry = threading.Lock()
_retired_dropped = 0


def _retire(writer: LogWriter) -> bool:
    """Called by an idle writer with no open file: leave, unless work just arrived."""
    global _retired_dropped
    with _registry:
        if not writer.inbox.empty():
            return False
        writer._retired = True
        if _writers.get(writer.log_dir) is writer:
            del _writers[writer.log_dir]
        _retired_dropped += writer.dropped
        return True


def open_runner_log(
    log_dir: str | os.PathLike[str],
    runner_id: str,
    *,
    incarnation: int,
    pid: int | Callable[[], int],
    rotation: str | None,
    retention: int | None,
    compression: str | None = None,
) -> RunnerLog:
    """Start writing one incarnation's lines to ``DIR/<runner id>.log``. Never blocks:
    the directory and the file are made by the writer thread."""
    key = os.path.abspath(log_dir)
    with _registry:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = LogWriter(key, retire=_retire)
            writer.start()
        return writer.open(
            runner_id,
            incarnation=incarnation,
            pid=pid,
            rotation=rotation,
            retention=retention,
            compression=compression,
        )


def flush_log_files(timeout: float = 5.0) -> bool:
    """Wait until every queued line is written and closed files are closed (blocks)."""
    with _registry:
        writers = list(_writers.values())
    deadline = time.monotonic() + timeout
    return all(w.flush(max(deadline - time.monotonic(), 0.0)) for w in writers)


def dropped_lines() -> int:
    """Lines lost because a writer fell behind, in this process so far (a counter)."""
    with _registry:
        return _retired_dropped + sum(w.dropped for w in _writers.values())


atexit.register(flush_log_files, 2.0)

__all__ = [
    "MAX_LINE_CHARS",
    "TRUNCATED",
    "LogWriter",
    "RunnerLog",
    "Stream",
    "check_file_options",
    "dropped_lines",
    "flush_log_files",
    "log_file_name",
    "log_path",
    "open_runner_log",
]
