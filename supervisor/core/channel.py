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

from supervisor.ipc.wire import HEADER, LARGE_HEADER, WireError, encode_frame, from_wire

_READ_SIZE = 256 * 1024

__all__ = ["ChannelReader", "ChannelWriter", "FrameDecoder", "encode_frame"]


class FrameDecoder:
    """Incremental decoder of ``Connection.send`` frames."""

    __slots__ = ("_need", "_rest")

    def __init__(self) -> None:
        self._rest = bytearray()  # an incomplete frame carried over to the next read
        self._need = 0  # bytes that frame needs in all, when known

    @property
    def buffered(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes) -> list[Any]:
        """The messages completed by ``data``; `WireError` if the stream is corrupt."""
        if self._rest:
            self._rest += data  # amortised: a big frame arrives in many reads
            if len(self._rest) < self._need:
                return []
            data = bytes(self._rest)
            self._rest.clear()
        end = len(data)
        pos = 0
        out: list[Any] = []
        append = out.append
        loads = pickle.loads
        unpack = HEADER.unpack_from
        try:  # free unless something raises: the loop is the per-token hot path
            while end - pos >= 4:
                (n,) = unpack(data, pos)
                start = pos + 4
                if n < 0:
                    if n != -1:
                        raise WireError(f"negative frame length {n}")
                    if end - start < 8:
                        break
                    (n,) = LARGE_HEADER.unpack_from(data, start)
                    start += 8
                stop = start + n
                if stop > end:
                    break
                append(from_wire(loads(data[start:stop])))
                pos = stop
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"corrupt frame: {type(exc).__name__}: {exc}") from exc
        if pos < end:
            self._rest += data[pos:]
            self._need = 0
            if end - pos >= 4:
                (n,) = unpack(data, pos)
                self._need = (n + 4) if n >= 0 else 12
        return out


class ChannelReader:
    """The parent's read end of the runner's event pipe."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._decoder = FrameDecoder()
        self.eof = False
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def read_available(self) -> list[Any]:
        """Decode whatever is in the pipe now, without blocking. Sets ``eof``.

        A corrupt stream raises `WireError` once, then reads as ended: nothing after
        a bad frame can be decoded, and a final drain must not raise again."""
        out: list[Any] = []
        while not self.eof and not self.closed:
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
            except WireError:
                self.eof = True
                raise
            if len(data) < _READ_SIZE:
                break
        return out

    async def receive(self) -> list[Any]:
        """Wait for at least one message; an empty list means EOF."""
        while True:
            messages = self.read_available()
            if messages or self.eof or self.closed:
                return messages
            await anyio.wait_readable(self._fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            anyio.notify_closing(self._fd)
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
