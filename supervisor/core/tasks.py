"""The task book of one runner: what was sent, what was acknowledged, who waits.

A task is *pending* from the moment it is written to the runner until the runner
acknowledges it, then *in progress* until its terminal status. Every task the book
opened ends with exactly one terminal status: the runner's own, or the Failed the
supervisor emits for it when the runner goes away (`close`). Finished ids are kept
for a while so that a reused id is refused instead of mixing two tasks' events.
"""

from __future__ import annotations

from collections import OrderedDict

import anyio

from supervisor.errors import DuplicateTaskError, ReservedTaskIdError
from supervisor.protocol import BaseTask, Generate

#: How many finished task ids are remembered to refuse duplicates (bounded).
RECENT_TASK_IDS = 4096

#: Task ids the supervisor sends on its own behalf (health probes) start with this;
#: a host task may not, so the runner's answers can never be confused.
RESERVED_PREFIX = "__"


def validate_task(task: object, max_task_bytes: int) -> None:
    """The parent's one check of a host task before it is sent to a runner.

    Raises `TypeError` or `ValueError` (`ReservedTaskIdError` for an id in the
    supervisor's own namespace) with a one-line reason. The runner still checks
    what it decodes: this only keeps malformed tasks off the pipe.
    """
    if not isinstance(task, BaseTask):
        raise TypeError(f"start_task expects a task, got {type(task).__name__}")
    task_id = task.task_id
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("task_id must be a non-empty string")
    if task_id.startswith(RESERVED_PREFIX):
        raise ReservedTaskIdError(
            f"task id {task_id!r}: ids starting with {RESERVED_PREFIX!r} are the supervisor's"
        )
    if isinstance(task, Generate):
        if not isinstance(task.prompt, str):
            raise TypeError("Generate.prompt must be a str")
        tokens = task.max_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError("Generate.max_tokens must be an int >= 0")
        if len(task.prompt) > max_task_bytes:
            raise ValueError(
                f"prompt of {len(task.prompt)} chars exceeds max_task_bytes={max_task_bytes}"
            )


class Waiter:
    """One `start_task` call waiting for its acknowledgement (or for the end)."""

    __slots__ = ("acked", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.acked = False


class TaskBook:
    """Pending and in-progress tasks, their waiters, and recently finished ids."""

    __slots__ = ("_recent", "_waiters", "in_progress", "pending")

    def __init__(self) -> None:
        self.pending: dict[str, BaseTask] = {}
        self.in_progress: dict[str, BaseTask] = {}
        self._waiters: dict[str, Waiter] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()

    def is_open(self, task_id: str) -> bool:
        return task_id in self.pending or task_id in self.in_progress

    def check_new(self, task_id: str) -> None:
        """`DuplicateTaskError` if ``task_id`` is open or finished recently."""
        if self.is_open(task_id) or task_id in self._recent:
            raise DuplicateTaskError(f"task id {task_id!r} is already in use")

    def sent(self, task: BaseTask) -> Waiter:
        """``task`` was written to the runner: pending until acknowledged."""
        waiter = Waiter()
        self.pending[task.task_id] = task
        self._waiters[task.task_id] = waiter
        return waiter

    def acknowledged(self, task_id: str) -> None:
        task = self.pending.pop(task_id, None)
        if task is not None:
            self.in_progress[task_id] = task
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None:
            waiter.acked = True
            waiter.event.set()

    def oldest_pending(self) -> str | None:
        return next(iter(self.pending), None)

    def finished(self, task_id: str) -> bool:
        """Record ``task_id``'s terminal status; False if it already had one (a repeat)."""
        if not self.is_open(task_id) and task_id in self._recent:
            return False
        self.in_progress.pop(task_id, None)
        self.pending.pop(task_id, None)
        self._remember(task_id)
        return True

    def close(self) -> list[str]:
        """Take every open task (in progress first): the caller owes each a Failed."""
        open_ids = [*self.in_progress, *self.pending]
        self.pending.clear()
        self.in_progress.clear()
        for task_id in open_ids:
            self._remember(task_id)
        return open_ids

    def release_waiters(self) -> None:
        """Wake every `start_task` still waiting; they find out why from the supervisor."""
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for waiter in waiters:
            waiter.event.set()

    def _remember(self, task_id: str) -> None:
        self._recent[task_id] = None
        if len(self._recent) > RECENT_TASK_IDS:
            self._recent.popitem(last=False)


__all__ = ["RECENT_TASK_IDS", "RESERVED_PREFIX", "TaskBook", "Waiter", "validate_task"]
