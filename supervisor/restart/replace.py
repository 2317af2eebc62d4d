"""A replacement in progress: one runner id's old incarnation handing over to a new one.

The order depends on ``policy.prespawn``. With it (room for two processes): the
new incarnation starts at once while the old one drains; without it (a one-runner
memory budget): the old one drains and stops first, then the new one starts. In
both, the old incarnation takes no new task from the moment the replacement
begins: tasks submitted meanwhile wait for the new one (``ready_wait``).

Draining: the old incarnation's in-flight tasks get ``drain_timeout`` seconds to
finish; those still running then end ``Failed`` with `drain_error` and the
runner is shut down (gracefully: Shutdown, then the usual escalation).
"""

from __future__ import annotations

import anyio

from supervisor.core.statemachine import Notifier
from supervisor.restart.incarnation import Incarnation


def drain_error(runner_id: str, reason: str, timeout: float) -> str:
    return (
        f"runner {runner_id} was replaced ({reason}); the task did not finish within "
        f"the drain timeout of {timeout:g}s"
    )


class Replacement:
    """One replacement of one runner id; callers that ask while it runs join it."""

    __slots__ = ("done", "drain_timeout", "error", "old", "overlapped", "reason")

    def __init__(self, old: Incarnation, reason: str, drain_timeout: float) -> None:
        self.old = old
        self.reason = reason
        self.drain_timeout = drain_timeout
        #: the new incarnation was started before the old one ended (prespawn)
        self.overlapped = False
        self.done = anyio.Event()
        #: why no new incarnation became Ready, once ``done``; None: it did
        self.error: BaseException | None = None

    async def wait(self) -> None:
        """Until the old incarnation has ended and a new one is Ready (or never will be)."""
        await self.done.wait()
        if self.error is not None:
            raise self.error

    async def drain(self, changed: Notifier) -> bool:
        """Wait for the old incarnation's host tasks to end, up to ``drain_timeout``.

        On time-out its remaining tasks are marked to end ``Failed`` with `drain_error`;
        returns False then. ``changed`` fires on each of its events."""
        old = self.old
        with anyio.move_on_after(self.drain_timeout):
            await changed.wait_until(lambda: old.drained)
            return True
        if not old.drained:
            old.stop(drain_error(old.runner_id, self.reason, self.drain_timeout))
        return old.drained


__all__ = ["Replacement", "drain_error"]
