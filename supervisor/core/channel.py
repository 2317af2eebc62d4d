"""Non-blocking, framed pipe ends for the parent side.

The runner speaks plain ``multiprocessing.Connection`` (4-byte big-endian length, then
a pickle). The parent never calls a blocking ``recv``/``send`` on them: it reads the
fd when the loop says it is readable and frames the bytes itself, so a runner frozen
half-way through a message can never stall the event loop, and a burst of events
costs one wake-up and one ``read`` per 256 KiB rather than one thread hop per event.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from typing import Any

import anyio

from supervisor.core.readable import ReadableWatch
from supervisor.ipc.wire import HEADER, LARGE_HEADER, MAX_FRAME_BYTES, encode_frame, from_wire

_READ_SIZE = 256 * 1024

__all__ = ["ChannelReader", "ChannelWriter", "FrameDecoder", "FrameError", "encode_frame"]


class FrameError(ValueError):
    """The runner's event stream cannot be decoded (bad length, undecodable pickle).

    ``decoded``: the messages of the same read that came before the bad frame, in
    order; they are as good as any. The stream has no resync point after a bad
    frame, so the decoder refuses everything after it.
    """

    def __init__(self, message: str, decoded: list[Any] | None = None) -> None:
        super().__init__(message)
        self.decoded: list[Any] = decoded if decoded is not None else []


class FrameDecoder:
    """Incremental decoder of ``Connection.send`` frames.

    Any bytes in give messages out or one `FrameError`, never another exception;
    a frame's length is checked against ``max_frame`` as soon as its header is in,
    so at most one frame's worth (plus its header) is ever buffered.
    """

    __slots__ = ("_error", "_need", "_rest", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.max_frame = max_frame
        self._rest = bytearray()  # an incomplete frame carried over to the next read
        self._need = 0  # bytes that frame needs in all, when known
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes) -> list[Any]:
        if self._error is not None:
            raise FrameError(f"event stream already broken: {self._error}")
        if self._rest:
            self._rest += data  # amortised: a big frame arrives in many reads
            if len(self._rest) < self._need:
                return []
            data = bytes(self._rest)
            self._rest.clear()
        end = len(data)
        pos = 0
        need = 4  # bytes the frame at ``pos`` needs in all, as far as is known (set on break)
        out: list[Any] = []
        append = out.append
        loads = pickle.loads
        unpack = HEADER.unpack_from
        max_frame = self.max_frame
        while end - pos >= 4:
            (n,) = unpack(data, pos)
            start = pos + 4
            if n < 0:
                if n != -1:
                    raise self._fail(f"negative frame length {n}", out)
                if end - start < 8:
                    need = 12
                    break
                (n,) = LARGE_HEADER.unpack_from(data, start)
                start += 8
            if n > max_frame:
                raise self._fail(f"frame of {n} bytes exceeds the {max_frame} limit", out)
            stop = start + n
            if stop > end:
                need = stop - pos
                break
            try:
                append(from_wire(loads(data[start:stop])))
            except Exception as exc:  # unpickling (a class of its choice) can raise anything
                raise self._fail(f"undecodable frame of {n} bytes: {_describe(exc)}", out) from exc
            pos = stop
        if pos < end:
            self._rest += data[pos:]
            self._need = need
        return out

    def _fail(self, message: str, decoded: list[Any]) -> FrameError:
        self._error = message
        self._rest = bytearray()
        return FrameError(message, decoded)


def _describe(exc: BaseException) -> str:
    """One short line: the message becomes part of a RunnerFailed."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:197] + "..."


class ChannelReader:
    """The parent's read end of the runner's event pipe."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._decoder = FrameDecoder()
        self.eof = False
        self.closed = False
        #: Set when the runner wrote something undecodable; nothing is read after it.
        self.error: FrameError | None = None
        # The last read found the pipe empty: the next `receive` waits before reading
        # (a read now would only say EAGAIN: a syscall and an exception per wake-up).
        self._drained = False
        self._readable = ReadableWatch(fd)

    def fileno(self) -> int:
        return self._fd

    def read_available(self) -> list[Any]:
        """Decode whatever is in the pipe now, without blocking. Sets ``eof``.

        Never raises: on undecodable input it returns the messages before the bad
        frame and sets `error` (then returns nothing more); `receive` raises it.
        """
        out: list[Any] = []
        while not self.eof and not self.closed and self.error is None:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            try:
                out.extend(self._decoder.feed(data))
            except FrameError as exc:
                out.extend(exc.decoded)
                self.error = exc
                break
            if len(data) < _READ_SIZE:
                self._drained = True
                break
        return out

    async def receive(self) -> list[Any]:
        """Wait for at least one message; an empty list means EOF.

        Raises `FrameError` once the messages before an undecodable frame are out.
        """
        while True:
            if self._drained:
                self._drained = False
                await self._readable.wait()
            messages = self.read_available()
            if messages or self.eof or self.closed:
                return messages
            if self.error is not None:
                raise self.error
            self._drained = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._readable.close()
            os.close(self._fd)


class ChannelWriter:
    """The parent's write end of the task pipe, with an outbox flushed by a task.

    ``put`` never blocks: a runner that stops reading cannot stall the caller; the
    flush task waits for the pipe to drain instead.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._outbox: deque[memoryview] = deque()
        self._wakeup = anyio.Event()
        self.broken = False
        self.closed = False

    def put(self, obj: object) -> None:
        if self.broken or self.closed:
            return
        try:
            frame = encode_frame(obj)
        except Exception as exc:
            raise TypeError(f"cannot send {type(obj).__name__} to the runner: {exc}") from exc
        self._outbox.append(memoryview(frame))
        self._wakeup.set()

    async def flush_forever(self) -> None:
        """Write the outbox as the pipe accepts it. Returns if the pipe breaks."""
        while not self.broken and not self.closed:
            if not self._outbox:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            chunk = self._outbox[0]
            try:
                written = os.write(self._fd, chunk)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError:  # EPIPE: the runner is gone; the exit watch reports it
                self.broken = True
                self._outbox.clear()
                return
            if written == len(chunk):
                self._outbox.popleft()
            else:
                self._outbox[0] = chunk[written:]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._outbox.clear()
            self._wakeup.set()
            anyio.notify_closing(self._fd)
            os.close(self._fd)
