"""The watch loops over one runner process: each reports the end it sees, once.

Every loop runs in the supervisor's task group and calls ``end`` with an `EndCause`
when it sees the runner's end (death, freeze, wedge, memory); the supervisor keeps
the first cause and cancels the rest. The judgement itself (is a stale heartbeat a
freeze? is this silence past the phase's deadline?) lives in the pure monitors of
`supervisor.core.detection.liveness`; these loops only feed them readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio
from loguru import logger

from supervisor.config import SupervisorConfig
from supervisor.core import ticker
from supervisor.core.detection.interface import EndCause
from supervisor.core.detection.liveness import (
    HeartbeatMonitor,
    ProcessSample,
    ProgressMonitor,
    ResourceMeter,
    ResourceSample,
    is_stopped,
    sample_process,
)
from supervisor.core.process import RunnerProcess
from supervisor.core.statemachine import Notifier
from supervisor.protocol import (
    BaseRunnerStatus,
    RunnerLoading,
    RunnerRunning,
    RunnerWarmingUp,
)

if TYPE_CHECKING:
    from loguru import Logger


#: The current phase's name and its progress deadline in seconds; None when idle.
Phase = tuple[str, float] | None


def phase_deadline(status: BaseRunnerStatus, decoding: bool, config: SupervisorConfig) -> Phase:
    """Which progress deadline applies to a runner in ``status``.

    ``decoding``: a Generate task has streamed its first chunk (prefill is over).
    """
    if isinstance(status, RunnerLoading):
        return "load", config.load_timeout
    if isinstance(status, RunnerWarmingUp):
        return "warmup", config.warmup_timeout
    if isinstance(status, RunnerRunning):
        if decoding:
            return "decode", config.decode_timeout
        return "prefill", config.prefill_timeout
    return None


class Phases(Protocol):
    """What the progress watch needs from whoever follows the runner's events."""

    #: Restarted when a phase starts: silence before it does not count.
    progress: ProgressMonitor
    #: Notified when the runner starts work, so an idle runner costs nothing.
    busy: Notifier

    def phase(self) -> Phase:
        """The current phase and its deadline; None while idle."""
        ...


class Detectors:
    """Exit, liveness, heartbeat and progress watches over one `RunnerProcess`."""

    def __init__(
        self,
        proc: RunnerProcess,
        config: SupervisorConfig,
        *,
        runner_id: str,
        started_at: float,
        end: Callable[[EndCause], None],
        phases: Phases,
        log: Logger = logger,
    ) -> None:
        #: bound to the runner (id, incarnation, pid): its lines reach the runner's log file
        self._log = log
        self._proc = proc
        self._config = config
        self._runner_id = runner_id
        self._end = end
        self._phases = phases
        self._meter = ResourceMeter(proc.reader)
        self.heartbeat = HeartbeatMonitor(
            stale_checks=config.heartbeat_stale_checks,
            check_interval=config.heartbeat_check_interval,
            busy_grace=config.busy_grace,
            start_timeout=config.start_timeout,
            started_at=started_at,
        )
        self.resources: ResourceSample | None = None
        self._busy_logged = False

    def heartbeat_age(self) -> float | None:
        """Seconds since the heartbeat last changed, as the heartbeat watch saw it."""
        return self.heartbeat.age(self._proc.shared.heartbeat, time.monotonic())

    async def watch_exit(self) -> None:
        """The process sentinel: readable the moment the runner exits."""
        await anyio.wait_readable(self._proc.sentinel)
        self._end(EndCause(detected_by="sentinel"))

    async def poll_alive(self) -> None:
        """Backstop for death, resource samples for metrics, and the memory limit."""
        await ticker.every(self._config.poll_interval, self.poll_once)

    def poll_once(self) -> bool:
        """One poll (the node's ticker calls it on the grid); True once it ended the watch."""
        if not self._proc.is_alive():
            self._end(EndCause(detected_by="poll"))
            return True
        sample = self._meter.sample()
        if sample is None:
            return False
        self.resources = sample
        limit = self._config.memory_limit
        if limit is not None and sample.rss > limit:
            tree = f" and {sample.descendants} descendants" if sample.descendants else ""
            message = (
                f"memory of the runner{tree} {sample.rss / 2**20:.0f} MiB exceeds "
                f"memory_limit {limit / 2**20:.0f} MiB"
            )
            self._end(EndCause(detected_by="poll", reason="memory_limit", message=message))
            return True
        return False

    async def watch_heartbeat(self) -> None:
        await ticker.every(self._config.heartbeat_check_interval, self.check_heartbeat)

    def check_heartbeat(self) -> bool:
        """One heartbeat check (on the ticker's grid); True once it ended the watch."""
        monitor = self.heartbeat
        verdict = monitor.check(self._proc.shared.heartbeat, time.monotonic(), self._sample_process)
        if verdict.verdict == "ok":
            self._busy_logged = False
        elif verdict.verdict == "busy" and not self._busy_logged:
            self._busy_logged = True
            self._log.warning("runner {}: {}", self._runner_id, verdict.message)
        elif verdict.verdict == "dead":
            self._end(EndCause(detected_by="heartbeat"))
            return True
        elif verdict.verdict == "frozen":
            sample = monitor.last_sample
            frozen = sample is not None and is_stopped(sample)
            self._end(
                EndCause(
                    detected_by="heartbeat",
                    reason="unresponsive",
                    message=verdict.message,
                    frozen=frozen,
                )
            )
            return True
        return False

    def _sample_process(self) -> ProcessSample | None:
        return sample_process(self._proc.reader)

    async def watch_progress(self) -> None:
        shared = self._proc.shared
        phases = self._phases
        while True:
            phase = phases.phase()
            if phase is None:
                # Idle runners cost nothing here: wait for work instead of polling.
                await phases.busy.wait()
                phases.progress.reset(time.monotonic())
                continue
            name, deadline = phase
            stalled_for, left = phases.progress.check(
                shared.last_tick, time.monotonic(), deadline, shared.extend_until
            )
            if stalled_for is None:
                # Wake at the deadline (plus a hair), or sooner to notice a phase change.
                await anyio.sleep(min(left + 0.002, self._config.progress_check_interval))
                continue
            message = (
                f"main loop made no progress for {stalled_for:.1f}s in phase "
                f"{name} (deadline {deadline:g}s)"
            )
            self._end(EndCause(detected_by="progress", reason="stalled", message=message))
            return


__all__ = ["Detectors", "Phase", "Phases", "phase_deadline"]
