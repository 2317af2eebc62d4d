"""Starting runner processes for the restarting layer, and the prespawned spare.

Every runner process is a one-shot `RunnerSupervisor` run in the launcher's task
group. Its events queue until the restarting layer adopts it as an incarnation;
a spare (``policy.prespawn``) is one started ahead of need, so that a restart
skips interpreter start-up and imports, and with ``policy.spare_stage`` more:
``prepared`` (the engine's prepare hook ran) or ``loaded`` (load and warm-up ran:
adopting it is a hand-over to a runner already Ready). See docs/spares.md.
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
from supervisor.errors import RunnerFailedError, SupervisorClosedError
from supervisor.protocol import (
    READY_STATUSES,
    BaseEvent,
    LoadModel,
    Prepare,
    RunnerFailed,
    RunnerIdle,
    RunnerReady,
    Warmup,
)
from supervisor.restart.policy import SpareStage

#: After a spare could not be started, wait this long before trying again.
_SPARE_RETRY = 1.0


def startup_ids(runner_id: str, number: int) -> tuple[str, str, str]:
    """Incarnation ``number``'s own Prepare, LoadModel and Warmup task ids (a spare
    that runs them ahead of its adoption uses the ids its incarnation will have)."""
    return (
        f"{runner_id}:prepare:{number}",
        f"{runner_id}:load:{number}",
        f"{runner_id}:warmup:{number}",
    )


class Launched:
    """A started runner process, watched; its events wait in ``recv`` until adopted."""

    __slots__ = ("adopted", "done", "drives_startup", "number", "recv", "staged", "sup")

    def __init__(
        self, sup: RunnerSupervisor, recv: MemoryObjectReceiveStream[BaseEvent], number: int
    ) -> None:
        self.sup = sup
        self.recv = recv
        #: the incarnation number it was started as (its start-up task ids carry it)
        self.number = number
        #: its supervisor's run() returned: the process is reaped
        self.done = anyio.Event()
        self.adopted = False
        #: the launcher sends its LoadModel and Warmup (a loaded spare): the
        #: incarnation that adopts it must not send them again
        self.drives_startup = False
        #: every start-up task of its stage was sent (a spare: it was told all it will be)
        self.staged = False


class Launcher:
    """Spawns and watches one runner id's processes; keeps a spare if asked to."""

    def __init__(
        self,
        *,
        spec: RunnerSpec,
        config: SupervisorConfig,
        runner_id: str,
        changed: Notifier,
        spare_stage: SpareStage = "imported",
    ) -> None:
        self.spec = spec
        self.spare_stage = spare_stage
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
    def has_loaded_spare(self) -> bool:
        """A live spare that loads (or loaded) its own copy of the weights: adopting it
        needs none of the memory a dead runner still releases."""
        spare = self._spare
        return (
            spare is not None
            and spare.drives_startup
            and not spare.done.is_set()
            and spare.sup.failure is None
        )

    @property
    def spare_pids(self) -> Sequence[int]:
        """Every rank's pid of the spare, in rank order (empty without one)."""
        spare = self._spare
        return [] if spare is None or spare.done.is_set() else spare.sup.pids

    @property
    def spare_ready(self) -> bool:
        """A spare waits at its stage: its start-up tasks done, Ready when ``loaded``.
        (``imported``: its runner is up; nothing reports the end of its imports.)"""
        spare = self._spare
        if spare is None or spare.done.is_set() or not spare.staged:
            return False
        if spare.sup.runner_pid is None:
            return False
        sup = spare.sup
        if sup.failure is not None or sup.finished or sup.pending or sup.in_progress:
            return False
        wanted = RunnerReady if self.spare_stage == "loaded" else RunnerIdle
        return isinstance(sup.status, wanted)

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
            launched = self._adopt_spare(number) or self._launch(number)
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
        launched = Launched(sup, recv, number)

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

    def _adopt_spare(self, number: int) -> Launched | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.done.is_set() or spare.sup.finished or spare.sup.failure is not None:
            logger.warning("runner {}: the spare runner died while waiting", self.runner_id)
            spare.sup.kill()
            return None
        if spare.drives_startup and spare.number != number:
            # its start-up tasks carry another incarnation's ids: not this one's to adopt
            spare.sup.shutdown()
            return None
        if spare.drives_startup and self._startup_failed(spare):
            logger.warning(
                "runner {}: the loaded spare's start-up failed; starting a new runner",
                self.runner_id,
            )
            spare.sup.shutdown()
            return None
        logger.info(
            "runner {}: adopting {} spare runner pid {} ({})",
            self.runner_id,
            self.spare_stage,
            spare.sup.pid,
            type(spare.sup.status).__name__,
        )
        return spare

    @staticmethod
    def _startup_failed(spare: Launched) -> bool:
        """Its LoadModel and Warmup were sent and are over, and it is not Ready: one of
        them failed (a task error, not a death): adopting it would only fail again."""
        sup = spare.sup
        return (
            spare.staged
            and not (sup.pending or sup.in_progress)
            and not isinstance(sup.status, READY_STATUSES)
        )

    def _start_spare(self) -> Launched:
        """A spare for the successor, started up to ``spare_stage``."""
        assert self._tg is not None
        number = self._number + 1
        spare = self._launch(number)
        if self.spare_stage == "imported":
            spare.staged = True
        else:
            spare.drives_startup = self.spare_stage == "loaded"
            self._tg.start_soon(self._stage_spare, spare, name=f"spare {self.runner_id}#{number}")
        return spare

    async def _stage_spare(self, spare: Launched) -> None:
        """Send the spare its start-up tasks; their events wait with the rest until it
        is adopted (a loaded spare's RunnerReady is then its incarnation's). A spare
        that fails meanwhile is replaced by `_keep_spare`, and nobody hears of it."""
        prepare_id, load_id, warmup_id = startup_ids(self.runner_id, spare.number)
        try:
            if not spare.drives_startup:
                await spare.sup.start_task(Prepare(task_id=prepare_id))
            else:  # (LoadModel prepares first)
                await spare.sup.start_task(LoadModel(task_id=load_id))
                await spare.sup.start_task(Warmup(task_id=warmup_id))
        except (RunnerFailedError, SupervisorClosedError):
            return  # it ended: `_keep_spare` (or its adopter) sees that
        spare.staged = True

    async def _keep_spare(self, wanted: Callable[[], bool], scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                if self._spare is not None and self._spare.done.is_set():
                    self._spare = None  # it died while waiting: replace it
                if self._spare is None and wanted():
                    try:
                        self._spare = self._start_spare()  # the successor
                    except Exception as exc:  # noqa: BLE001 - no spare is no failure
                        logger.opt(exception=exc).warning(
                            "runner {}: could not start a spare runner", self.runner_id
                        )
                        await anyio.sleep(_SPARE_RETRY)
                await self._changed.wait()


__all__ = ["Launched", "Launcher", "startup_ids"]
