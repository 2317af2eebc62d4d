"""The host's event stream, as the supervisors write to it."""

from __future__ import annotations

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from loguru import logger

from supervisor.protocol import BaseEvent


class HostStream:
    """Sends events to the host; a host that stopped listening is not an error.

    A closed or broken receiver turns sending into a no-op (logged once): the
    supervisor still has to finish its job, reap the runner and release waiters.
    """

    __slots__ = ("_runner_id", "_sender", "gone")

    def __init__(self, sender: MemoryObjectSendStream[BaseEvent], runner_id: str) -> None:
        self._sender = sender
        self._runner_id = runner_id
        self.gone = False

    async def send(self, event: BaseEvent) -> None:
        """Send, waiting for room if the host's stream is bounded and full."""
        if self.gone:
            return
        try:
            self._sender.send_nowait(event)
        except anyio.WouldBlock:
            try:
                await self._sender.send(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._lose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._lose()

    def try_send(self, event: BaseEvent) -> bool:
        """Send without waiting; False if the host's bounded stream is full (then await
        `send`). A host that is gone counts as sent."""
        if self.gone:
            return True
        try:
            self._sender.send_nowait(event)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._lose()
        return True

    def send_nowait(self, event: BaseEvent) -> None:
        """Best effort, never waits: for paths that are being cancelled."""
        if self.gone:
            return
        try:
            self._sender.send_nowait(event)
        except anyio.WouldBlock:
            logger.warning("runner {}: event stream full; dropped {!r}", self._runner_id, event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._lose()

    def _lose(self) -> None:
        if not self.gone:
            self.gone = True
            logger.warning("runner {}: event receiver closed; dropping events", self._runner_id)
