"""The lifecycle of a `RestartingSupervisor`, as a table.

One state replaces the separate "run called", "stopping", "gave up" and
"finished" flags, so that combinations that cannot happen cannot be written.
Giving up is decided when an incarnation fails, while its last events still
drain; the run ends only after that, hence GIVING_UP before GAVE_UP.
"""

from __future__ import annotations

import enum

from supervisor.core.statemachine import StateMachine
from supervisor.ops.phases import Phase


class RestartState(enum.Enum):
    CREATED = "created"  # run() not called yet; tasks wait for the first Ready
    CLOSED = "closed"  # shut down before run(): run() ends at once
    RUNNING = "running"  # incarnations are started as the policy says
    STOPPING = "stopping"  # shut down: the current incarnation stops, none follows
    GIVING_UP = "giving_up"  # the policy gave up; the last incarnation drains
    FINISHED = "finished"  # run() ended: stopped, or the policy stopped a clean exit
    GAVE_UP = "gave_up"  # run() ended after the policy gave up

    @property
    def takes_tasks(self) -> bool:
        """`start_task` may still find a Ready incarnation."""
        return self in (RestartState.CREATED, RestartState.RUNNING)

    @property
    def gave_up(self) -> bool:
        return self in (RestartState.GIVING_UP, RestartState.GAVE_UP)

    @property
    def started(self) -> bool:
        """run() was called."""
        return self not in (RestartState.CREATED, RestartState.CLOSED)

    @property
    def ended(self) -> bool:
        """run() returned."""
        return self in (RestartState.FINISHED, RestartState.GAVE_UP)

    @property
    def shown_phase(self) -> Phase | None:
        """The phase the outside is shown; None: the current incarnation's."""
        return SHOWN_PHASE[self]


_S = RestartState

TRANSITIONS: dict[RestartState, frozenset[RestartState]] = {
    _S.CREATED: frozenset({_S.RUNNING, _S.CLOSED}),
    _S.CLOSED: frozenset({_S.FINISHED}),
    _S.RUNNING: frozenset({_S.STOPPING, _S.GIVING_UP, _S.FINISHED}),
    _S.STOPPING: frozenset({_S.FINISHED}),
    _S.GIVING_UP: frozenset({_S.GAVE_UP}),
    _S.FINISHED: frozenset(),
    _S.GAVE_UP: frozenset(),
}

#: The phase each state shows the outside; None: the current incarnation's phase.
SHOWN_PHASE: dict[RestartState, Phase | None] = {
    _S.CREATED: None,
    _S.CLOSED: "shutting_down",
    _S.RUNNING: None,
    _S.STOPPING: "shutting_down",
    _S.GIVING_UP: "gave_up",
    _S.FINISHED: "stopped",
    _S.GAVE_UP: "gave_up",
}


def restart_lifecycle() -> StateMachine[RestartState]:
    return StateMachine(RestartState.CREATED, TRANSITIONS)


__all__ = ["SHOWN_PHASE", "TRANSITIONS", "RestartState", "restart_lifecycle"]
