"""The deep health canary: an idle runner is asked to replay a known-good step.

Probes are the supervisor's own tasks: their ids live in the reserved namespace
(`supervisor.core.tasks.RESERVED_PREFIX`), no host task can take them, and none of
their events reach the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from loguru import logger

from supervisor.config import SupervisorConfig
from supervisor.core.detection.interface import EndCause
from supervisor.core.tasks import RESERVED_PREFIX
from supervisor.protocol import (
    DEVICE_UNHEALTHY,
    BaseEvent,
    BaseTask,
    Probe,
    TaskStatus,
    TaskStatusUpdated,
)

PROBE_PREFIX = f"{RESERVED_PREFIX}probe-"

if TYPE_CHECKING:
    from loguru import Logger


class Prober:
    """Sends a `Probe` after ``probe_interval`` idle; ends the watch after too many misses.

    ``probe_failures`` misses in a row (no answer within ``probe_timeout`` each, or a
    failed answer) fail the runner; a device the engine reports broken fails it at once.
    """

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        runner_id: str,
        send: Callable[[BaseTask], None],
        idle: Callable[[], bool],
        end: Callable[[EndCause], None],
        log: Logger = logger,
    ) -> None:
        #: bound to the runner (id, incarnation, pid): its lines reach the runner's log file
        self._log = log
        self._config = config
        self._runner_id = runner_id
        self._send = send
        self._idle = idle
        self._end = end
        #: Unanswered probes by id. The supervisor's event intake reads this dict on
        #: every event, so it is only ever mutated, never replaced.
        self.outstanding: dict[str, anyio.Event] = {}
        self._errors: dict[str, str] = {}
        self.last_activity = time.monotonic()
        self.sent = 0

    def touch(self) -> None:
        """The runner did real work: the next probe is due ``probe_interval`` from now."""
        self.last_activity = time.monotonic()

    def on_event(self, msg: BaseEvent) -> None:
        """An event of an outstanding probe (the caller checked the task id)."""
        if isinstance(msg, TaskStatusUpdated) and msg.status.terminal:
            if msg.status is not TaskStatus.Complete:
                self._errors[msg.task_id] = msg.error or str(msg.status)
            event = self.outstanding.get(msg.task_id)
            if event is not None:
                event.set()

    async def run(self) -> None:
        cfg = self._config
        if cfg.probe_interval <= 0:
            return
        misses = 0
        while True:
            await anyio.sleep(min(cfg.probe_interval, 0.25))
            if not self._idle() or time.monotonic() - self.last_activity < cfg.probe_interval:
                continue
            self.sent += 1
            probe_id = f"{PROBE_PREFIX}{self.sent}"
            answered = self.outstanding[probe_id] = anyio.Event()
            self._send(Probe(task_id=probe_id))
            while not answered.is_set():
                with anyio.move_on_after(cfg.probe_timeout):
                    await answered.wait()
                if answered.is_set():
                    break
                misses += 1  # each probe_timeout without an answer is one miss
                waited = cfg.probe_timeout * misses
                self._warn(f"probe unanswered for {waited:g}s", misses)
                if misses >= cfg.probe_failures:
                    # Left outstanding: its late answer is still not the host's business.
                    self._fail(f"probe unanswered for {waited:g}s ({misses} consecutive misses)")
                    return
            del self.outstanding[probe_id]
            self.touch()
            error = self._errors.pop(probe_id, None)
            if error is None:
                misses = 0
                continue
            if error.startswith(DEVICE_UNHEALTHY):
                self._fail(error)
                return
            misses += 1
            self._warn(error, misses)
            if misses >= cfg.probe_failures:
                self._fail(f"{misses} consecutive probe failures; last: {error}")
                return

    def _warn(self, what: str, misses: int) -> None:
        self._log.warning(
            "runner {}: {} ({}/{})", self._runner_id, what, misses, self._config.probe_failures
        )

    def _fail(self, message: str) -> None:
        self._end(EndCause(detected_by="probe", reason="probe_failed", message=message))


__all__ = ["PROBE_PREFIX", "Prober"]
