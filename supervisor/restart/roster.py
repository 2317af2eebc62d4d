"""The live incarnations of one runner id, and the hand-over between them.

Usually one incarnation lives at a time. A replacement (see
`supervisor.restart.replace`) makes two: the *current* one, which takes tasks
once Ready and speaks for the runner id, and *retiring* ones that drain and
stop. Commands that must reach every runner process of the id (cancel a task,
shut down, kill, stop with the group) go through here.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc
from loguru import logger

from supervisor.core.statemachine import Notifier
from supervisor.errors import SupervisorError
from supervisor.protocol import BaseTask
from supervisor.restart.incarnation import Incarnation
from supervisor.restart.replace import Replacement


class Roster:
    """The current incarnation, the retiring ones, and the one replacement under way."""

    def __init__(self, runner_id: str, *, changed: Notifier, wake: Notifier) -> None:
        self.runner_id = runner_id
        self._changed = changed  # every layer's wake-up
        self._wake = wake  # the restart loop's: an incarnation ended, a hand-over
        self.current: Incarnation | None = None
        self.retiring: list[Incarnation] = []
        self.replacement: Replacement | None = None
        #: the owner's task group while it runs (drains and kill timers run there)
        self.tg: anyio.abc.TaskGroup | None = None
        self._numbers = 0

    # ------------------------------------------------------------------ views
    def live(self) -> list[Incarnation]:
        live = list(self.retiring)
        if self.current is not None:
            live.append(self.current)
        return live

    def live_numbers(self) -> list[int]:
        """Numbers of the incarnations whose process has not ended yet."""
        return [inc.number for inc in self.live() if not inc.settled.is_set()]

    def pending(self) -> dict[str, BaseTask]:
        out: dict[str, BaseTask] = {}
        for inc in self.live():
            if inc.sup is not None:
                out.update(inc.sup.pending)
        return out

    def in_progress(self) -> dict[str, BaseTask]:
        out: dict[str, BaseTask] = {}
        for inc in self.live():
            if inc.sup is not None:
                out.update(inc.sup.in_progress)
        return out

    # ------------------------------------------------------------- lifecycle
    def next(self) -> Incarnation:
        """A new current incarnation; the previous one, if still running, retires."""
        self._numbers += 1
        inc = Incarnation(self._numbers, self.runner_id)
        previous = self.current
        if previous is not None and not previous.settled.is_set():
            self.retiring.append(previous)
        self.current = inc
        return inc

    def ended(self, inc: Incarnation) -> None:
        if inc in self.retiring:
            self.retiring.remove(inc)

    # -------------------------------------------------------------- commands
    def cancel(self, task_id: str) -> None:
        for inc in self.live():
            sup = inc.sup
            if sup is not None and not sup.finished:
                sup.cancel_task(task_id)

    def shutdown(self) -> None:
        for inc in self.live():
            if inc.sup is not None and not inc.sup.finished:
                inc.sup.shutdown()

    def kill(self) -> None:
        for inc in self.live():
            if inc.sup is not None:
                inc.sup.kill()

    def stop(self, cause: str, grace: float) -> None:
        """End every live incarnation now: Shutdown, SIGKILL after ``grace`` seconds;
        their unfinished host tasks fail with ``cause``."""
        for inc in self.live():
            inc.stop(cause)
            sup = inc.sup
            if sup is not None and not sup.finished:
                sup.shutdown()
                if self.tg is not None:
                    self.tg.start_soon(self._kill_after, inc, grace)
        self._changed.notify()

    async def _kill_after(self, inc: Incarnation, grace: float) -> None:
        with anyio.move_on_after(grace):
            await inc.settled.wait()
        if not inc.settled.is_set() and inc.sup is not None:
            logger.warning("runner {}: not stopped within {:g}s; killing it", self.runner_id, grace)
            inc.sup.kill()

    async def watch_rss(
        self, interval: float, due: Callable[[Incarnation], None], scope: anyio.CancelScope
    ) -> None:
        """Feed the current incarnation's RSS readings to its recycle counter; call
        ``due(inc)`` when it says the runner is due (``policy.max_rss``)."""
        with scope:
            while True:
                await anyio.sleep(interval)
                inc = self.current
                if inc is None or inc.recycle is None or inc.sup is None or not inc.takes_tasks:
                    continue
                sample = inc.sup.resources
                if sample is not None and inc.recycle.rss_sample(sample.when, sample.rss):
                    due(inc)

    # ------------------------------------------------------------ replacing
    def hands_over(self, inc: Incarnation, prespawn: bool) -> bool:
        """The loop should start ``inc``'s successor now, while ``inc`` drains."""
        repl = self.replacement
        return prespawn and repl is not None and repl.old is inc and not repl.overlapped

    def begin_replace(
        self,
        reason: str,
        drain_timeout: float,
        *,
        still_open: Callable[[], bool],
        closed_error: Callable[[], SupervisorError],
    ) -> Replacement | None:
        """Retire the current incarnation and start replacing it, or join the
        replacement under way. None when no Ready incarnation is there to replace.

        ``still_open()``: a new incarnation may still come; ``closed_error()``: what
        the callers are told when none does."""
        if self.replacement is not None:
            return self.replacement
        inc = self.current
        if self.tg is None or inc is None or not inc.takes_tasks or inc.decision is not None:
            return None
        repl = self.replacement = Replacement(inc, reason, drain_timeout)
        inc.retire(reason)
        logger.info("runner {}: replacing incarnation {} ({})", self.runner_id, inc.number, reason)
        self.tg.start_soon(self._carry_out, repl, still_open, closed_error)
        self._wake.notify()
        self._changed.notify()
        return repl

    async def _carry_out(
        self,
        repl: Replacement,
        still_open: Callable[[], bool],
        closed_error: Callable[[], SupervisorError],
    ) -> None:
        old = repl.old
        try:
            await repl.drain(self._changed)
            if old.sup is not None and not old.sup.finished:
                old.sup.shutdown()
            await old.settled.wait()
            await self._changed.wait_until(lambda: self.replaced(old) or not still_open())
            if not self.replaced(old):
                repl.error = closed_error()
        finally:
            if self.replacement is repl:
                self.replacement = None
            repl.done.set()

    def replaced(self, old: Incarnation) -> bool:
        """A newer incarnation than ``old`` reached Ready."""
        inc = self.current
        return inc is not None and inc.number > old.number and inc.ready_at is not None


__all__ = ["Roster"]
