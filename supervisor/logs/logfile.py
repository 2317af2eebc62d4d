"""One runner's log file, appended to by the writer thread: rotated, pruned, packed,
reopened when someone removed it, and every line it could not write counted.

Only the writer thread calls this; every call may block on the disk.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import time
from collections.abc import Callable

from supervisor.logs.lines import encoded, parse_stamp
from supervisor.logs.rotation import Rotation, compress, parse_rotation

#: Bytes written with one system call (rotation is checked between them).
CHUNK_BYTES = 64 * 1024
#: A file that cannot be opened is tried again after this many seconds, not per line.
RETRY_OPEN = 1.0

Warn = Callable[[str], None]


class LogFile:
    """``path``, open for appending. `write` returns how many lines were lost."""

    def __init__(
        self,
        path: str,
        *,
        rotation: str | None,
        retention: int | None,
        compression: str | None,
        warn: Warn,
    ) -> None:
        self.path = path
        #: times the file was found removed (or replaced) and made again
        self.reopened = 0
        self._rotation: Rotation | None = None if rotation is None else parse_rotation(rotation)
        self._retention = retention
        self._compression = compression
        self._warn = warn
        self._fd: int | None = None
        self._identity = (0, 0)  # (device, inode) of what _fd has open
        self._size = 0
        self._due: float | None = None  # when the file is due for rotation by time
        self._retry_at = 0.0
        self._failing = False  # a write failed and has not succeeded since (warned once)
        self._torn = False  # the last write stopped inside a line

    def open(self) -> bool:
        """Open (or make) the file now; False if it cannot be (warned, retried later)."""
        return self._ready()

    # ------------------------------------------------------------------ writing
    def write(self, lines: list[str]) -> int:
        """Append ``lines``; the number of them lost (the file could not be opened or
        written: a full disk, a removed mount, no permission)."""
        if not self._ready():
            return len(lines)
        lost = 0
        chunk: list[bytes] = []
        count = size = 0
        for line in lines:
            data = encoded(line)
            if size and size + len(data) > CHUNK_BYTES:
                lost += self._put(b"".join(chunk), count)
                chunk, count, size = [], 0, 0
            chunk.append(data)
            count += 1
            size += len(data)
        if chunk:
            lost += self._put(b"".join(chunk), count)
        return lost

    def _put(self, data: bytes, count: int) -> int:
        fd = self._fd
        if fd is None:
            return count
        if self._due_for_rotation(len(data)):
            self._rotate()
            if self._fd is None:
                return count
            fd = self._fd
        if self._torn:
            with contextlib.suppress(OSError):
                self._size += os.write(fd, b"\n")  # the torn line ends; the next starts clean
                self._torn = False
        written = 0
        view = memoryview(data)
        try:
            while written < len(data):
                written += os.write(fd, view[written:])
        except OSError as exc:
            self._size += written
            self._torn = written > 0 and data[written - 1] != 0x0A
            if not self._failing:
                self._failing = True
                self._warn(f"runner log {self.path}: {type(exc).__name__}: {exc} (lines are lost)")
            return data.count(b"\n", written)  # the lines whose end did not reach the disk
        self._size += written
        if self._failing:
            self._failing = False
            self._warn(f"runner log {self.path}: writing again")
        return 0

    # --------------------------------------------------------------- the file
    def _ready(self) -> bool:
        """An open file at ``path``: opened now, or made again if it was removed."""
        if self._fd is None:
            if time.monotonic() < self._retry_at:
                return False
            return self._open()
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        except OSError:
            return True  # cannot tell: keep writing to what is open
        if now is not None and (now.st_dev, now.st_ino) == self._identity:
            return True
        self._close_fd()
        if not self._open():
            return False
        self.reopened += 1
        self._warn(
            f"runner log {self.path} was removed or replaced while open: "
            f"{'made again' if now is None else 'writing to the new file'}"
        )
        return True

    def _open(self) -> bool:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._retry_at = time.monotonic() + RETRY_OPEN
            if not self._failing:
                self._failing = True
                self._warn(f"runner log {self.path}: {type(exc).__name__}: {exc} (lines are lost)")
            return False
        st = os.fstat(fd)
        self._fd, self._identity, self._size = fd, (st.st_dev, st.st_ino), st.st_size
        self._torn = False
        started = time.time()
        if self._rotation is not None and self._rotation.size is None and st.st_size:
            started = self._started() or st.st_mtime
        self._due = None if self._rotation is None else self._rotation.next_after(started)
        return True

    def _started(self) -> float | None:
        """When the file already there was started: its first line's stamp."""
        try:
            with open(self.path, "rb") as f:
                return parse_stamp(f.read(64))
        except OSError:
            return None

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()

    # --------------------------------------------------------------- rotation
    def _due_for_rotation(self, incoming: int) -> bool:
        """Checked per chunk, as loguru checks per message: a file passes its size by
        at most one chunk, and one batch rotates a file at most once per chunk (a
        follower, ``logs -f``, keeps up)."""
        rotation = self._rotation
        if rotation is None:
            return False
        if rotation.size is not None:
            return self._size > 0 and self._size + incoming > rotation.size
        return self._due is not None and time.time() >= self._due

    def _rotate(self) -> None:
        """The file gets its rotation time in its name (``NAME.<time>.log``), is packed
        if asked, the oldest beyond the retention count go, and a new file starts."""
        self._close_fd()
        stem = self.path[: -len(".log")] if self.path.endswith(".log") else self.path
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        target = f"{stem}.{stamp}.log"
        n = 1
        while os.path.lexists(target):
            n += 1
            target = f"{stem}.{stamp}.{n}.log"
        try:
            os.rename(self.path, target)
            if self._compression is not None:
                compress(target, self._compression)
            self._prune(stem)
        except OSError as exc:
            self._warn(f"runner log {self.path}: rotation: {type(exc).__name__}: {exc}")
        self._open()

    def _prune(self, stem: str) -> None:
        if self._retention is None:
            return
        old = []
        for name in glob.glob(glob.escape(stem) + ".*.log*"):
            with contextlib.suppress(OSError):
                old.append((os.stat(name).st_mtime_ns, name))
        old.sort()
        # the retention count includes the file being written
        for _, name in old[: max(len(old) - (self._retention - 1), 0)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
