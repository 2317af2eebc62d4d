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

from supervisor.protocol import BaseEvent, RunnerFailed


@dataclass(frozen=True, slots=True)
class RunnerRestarting(BaseEvent):
    """Incarnation ``incarnation`` of ``runner_id`` will start after ``delay`` seconds."""

    runner_id: str
    incarnation: int
    delay: float
    restarts: int


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


__all__ = ["RunnerRestarting", "SupervisorGaveUp"]
