"""Starting runner processes for the restarting layer, and the prespawned spare.

Every runner process is a one-shot `RunnerSupervisor` run in the launcher's task
group. Its events queue until the restarting layer adopts it as an incarnation;
a spare (``policy.prespawn``) is one started ahead of need and left Idle, so
that a restart skips interpreter start-up and imports.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.runner_supervisor import RunnerSupervisor
from supervisor.core.statemachine import Notifier
from supervisor.protocol import BaseEvent, RunnerFailed

#: After a spare could not be started, wait this long before trying again.
_SPARE_RETRY = 1.0


class Launched:
    """A started runner process, watched; its events wait in ``recv`` until adopted."""

    __slots__ = ("adopted", "done", "recv", "sup")

    def __init__(self, sup: RunnerSupervisor, recv: MemoryObjectReceiveStream[BaseEvent]) -> None:
        self.sup = sup
        self.recv = recv
        #: its supervisor's run() returned: the process is reaped
        self.done = anyio.Event()
        self.adopted = False


class Launcher:
    """Spawns and watches one runner id's processes; keeps a spare if asked to."""

    def __init__(
        self, *, spec: RunnerSpec, config: SupervisorConfig, runner_id: str, changed: Notifier
    ) -> None:
        self.spec = spec
        self.config = config
        self.runner_id = runner_id
        self._changed = changed  # told when a process ends
        self._tg: anyio.abc.TaskGroup | None = None
        self._spare: Launched | None = None
        self._number = 0  # the incarnation last taken: a spare is its successor

    @property
    def spare_pid(self) -> int | None:
        spare = self._spare
        return None if spare is None or spare.done.is_set() else spare.sup.runner_pid

    @property
    def spare_pids(self) -> Sequence[int]:
        """Every rank's pid of the spare, in rank order (empty without one)."""
        spare = self._spare
        return [] if spare is None or spare.done.is_set() else spare.sup.pids

    @asynccontextmanager
    async def open(self, spare_wanted: Callable[[], bool] | None) -> AsyncIterator[None]:
        """Watch launched processes until every one has ended (on leaving).

        ``spare_wanted``: keep a spare while it returns True (None: no spare).
        """
        keeper = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if spare_wanted is not None:
                tg.start_soon(self._keep_spare, spare_wanted, keeper)
            try:
                yield
            finally:
                self.retire_spare()
                keeper.cancel()

    def take(self, number: int) -> Launched | RunnerFailed:
        """The next incarnation's process: the spare if it is still fit, else a new one.

        A runner that could not be started is that incarnation's failure."""
        try:
            self._number = number
            launched = self._adopt_spare() or self._launch(number)
        except Exception as exc:  # noqa: BLE001 - reported as the incarnation's failure
            # One line: a spawn failure is an operational error, its cause is in the message.
            logger.error("runner {}: could not start the runner: {!r}", self.runner_id, exc)
            return RunnerFailed(
                reason="spawn_failed",
                error_message=f"could not start the runner: {type(exc).__name__}: {exc}",
                detected_by="supervisor",
            )
        launched.adopted = True
        return launched

    def retire_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.sup.shutdown()

    def _launch(self, number: int) -> Launched:
        """Spawn incarnation ``number`` and start watching it (the number stamps its logs)."""
        assert self._tg is not None, "launch only inside open()"
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        try:
            sup = RunnerSupervisor.create(
                spec=self.spec,
                event_sender=send,
                config=self.config,
                runner_id=self.runner_id,
                incarnation=number,
            )
        except BaseException:
            send.close()
            recv.close()
            raise
        launched = Launched(sup, recv)

        async def watch() -> None:
            try:
                async with send:
                    await sup.run()
            finally:
                launched.done.set()
                if not launched.adopted:
                    recv.close()  # a spare that was never used: its events go nowhere
                self._changed.notify()

        self._tg.start_soon(watch, name=f"runner {self.runner_id} pid {sup.pid}")
        return launched

    def _adopt_spare(self) -> Launched | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.done.is_set() or spare.sup.finished or spare.sup.failure is not None:
            logger.warning("runner {}: the spare runner died while waiting", self.runner_id)
            spare.sup.kill()
            return None
        logger.info("runner {}: adopting spare runner pid {}", self.runner_id, spare.sup.pid)
        return spare

    async def _keep_spare(self, wanted: Callable[[], bool], scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                if self._spare is not None and self._spare.done.is_set():
                    self._spare = None  # it died while waiting: replace it
                if self._spare is None and wanted():
                    try:
                        self._spare = self._launch(self._number + 1)  # the successor
                    except Exception as exc:  # noqa: BLE001 - no spare is no failure
                        logger.opt(exception=exc).warning(
                            "runner {}: could not start a spare runner", self.runner_id
                        )
                        await anyio.sleep(_SPARE_RETRY)
                await self._changed.wait()


__all__ = ["Launched", "Launcher"]
