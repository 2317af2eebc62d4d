"""What callers of the supervisors are told when a command cannot be carried out.

Each error says what happened, and none is a subclass of another's meaning:

- `RunnerFailedError`: the runner failed before (or instead of) acknowledging the task.
- `RunnerUnavailableError`: no runner incarnation can take the task now (restarting
  longer than the caller would wait, or the supervisor gave up). Not a failure of
  *this* task's runner, so not a `RunnerFailedError`.
- `SupervisorClosedError`: the supervisor is shut down or shutting down (or its `run`
  ended); it takes no new tasks.
- `DuplicateTaskError`: the task id is in use (pending, running or recently finished).
- `ReservedTaskIdError`: the task id is in the supervisor's own namespace.
"""

from __future__ import annotations

from supervisor.protocol import RunnerFailed


class SupervisorError(RuntimeError):
    """Base of the errors a supervisor raises for a command it cannot carry out."""


class RunnerFailedError(SupervisorError):
    """The runner failed before (or instead of) acknowledging a task.

    ``status`` holds the `RunnerFailed` that was emitted for the runner.
    """

    def __init__(self, status: RunnerFailed) -> None:
        super().__init__(f"runner failed ({status.reason}): {status.error_message}")
        self.status = status


class RunnerUnavailableError(SupervisorError):
    """No Ready incarnation to take the task: still restarting, or the supervisor gave up.

    ``last_failure`` is the latest incarnation's `RunnerFailed`, if any.
    """

    def __init__(self, message: str, last_failure: RunnerFailed | None = None) -> None:
        super().__init__(message)
        self.last_failure = last_failure


class SupervisorClosedError(SupervisorError):
    """The supervisor is shut down, shutting down, or finished: no new tasks."""


class ContainmentUnavailableError(SupervisorError):
    """The containment asked for (``SupervisorConfig.containment``) cannot be had here."""


class DuplicateTaskError(ValueError):
    """A task id that is already pending, in progress or recently finished was submitted."""


class ReservedTaskIdError(ValueError):
    """A host task id collides with the supervisor's own (``__``-prefixed) task ids."""


__all__ = [
    "ContainmentUnavailableError",
    "DuplicateTaskError",
    "ReservedTaskIdError",
    "RunnerFailedError",
    "RunnerUnavailableError",
    "SupervisorClosedError",
    "SupervisorError",
]
