"""Events of the restarting layer, emitted on the same stream as the runner's events.

They are parent-side only (never cross the pipe), so they live here and not in
`supervisor.protocol`. Why new event types rather than one more `RunnerFailed`:
the contract is exactly one `RunnerFailed` per incarnation, and the incarnation
that failed last already emitted its own. Giving up is a decision of the
supervisor about the runner id, not a new failure of a process, so it gets its
own event; hosts that do not know it still saw the last `RunnerFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from supervisor.protocol import BaseEvent, RunnerFailed

#: Why a new incarnation starts (`RunnerRestarting.reason`).
RESTART_REASONS = ("failure", "exit", "recycle", "replace", "group")


@dataclass(frozen=True, slots=True)
class RunnerRestarting(BaseEvent):
    """Incarnation ``incarnation`` of ``runner_id`` will start after ``delay`` seconds.

    ``reason``: ``"failure"`` (the last incarnation failed), ``"exit"`` (it exited
    cleanly and the policy is ``always``), ``"recycle"`` (``max_tasks``/``max_rss``),
    ``"replace"`` (asked for: ``replace()``, a rolling restart) or ``"group"`` (a
    sibling in its group failed). ``restarts`` counts failure restarts only (for a
    group member: the group's); replacements are outside the restart budget.
    """

    runner_id: str
    incarnation: int
    delay: float
    restarts: int
    reason: str = "failure"


@dataclass(frozen=True, slots=True)
class SupervisorGaveUp(BaseEvent):
    """The last event for ``runner_id``: no more incarnations will be started.

    ``reason`` says why (``"gave up after 5 restarts in 60 s"``, ``"crash loop: 3
    consecutive failures during load/warm-up"``, ``"restart policy is 'never'"``);
    ``last_failure`` is the final incarnation's `RunnerFailed`.
    """

    runner_id: str
    reason: str
    restarts: int
    last_failure: RunnerFailed | None = None


@dataclass(frozen=True, slots=True)
class GroupRestarting(BaseEvent):
    """A restart round of ``group_id``: ``cause_runner_id`` failed (``reason``), and the
    members its strategy names restart together after ``delay`` seconds. Emitted once
    per round, right after the cause's `RunnerFailed`; each member restarted then
    emits its own `RunnerRestarting` (reason ``"failure"`` or ``"group"``).
    ``restarts`` counts the group's rounds (one budget for the whole group)."""

    group_id: str
    cause_runner_id: str
    reason: str
    delay: float
    restarts: int


@dataclass(frozen=True, slots=True)
class GroupGaveUp(BaseEvent):
    """The group's restart budget is spent: every member gave up (each emitted its own
    `SupervisorGaveUp` first). The group's last event."""

    group_id: str
    reason: str
    restarts: int


@dataclass(frozen=True, slots=True)
class TaskRecovered(BaseEvent):
    """Task ``task_id`` outlived its runner and is handed to a later incarnation.

    ``attempt``: which hand-over this is (2 for the first recovery). ``mode``:
    ``"requeue"`` (no runner had acknowledged it: it starts afresh), ``"replay"`` (it
    runs again from the start; indexes the host already has are compared, not sent
    again) or ``"resume"`` (the runner continues from ``from_index``, the first index
    the host lacks). Emitted once per hand-over, before the task's next events."""

    task_id: str
    attempt: int
    mode: Literal["requeue", "replay", "resume"]
    from_index: int = 0


__all__ = [
    "RESTART_REASONS",
    "GroupGaveUp",
    "GroupRestarting",
    "RunnerRestarting",
    "SupervisorGaveUp",
    "TaskRecovered",
]
