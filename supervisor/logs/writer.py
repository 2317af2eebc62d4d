"""The writer behind `supervisor.logs.files`: one bounded inbox and one thread per log
directory, appending each runner's lines to its `LogFile`.

Nothing here is called from the event loop except `RunnerLog.write` and `close`, which
only queue, and `LogWriter.route`, loguru's sink for supervisor lines bound to a
runner, which only queues too; everything that touches the disk runs on the writer
thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from supervisor.logs.inbox import QUEUE_CHARS, QUEUE_LINES, Close, Inbox, Open
from supervisor.logs.lines import MAX_LINE_CHARS, Stamper, cut
from supervisor.logs.logfile import LogFile
from supervisor.logs.names import log_path

if TYPE_CHECKING:
    from loguru import Message

Stream = Literal["stdout", "stderr", "output", "supervisor"]

#: A writer with no open file exits after this many idle seconds.
IDLE_EXIT = 1.0
#: After writing, the writer waits this long for more lines: it wakes (and takes the
#: GIL from the event loop) a few times a second rather than once per line.
LINGER = 0.05
#: The incarnation number of a runner's lines written by no incarnation (the restart
#: layer's, between incarnations; see `files.runner_log_held`).
BETWEEN_INCARNATIONS = 0


class RunnerLog:
    """One incarnation's writer into its runner's file. Nothing here blocks."""

    def __init__(
        self, writer: LogWriter, runner_id: str, incarnation: int, pid: int | Callable[[], int]
    ) -> None:
        self.runner_id = runner_id
        self.incarnation = incarnation
        # A callable: under a keeper the runner's own pid is known only once it reported.
        self._pid = pid if callable(pid) else (lambda: pid)
        self.path = writer.path_for(runner_id)
        self.dropped = 0
        self.closed = False
        self._writer = writer
        self._key = str(self.path)

    @property
    def pid(self) -> int:
        return self._pid()

    def write(self, stream: str, line: str) -> None:
        """Queue ``line``; drop (and count) it if the writer is behind."""
        if self.closed:
            return
        if len(line) > MAX_LINE_CHARS:
            line = cut(line)
        item = (self._key, time.time(), stream, self.incarnation, self.pid, line)
        if not self._writer.inbox.put_line(item):
            self.dropped += 1

    def close(self) -> None:
        """The writer writes what is queued, then closes the file (when no other
        incarnation of the runner still has it open)."""
        if not self.closed:
            self.closed = True
            self._writer.release(self)


class LogWriter:
    """The log files of one directory, written by one thread. See `open_runner_log`."""

    def __init__(
        self,
        log_dir: str,
        *,
        retire: Callable[[LogWriter], bool] = lambda writer: True,
        max_lines: int = QUEUE_LINES,
        max_chars: int = QUEUE_CHARS,
    ) -> None:
        self.log_dir = log_dir
        #: asked when idle with no open file whether to leave (the registry says)
        self._retire = retire
        self.inbox = Inbox(max_lines, max_chars)
        #: lines lost because their file could not be opened or written
        self.write_errors = 0
        #: files found removed (or replaced) while open, and made again
        self.reopened = 0
        #: set by the registry once this writer has left
        self.retired = False
        self._handles: dict[str, list[RunnerLog]] = {}  # runner id -> open incarnations
        self._files: dict[str, tuple[LogFile, int]] = {}  # writer thread only: path -> refs
        self._route_id: int | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"runner-logs {log_dir}", daemon=True
        )

    @property
    def dropped(self) -> int:
        """Lines lost: refused by the full queue, or not written."""
        return self.inbox.dropped + self.write_errors

    def path_for(self, runner_id: str) -> Path:
        return log_path(self.log_dir, runner_id)

    def start(self) -> None:
        # Supervisor lines bound to a runner reach its file through this sink. INFO, so
        # that the host's debug calls stay as cheap as its own sinks make them.
        self._route_id = logger.add(
            self.route, level="INFO", format="{message}", filter=_about_a_runner, catch=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------- producers
    def open(
        self,
        runner_id: str,
        *,
        incarnation: int,
        pid: int | Callable[[], int],
        rotation: str | None,
        retention: int | None,
        compression: str | None = None,
    ) -> RunnerLog:
        handle = RunnerLog(self, runner_id, incarnation, pid)
        if rotation is None:
            retention = compression = None  # nothing rotates: nothing to prune or pack
        self.inbox.put_control(Open(str(handle.path), rotation, retention, compression))
        self._handles.setdefault(runner_id, []).append(handle)
        return handle

    def release(self, handle: RunnerLog) -> None:
        handles = self._handles.get(handle.runner_id, [])
        if handle in handles:
            handles.remove(handle)
        if not handles:
            self._handles.pop(handle.runner_id, None)
        self.inbox.put_control(Close(str(handle.path)))

    def route(self, message: Message) -> None:
        """loguru's sink: a supervisor line bound to a runner of this directory goes to
        its file, stamped with the incarnation it was bound to and that one's pid."""
        record = message.record
        extra = record["extra"]
        handle = self._handle_for(extra["runner_id"], extra.get("incarnation"))
        if handle is None:
            return  # not a runner of this directory (or it just closed)
        text = f"{record['level'].name:<7} {record['message']}"
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            text += f" | {exc.type.__name__}: {exc.value}"
        self.inbox.put_line(
            (
                str(handle.path),
                record["time"].timestamp(),
                "supervisor",
                _int_or(extra.get("incarnation"), handle.incarnation),
                _int_or(extra.get("pid"), handle.pid),
                cut(text),
            )
        )

    def _handle_for(self, runner_id: Any, incarnation: Any) -> RunnerLog | None:
        """The open handle of that incarnation (after a replace, two are open: each
        line carries its own one's pid); a line bound to no incarnation goes with the
        runner's own (`BETWEEN_INCARNATIONS`) when one is held, else the newest."""
        handles = self._handles.get(runner_id) if isinstance(runner_id, str) else None
        if not handles:
            return None
        want = incarnation if isinstance(incarnation, int) else BETWEEN_INCARNATIONS
        for handle in reversed(handles):
            if handle.incarnation == want:
                return handle
        return handles[-1]

    def flush(self, timeout: float) -> bool:
        """Wait until what was queued before this call is written (True) or ``timeout``."""
        if self.retired or not self._thread.is_alive():
            return True
        done = threading.Event()
        self.inbox.put_control(done)
        return done.wait(timeout)

    # --------------------------------------------------------- writer thread
    def _run(self) -> None:
        stamp = Stamper()
        pending: dict[str, list[str]] = {}  # lines per file, written at the batch's end
        while True:
            items = self.inbox.take(IDLE_EXIT)
            for item in items:
                if isinstance(item, tuple):
                    path, t, stream, incarnation, pid, text = item
                    line = f"{stamp(t)} {stream:<10} inc={incarnation} pid={pid} | {text}"
                    pending.setdefault(path, []).append(line)
                    continue
                self._write(pending)  # what came before a control is written before it
                if isinstance(item, Open):
                    self._open_file(item)
                elif isinstance(item, Close):
                    self._close_file(item.path)
                else:
                    item.set()
            if pending:
                self._write(pending)
                time.sleep(LINGER)
            elif not items and not self._files and self._retire(self):
                break
        if self._route_id is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._route_id)

    def _write(self, pending: dict[str, list[str]]) -> None:
        for path, lines in pending.items():
            entry = self._files.get(path)
            if entry is None:
                self.write_errors += len(lines)  # closed already: cannot happen, but count
                continue
            file = entry[0]
            before = file.reopened
            try:
                self.write_errors += file.write(lines)
            except Exception as exc:  # noqa: BLE001 - a writer bug must not end the writer
                self.write_errors += len(lines)
                _warn(f"runner log {path}: {type(exc).__name__}: {exc} (lines are lost)")
            self.reopened += file.reopened - before
        pending.clear()

    def _open_file(self, item: Open) -> None:
        entry = self._files.get(item.path)
        if entry is not None:
            self._files[item.path] = (entry[0], entry[1] + 1)
            return
        file = LogFile(
            item.path,
            rotation=item.rotation,
            retention=item.retention,
            compression=item.compression,
            warn=_warn,
        )
        file.open()  # the file is there from the start, lines or none
        self._files[item.path] = (file, 1)

    def _close_file(self, path: str) -> None:
        entry = self._files.get(path)
        if entry is None:
            return
        file, refs = entry
        if refs > 1:
            self._files[path] = (file, refs - 1)
            return
        del self._files[path]
        file.close()


def _warn(text: str) -> None:
    # Not bound to a runner: it must not route back into the file it is about.
    logger.warning("{}", text)


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


def _about_a_runner(record: Any) -> bool:
    extra = record["extra"]
    # The runner's own lines, forwarded to the host's log, are in its file already.
    return "runner_id" in extra and not extra.get("runner_output")
