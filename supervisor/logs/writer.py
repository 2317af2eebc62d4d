"""The writer behind `supervisor.logs.files`: one bounded inbox and one thread per log
directory, writing each runner's lines through its own loguru file sink.

Nothing here is called from the event loop except `RunnerLog.write` and `close`, which
only queue; everything that touches the disk runs on the writer thread.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import importlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from loguru import logger

if TYPE_CHECKING:
    from loguru import Logger, Message

Stream = Literal["stdout", "stderr", "output", "supervisor"]

#: Longest line kept; the rest is cut off.
MAX_LINE_CHARS = 16 * 1024
TRUNCATED = " [... line truncated]"
#: Lines waiting for the writer, at most (and at most QUEUE_CHARS characters).
QUEUE_LINES = 10_000
QUEUE_CHARS = 8 * 2**20
#: A writer with no open file exits after this many idle seconds.
IDLE_EXIT = 1.0
#: After writing, the writer waits this long for more lines: it wakes (and takes the
#: GIL from the event loop) a few times a second rather than once per line.
LINGER = 0.05
#: Lines of one file are written as one loguru message of up to this many characters
#: (loguru's cost is per message; rotation is checked per message).
CHUNK_CHARS = 64 * 1024

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def log_file_name(runner_id: str) -> str:
    """``<runner id>.log``, made safe for a file name.

    Only letters, digits, ``_`` and ``-`` survive, so that loguru's retention, which
    prunes ``NAME.*.log``, can never take another runner's files; an id that had to
    change gets a short hash of the original, so two ids never share a file.
    """
    safe = _UNSAFE.sub("_", runner_id)[:120]
    if safe != runner_id or not safe:
        safe += "-" + hashlib.sha1(runner_id.encode("utf-8", "replace")).hexdigest()[:8]
    return safe + ".log"


def log_path(log_dir: str | os.PathLike[str], runner_id: str) -> Path:
    return Path(log_dir) / log_file_name(runner_id)


def _independent_logger() -> Logger:
    """A loguru logger with handlers of its own, built the way loguru builds its one.

    Runner lines must reach only their file: on the global logger they would pass
    through the host's sinks too, and a file sink's filter would lower the level the
    host's debug calls are cut off at. loguru's documented way to another logger,
    ``copy.deepcopy(logger)``, fails while the host has a stream sink.
    """
    internals = importlib.import_module("loguru._logger")
    return cast(
        "Logger",
        internals.Logger(
            core=internals.Core(),
            exception=None,
            depth=0,
            record=False,
            lazy=False,
            colors=False,
            raw=False,
            capture=True,
            patchers=[],
            extra={},
        ),
    )


_NON_POSITIVE = re.compile(r"^\s*(?:-|0+(?:\.0*)?\s*[A-Za-z])")


@functools.lru_cache(maxsize=64)
def check_file_options(rotation: str | None, compression: str | None) -> None:
    """`ValueError` unless loguru accepts ``rotation`` and ``compression``."""
    for name, value in (("rotation", rotation), ("compression", compression)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"log {name} must be a string, got {type(value).__name__}")
    if rotation is not None and _NON_POSITIVE.match(rotation):
        raise ValueError(f"log rotation must be positive, got {rotation!r}")
    try:
        probe = _independent_logger()
        probe.remove(probe.add(os.devnull, rotation=rotation, compression=compression, delay=True))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{exc} (log rotation: a size like '50 MB', an "
            "interval like '1 day' or a time like '00:00'; log compression: gz, bz2, xz, zip, "
            "tar.gz, ...)"
        ) from None


class _Stamper:
    """ISO 8601 local time with milliseconds; the date, time and offset part is made
    once per second."""

    __slots__ = ("_head", "_second", "_zone")

    def __init__(self) -> None:
        self._second = -1
        self._head = self._zone = ""

    def __call__(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            local = datetime.datetime.fromtimestamp(second).astimezone()
            self._head = local.strftime("%Y-%m-%dT%H:%M:%S")
            self._zone = local.isoformat()[19:]  # +00:00
            self._second = second
        return f"{self._head}.{int((t - second) * 1000):03d}{self._zone}"


# Queue items: a line, or a control for the writer thread (never dropped).
_Line = tuple[str, float, str, int, int, str]  # path, time, stream, incarnation, pid, text


class _Open:
    __slots__ = ("compression", "path", "retention", "rotation")

    def __init__(
        self, path: str, rotation: str | None, retention: int | None, compression: str | None
    ) -> None:
        self.path = path
        self.rotation = rotation
        self.retention = retention
        self.compression = compression


class _Close:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_Item = _Line | _Open | _Close | threading.Event


class _Inbox:
    """A bounded queue of lines, plus control items that do not count against it."""

    def __init__(self, max_lines: int, max_chars: int) -> None:
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._lines = 0
        self._chars = 0
        self._max_lines = max_lines
        self._max_chars = max_chars
        self.dropped = 0

    def put_line(self, item: _Line) -> bool:
        size = len(item[5])
        with self._cond:
            if self._lines >= self._max_lines or self._chars + size > self._max_chars:
                self.dropped += 1
                return False
            self._items.append(item)
            self._lines += 1
            self._chars += size
            self._cond.notify()
        return True

    def put_control(self, item: _Item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout: float) -> list[_Item]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._lines = self._chars = 0
            return items

    def empty(self) -> bool:
        with self._cond:
            return not self._items


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
            line = line[:MAX_LINE_CHARS] + TRUNCATED
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
        self.inbox = _Inbox(max_lines, max_chars)
        self.write_errors = 0
        self._handles: dict[str, list[RunnerLog]] = {}  # runner id -> open incarnations
        # writer thread only: path -> (its logger, None if the file failed to open; refs)
        self._sinks: dict[str, tuple[Logger | None, int]] = {}
        self._warned: set[str] = set()
        self._route_id: int | None = None
        self._retired = False
        self._thread = threading.Thread(
            target=self._run, name=f"runner-logs {log_dir}", daemon=True
        )

    @property
    def dropped(self) -> int:
        return self.inbox.dropped

    def path_for(self, runner_id: str) -> Path:
        return log_path(self.log_dir, runner_id)

    def start(self) -> None:
        # Supervisor lines bound to a runner reach its file through this sink. INFO, so
        # that the host's debug calls stay as cheap as its own sinks make them.
        self._route_id = logger.add(
            self._route, level="INFO", format="{message}", filter=_about_a_runner, catch=True
        )
        self._thread.start()

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
        self.inbox.put_control(_Open(str(handle.path), rotation, retention, compression))
        self._handles.setdefault(runner_id, []).append(handle)
        return handle

    def release(self, handle: RunnerLog) -> None:
        handles = self._handles.get(handle.runner_id, [])
        if handle in handles:
            handles.remove(handle)
        if not handles:
            self._handles.pop(handle.runner_id, None)
        self.inbox.put_control(_Close(str(handle.path)))

    def _route(self, message: Message) -> None:
        record = message.record
        extra = record["extra"]
        try:
            handle = self._handles[extra["runner_id"]][-1]
        except (KeyError, IndexError):
            return  # not a runner of this directory (or it just closed)
        text = f"{record['level'].name:<7} {record['message']}"
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            text += f" | {exc.type.__name__}: {exc.value}"
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + TRUNCATED
        self.inbox.put_line(
            (
                str(handle.path),
                record["time"].timestamp(),
                "supervisor",
                _int_or(extra.get("incarnation"), handle.incarnation),
                _int_or(extra.get("pid"), handle.pid),
                text,
            )
        )

    def flush(self, timeout: float) -> bool:
        """Wait until what was queued before this call is written (True) or ``timeout``."""
        if self._retired or not self._thread.is_alive():
            return True
        done = threading.Event()
        self.inbox.put_control(done)
        return done.wait(timeout)

    # --------------------------------------------------------- writer thread
    def _run(self) -> None:
        stamp = _Stamper()
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
                if isinstance(item, _Open):
                    self._open_sink(item)
                elif isinstance(item, _Close):
                    self._close_sink(item.path)
                else:
                    item.set()
            if pending:
                self._write(pending)
                time.sleep(LINGER)
            elif not items and not self._sinks and self._retire(self):
                break
        if self._route_id is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._route_id)

    def _write(self, pending: dict[str, list[str]]) -> None:
        for path, lines in pending.items():
            own = self._sinks.get(path, (None, 0))[0]
            if own is None:
                self.write_errors += len(lines)  # its file could not be opened (warned once)
                continue
            try:
                for chunk in _chunks(lines):
                    own.info(chunk)
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the writer
                self.write_errors += 1
                self._warn_once(path, exc)
        pending.clear()

    def _open_sink(self, item: _Open) -> None:
        entry = self._sinks.get(item.path)
        if entry is not None:
            self._sinks[item.path] = (entry[0], entry[1] + 1)
            return
        own: Logger | None = _independent_logger()
        assert own is not None
        try:
            own.add(
                # loguru formats the path with {time}: braces in the directory are literal
                item.path.replace("{", "{{").replace("}", "}}"),
                format="{message}",
                level=0,
                colorize=False,
                catch=False,
                encoding="utf-8",
                rotation=item.rotation,
                # loguru keeps that many old files besides the one being written
                retention=None if item.retention is None else max(item.retention - 1, 0),
                compression=item.compression,
            )
        except Exception as exc:  # noqa: BLE001 - no file is lost lines, never a crash
            self._warn_once(item.path, exc)
            own = None
        self._sinks[item.path] = (own, 1)

    def _close_sink(self, path: str) -> None:
        entry = self._sinks.get(path)
        if entry is None:
            return
        own, refs = entry
        if refs > 1:
            self._sinks[path] = (own, refs - 1)
            return
        del self._sinks[path]
        try:
            if own is not None:
                own.remove()  # flushes and closes the file
        except Exception as exc:  # noqa: BLE001 - a failed close is a warning, not a crash
            self.write_errors += 1
            self._warn_once(path, exc)
        self._warned.discard(path)

    def _warn_once(self, path: str, exc: BaseException) -> None:
        if path not in self._warned:
            self._warned.add(path)
            logger.warning("runner log {}: {}: {} (lines are lost)", path, type(exc).__name__, exc)


def _chunks(lines: list[str]) -> list[str]:
    """The lines joined into messages of at most about `CHUNK_CHARS` characters."""
    out: list[str] = []
    start = size = 0
    for i, line in enumerate(lines):
        if size and size + len(line) > CHUNK_CHARS:
            out.append("\n".join(lines[start:i]))
            start, size = i, 0
        size += len(line) + 1
    out.append("\n".join(lines[start:]))
    return out


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


def _about_a_runner(record: Any) -> bool:
    extra = record["extra"]
    # The runner's own lines, forwarded to the host's log, are in its file already.
    return "runner_id" in extra and not extra.get("runner_output")
