"""Exceptions raised to callers of the supervisor."""

from __future__ import annotations

from supervisor.protocol import RunnerFailed


class RunnerFailedError(RuntimeError):
    """The runner failed before (or instead of) acknowledging a task.

    ``status`` holds the `RunnerFailed` that was emitted for the runner.
    """

    def __init__(self, status: RunnerFailed) -> None:
        super().__init__(f"runner failed ({status.reason}): {status.error_message}")
        self.status = status


class DuplicateTaskError(ValueError):
    """A task id that is already pending or in progress was submitted again."""
