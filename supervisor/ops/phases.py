"""Phases: what the outside world (health, metrics, systemd, the CLI) is told about a runner.

The one place that says which phases exist and what each means for readiness,
liveness and retries. Which runner *statuses* are busy or ready is a protocol
fact and lives beside the statuses (`supervisor.protocol`); the mapping from a
status to a phase is here.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

from supervisor.protocol import (
    BaseRunnerStatus,
    RunnerFailed,
    RunnerIdle,
    RunnerLoaded,
    RunnerLoading,
    RunnerReady,
    RunnerRunning,
    RunnerShutdown,
    RunnerShuttingDown,
    RunnerWarmingUp,
)

Phase: TypeAlias = Literal[
    "starting",
    "loading",
    "warming_up",
    "ready",
    "running",
    "restarting",
    "shutting_down",
    "stopped",
    "gave_up",
]

#: Every phase, in life order (metrics export one gauge series per phase).
ALL_PHASES: tuple[Phase, ...] = get_args(Phase)
#: Phases in which the runner takes work: readiness is 200 only here.
READY_PHASES: frozenset[Phase] = frozenset({"ready", "running"})
#: Phases from which nothing will come back by itself: liveness fails here.
PERMANENT_PHASES: frozenset[Phase] = frozenset({"gave_up"})
#: Phases that will not become ready by waiting: no Retry-After is offered.
NO_RETRY_PHASES: frozenset[Phase] = frozenset({"shutting_down", "stopped", "gave_up"})

#: The phase a live incarnation's status puts its runner in. A final status
#: (Shutdown, Failed) means the next incarnation is on its way: "restarting".
STATUS_PHASES: dict[type[BaseRunnerStatus], Phase] = {
    RunnerIdle: "starting",
    RunnerLoading: "loading",
    RunnerLoaded: "warming_up",
    RunnerWarmingUp: "warming_up",
    RunnerReady: "ready",
    RunnerRunning: "running",
    RunnerShuttingDown: "shutting_down",
    RunnerShutdown: "restarting",
    RunnerFailed: "restarting",
}


def phase_of(status: BaseRunnerStatus) -> Phase:
    """The phase for an incarnation's current status."""
    return STATUS_PHASES.get(type(status), "starting")


__all__ = [
    "ALL_PHASES",
    "NO_RETRY_PHASES",
    "PERMANENT_PHASES",
    "READY_PHASES",
    "STATUS_PHASES",
    "Phase",
    "phase_of",
]
