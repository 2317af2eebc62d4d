"""Waiting for a runner's pipe to be readable, once per wake-up, cheaply.

``anyio.wait_readable`` registers the fd with the loop's selector and unregisters it on
every wake-up: on asyncio that is two ``epoll_ctl`` calls, a future and anyio's
bookkeeping, about 18 µs of CPU per wake-up against 5 µs for a registration that stays
(development machine, docs/performance.md). A streaming runner wakes its pipe's reader
once per token, so that difference is most of the host's cost per event, and of its
latency. On asyncio the fd therefore stays registered across waits; elsewhere (trio,
whose own wait is already cheap) `anyio.wait_readable` is used as is.
"""

from __future__ import annotations

import asyncio

import anyio


class _AsyncioWatch:
    """The fd stays registered while someone waits on it each time it fires; when it
    fires with nobody waiting (the reader is busy), it is unregistered until the next
    wait, so a level-triggered fd never spins the loop."""

    __slots__ = ("_fd", "_loop", "_registered", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._registered = False
        self._waiter: asyncio.Future[None] | None = None

    def _fire(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._loop.remove_reader(self._fd)
            self._registered = False
            return
        self._waiter = None
        if not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        if self._waiter is not None:
            raise anyio.BusyResourceError("reading from")
        if not self._registered:
            self._loop.add_reader(self._fd, self._fire)
            self._registered = True
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:  # cancelled, or closed: no wake-up consumed it
                self._waiter = None

    def close(self) -> None:
        if self._registered:
            self._registered = False
            self._loop.remove_reader(self._fd)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(anyio.ClosedResourceError())


def _asyncio_watch(fd: int) -> _AsyncioWatch | None:
    """A watch when running in an asyncio task; None elsewhere (trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if asyncio.current_task(loop) is None:  # e.g. trio as a guest of an asyncio loop
        return None
    return _AsyncioWatch(loop, fd)


class ReadableWatch:
    """``await wait()`` until ``fd`` is readable (or at EOF), as often as needed, by one
    task at a time. `close` must be called before the fd is closed: it unregisters the
    fd and wakes a waiter with `anyio.ClosedResourceError`."""

    __slots__ = ("_asyncio", "_chosen", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._asyncio: _AsyncioWatch | None = None
        self._chosen = False  # the backend is known at the first wait, in the loop

    async def wait(self) -> None:
        if not self._chosen:
            self._chosen = True
            self._asyncio = _asyncio_watch(self._fd)
        if self._asyncio is not None:
            await self._asyncio.wait()
        else:
            await anyio.wait_readable(self._fd)

    def close(self) -> None:
        if self._asyncio is not None:
            self._asyncio.close()
        anyio.notify_closing(self._fd)


__all__ = ["ReadableWatch"]
