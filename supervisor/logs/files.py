"""Per-runner log files: ``DIR/<runner id>.log``, across restarts, rotated and pruned.

Every line the runner writes, and every supervisor log line bound to that runner
(``logger.bind(runner_id=..., incarnation=..., pid=...)``), goes to the runner's file,
stamped with the time, the stream (``stdout``, ``stderr``, ``output`` for the two
merged, ``supervisor``), the incarnation and the pid::

    2026-05-09T12:00:01.123+00:00 output     inc=2 pid=4242 | loading weights
    2026-05-09T12:00:03.456+00:00 supervisor inc=2 pid=4242 | ERROR   runner r1 failed ...

Writing never blocks the caller (the supervisor's event loop): lines go into one
bounded in-memory queue per directory, and one thread appends them to the files
(rotation, retention, compression). Nothing is lost silently: a line the queue has no
room for (a slow disk) or that cannot be written (a full disk) is counted in
`dropped_lines`; a file removed while open is made again and counted in
`reopened_log_files`; a character UTF-8 cannot hold is escaped. A line longer than
`MAX_LINE_CHARS` is cut, with `TRUNCATED` at its end.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from loguru import logger

from supervisor.logs.lines import MAX_LINE_CHARS, TRUNCATED
from supervisor.logs.names import log_file_name, log_path
from supervisor.logs.rotation import check_file_options
from supervisor.logs.writer import BETWEEN_INCARNATIONS, LogWriter, RunnerLog, Stream

if TYPE_CHECKING:
    from loguru import Logger, Record

    from supervisor.config import SupervisorConfig

# ------------------------------------------------------------- process-wide
_writers: dict[str, LogWriter] = {}
_registry = threading.Lock()
_retired_dropped = 0
_retired_reopened = 0


def _retire(writer: LogWriter) -> bool:
    """Called by an idle writer with no open file: leave, unless work just arrived."""
    global _retired_dropped, _retired_reopened
    with _registry:
        if not writer.inbox.empty():
            return False
        writer.retired = True
        if _writers.get(writer.log_dir) is writer:
            del _writers[writer.log_dir]
        _retired_dropped += writer.dropped
        _retired_reopened += writer.reopened
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


def runner_logger(
    runner_id: str, *, incarnation: int | None = None, pid: Callable[[], int] | None = None
) -> Logger:
    """The logger for lines about a runner: they reach its file (and are fields of JSON
    logs). Without an incarnation, lines about the runner as a whole (the restart
    layer's "restart 1 in 0.5s"), which reach the file under `runner_log_held`. With
    ``pid``, each line is stamped with what it returns when the line is logged: the
    ranks of a group share an incarnation, and each line names its own process."""
    bound = (
        logger.bind(runner_id=runner_id)
        if incarnation is None
        else logger.bind(runner_id=runner_id, incarnation=incarnation)
    )
    if pid is None:
        return bound

    def stamp(record: Record) -> None:
        with contextlib.suppress(Exception):  # a log line must never raise
            record["extra"]["pid"] = pid()

    return bound.patch(stamp)


@contextlib.contextmanager
def runner_log_held(config: SupervisorConfig, runner_id: str) -> Iterator[None]:
    """Keep the runner's log file open while the block runs, so that `runner_logger`
    lines reach it between incarnations too. They are stamped ``inc=0`` with the
    supervisor's own pid: no incarnation wrote them. Nothing happens without a log
    directory."""
    if config.log_dir is None:
        yield
        return
    held = open_runner_log(
        config.log_dir,
        runner_id,
        incarnation=BETWEEN_INCARNATIONS,
        pid=os.getpid(),
        rotation=config.log_rotation,
        retention=config.log_retention,
        compression=config.log_compression,
    )
    try:
        yield
    finally:
        held.close()


def flush_log_files(timeout: float = 5.0) -> bool:
    """Wait until every queued line is written and closed files are closed (blocks)."""
    with _registry:
        writers = list(_writers.values())
    deadline = time.monotonic() + timeout
    return all(w.flush(max(deadline - time.monotonic(), 0.0)) for w in writers)


def dropped_lines() -> int:
    """Lines lost in this process so far (a counter): refused because a writer fell
    behind, or not written (a full disk, a file that cannot be opened)."""
    with _registry:
        return _retired_dropped + sum(w.dropped for w in _writers.values())


def reopened_log_files() -> int:
    """Times a log file was found removed or replaced while open, and made again, in
    this process so far (a counter)."""
    with _registry:
        return _retired_reopened + sum(w.reopened for w in _writers.values())


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
    "reopened_log_files",
    "runner_log_held",
    "runner_logger",
]
