"""The task ledger: every host task a `RestartingSupervisor` accepted, whichever
incarnations ran it, until it has exactly one terminal status.

Incarnations are executors. The ledger says which one holds each task, what the
host has already been told (acknowledgement, Running, each chunk index), and,
when an incarnation ends, what becomes of the tasks it held: they fail, or they
wait for the next incarnation (re-queued, replayed, or resumed), or they are
quarantined as poison. Pure logic: no I/O, no clock, no event loop. The caller
sends the events the ledger returns, hands waiting tasks over, and tells it what
each incarnation reported.

A task's stages (`STAGE_TABLE`):

- ``WAITING``: for an incarnation that takes tasks (new, or handed back);
- ``HANDED``: given to incarnation ``executor``, not acknowledged yet;
- ``QUEUED``: acknowledged, not started (a *bystander* if its runner dies);
- ``RUNNING``: the runner reported it Running;
- ``DONE``: its one terminal status was returned to the caller.

Exactly once to the host: a chunk index is forwarded only when it is the next
one the host has not seen. A replayed task regenerates indexes the host already
has; they are compared with what was delivered and dropped (a mismatch ends the
task ``Failed``, "diverged": two different generations are never spliced). A
resumed task continues from the first index the host lacks.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

from supervisor.core.statemachine import StateMachine
from supervisor.errors import DuplicateTaskError
from supervisor.protocol import (
    BaseEvent,
    BaseTask,
    ChunkGenerated,
    Embed,
    EmbeddingGenerated,
    Generate,
    Recovery,
    TaskStatus,
    TaskStatusUpdated,
)
from supervisor.restart.events import TaskRecovered

#: Finished task ids remembered to refuse a reused id (bounded, like the core's book).
RECENT_IDS = 4096


class Stage(enum.Enum):
    """Where one task is (see the module docstring)."""

    WAITING = "waiting"
    HANDED = "handed"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


STAGE_TABLE: Mapping[Stage, frozenset[Stage]] = {
    Stage.WAITING: frozenset({Stage.HANDED, Stage.DONE}),
    # HANDED -> WAITING: its incarnation ended before taking it; RUNNING: its
    # acknowledgement and Running status came in one read.
    Stage.HANDED: frozenset({Stage.QUEUED, Stage.RUNNING, Stage.WAITING, Stage.DONE}),
    Stage.QUEUED: frozenset({Stage.RUNNING, Stage.WAITING, Stage.DONE}),
    Stage.RUNNING: frozenset({Stage.WAITING, Stage.DONE}),
    Stage.DONE: frozenset(),
}


def recovery_of(task: BaseTask, default: Recovery) -> Recovery:
    """A task's recovery mode: its own (``Generate``/``Embed.recovery``), else the
    policy's; other task kinds are never run twice once acknowledged."""
    if isinstance(task, (Generate, Embed)):
        return default if task.recovery is None else task.recovery
    return "fail"


class Entry:
    """One accepted task and what the host has seen of it."""

    __slots__ = (
        "acked",
        "cancel_requested",
        "deaths",
        "delivered",
        "executor",
        "handovers",
        "held",
        "life",
        "mode",
        "next_index",
        "running_seen",
        "status",
        "task",
    )

    def __init__(self, task: BaseTask, mode: Recovery) -> None:
        self.task = task
        self.mode: Recovery = mode
        self.life = StateMachine(Stage.WAITING, STAGE_TABLE)
        #: the incarnation that holds it (HANDED, QUEUED, RUNNING)
        self.executor: int | None = None
        #: how many incarnations it was handed to
        self.handovers = 0
        #: incarnations that died while it was Running on them
        self.deaths: list[int] = []
        #: what the host got, by index: chunk texts, or embedding digests (replay, resume)
        self.delivered: list[str] = []
        #: the next index the host lacks
        self.next_index = 0
        self.acked = False
        self.running_seen = False
        self.cancel_requested = False
        #: the terminal status its ending incarnation reported, held until that end
        self.held: TaskStatusUpdated | None = None
        #: its terminal status, once DONE
        self.status: TaskStatus | None = None

    @property
    def stage(self) -> Stage:
        return self.life.state


class Ledger:
    """Every accepted task of one runner id, across its incarnations."""

    def __init__(
        self,
        runner_id: str,
        *,
        default_recovery: Recovery = "fail",
        max_task_attempts: int = 3,
        requeue_unacknowledged: bool = False,
    ) -> None:
        self.runner_id = runner_id
        self.default_recovery: Recovery = default_recovery
        self.max_task_attempts = max_task_attempts
        self.requeue_unacknowledged = requeue_unacknowledged
        self._open: dict[str, Entry] = {}
        #: ids finished recently, to refuse a reused one (ids only: a finished task's
        #: prompt is not kept; its caller holds its `Entry` while it waits)
        self._done: OrderedDict[str, None] = OrderedDict()
        self._waiting: dict[str, None] = {}  # an ordered set: checked on every event

    # ------------------------------------------------------------------ views
    def get(self, task_id: str) -> Entry | None:
        """The open task ``task_id`` (None once it has its terminal status)."""
        return self._open.get(task_id)

    def waiting(self) -> list[str]:
        """Tasks waiting for an incarnation, in the order they started waiting."""
        return list(self._waiting)

    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def held_by(self, number: int) -> list[str]:
        return [tid for tid, e in self._open.items() if e.executor == number]

    def open_entries(self) -> Iterator[Entry]:
        return iter(list(self._open.values()))

    def __len__(self) -> int:
        """Tasks without their terminal status yet."""
        return len(self._open)

    # --------------------------------------------------------- host's verbs
    def accept(self, task: BaseTask) -> Entry:
        """Take ``task``; it waits for an incarnation. `DuplicateTaskError` for an id
        that is open or finished recently."""
        tid = task.task_id
        if tid in self._open or tid in self._done:
            raise DuplicateTaskError(f"task id {tid!r} is already in use")
        entry = self._open[tid] = Entry(task, recovery_of(task, self.default_recovery))
        self._waiting[tid] = None
        return entry

    def withdraw(self, task_id: str) -> bool:
        """Drop a task no incarnation ever took (its caller gave up waiting): it was
        refused, not accepted. False if it was handed over once (it is owed a status)."""
        entry = self._open.get(task_id)
        if entry is None or entry.stage is not Stage.WAITING or entry.handovers:
            return False
        del self._open[task_id]
        self._waiting.pop(task_id, None)
        return True

    def refuse(self, task_id: str, number: int, error: str) -> TaskStatusUpdated | None:
        """Incarnation ``number`` refused the task outright (it cannot be sent, e.g.
        unpicklable): a first hand-over is dropped (the caller raises, as for any
        refused task); a later one ends ``Failed`` with ``error`` (returned)."""
        entry = self._open.get(task_id)
        if entry is None or entry.executor != number:
            return None
        if entry.handovers > 1:
            return self._finish(entry, TaskStatus.Failed, error)
        del self._open[task_id]
        return None

    def cancel(self, task_id: str) -> TaskStatusUpdated | None:
        """The host cancels ``task_id``: a waiting task ends ``Cancelled`` now (returned);
        one an incarnation holds is marked, and ends ``Cancelled`` whatever that
        incarnation's end (the caller forwards the cancel to it)."""
        entry = self._open.get(task_id)
        if entry is None:
            return None
        entry.cancel_requested = True
        if entry.stage is Stage.WAITING:
            return self._finish(entry, TaskStatus.Cancelled, "cancelled before a runner took it")
        return None

    def fail_waiting(self, error: str) -> list[TaskStatusUpdated]:
        """End every waiting task ``Failed`` with ``error`` (a shutdown, giving up)."""
        return [
            self._finish(e, TaskStatus.Failed, error)
            for e in list(self._open.values())
            if e.stage is Stage.WAITING
        ]

    def close(self, error: str) -> list[TaskStatusUpdated]:
        """End every open task ``Failed`` with ``error``: no incarnation will come."""
        return [self._finish(e, TaskStatus.Failed, error) for e in list(self._open.values())]

    def fail_one(self, task_id: str, error: str) -> TaskStatusUpdated | None:
        """End a waiting task ``Failed`` (its `start_task` ran out of time after a
        hand-back); None if it is not waiting."""
        entry = self._open.get(task_id)
        if entry is None or entry.stage is not Stage.WAITING:
            return None
        return self._finish(entry, TaskStatus.Failed, error)

    # ------------------------------------------------------- hand-over
    def hand_over(
        self, task_id: str, number: int, *, can_resume: Callable[[], bool] = lambda: True
    ) -> tuple[BaseTask, TaskRecovered | None]:
        """Give a waiting task to incarnation ``number``: the task to send (with
        ``resume_from`` when it resumes) and, for a later incarnation than its first,
        the `TaskRecovered` to emit. ``can_resume()`` (asked only when a task would
        resume): the engine declares ``supports_resume``; without it the task is
        replayed, and its `TaskRecovered` says so."""
        entry = self._open[task_id]
        entry.life.transition(Stage.HANDED)
        self._waiting.pop(task_id, None)
        entry.executor = number
        entry.held = None
        entry.handovers += 1
        task = entry.task
        if entry.handovers == 1:
            return task, None
        if not entry.acked:
            mode: Literal["requeue", "replay", "resume"] = "requeue"
            from_index = 0
        elif (
            entry.mode == "resume"
            and isinstance(task, Generate)
            and entry.delivered
            and can_resume()
        ):
            mode = "resume"
            from_index = entry.next_index
            task = dataclasses.replace(task, resume_from=tuple(entry.delivered))
        else:
            mode = "replay"
            from_index = 0
        return task, TaskRecovered(task_id, entry.handovers, mode, from_index)

    # ------------------------------------------------- what incarnations said
    def acked(self, task_id: str, number: int) -> bool:
        """Incarnation ``number`` acknowledged ``task_id``: True the first time any did
        (forward the acknowledgement; a later one is the host's old news)."""
        entry = self._open.get(task_id)
        if entry is None or entry.executor != number or entry.stage is not Stage.HANDED:
            return False
        entry.life.transition(Stage.QUEUED)
        first = not entry.acked
        entry.acked = True
        return first

    def status(
        self, number: int, event: TaskStatusUpdated, *, ending: bool
    ) -> TaskStatusUpdated | None:
        """Incarnation ``number`` reported ``event``: what to forward, if anything.

        ``ending``: that incarnation failed or is being stopped by the restart layer,
        so a status other than ``Complete`` is its end's, not the task's: held until
        `ended` decides."""
        entry = self._open.get(event.task_id)
        if entry is None or entry.executor != number:
            return None
        if event.status is TaskStatus.Running:
            if entry.stage in (Stage.HANDED, Stage.QUEUED):
                entry.acked = True
                entry.life.transition(Stage.RUNNING)
            first = not entry.running_seen
            entry.running_seen = True
            return event if first else None
        if ending and event.status is not TaskStatus.Complete:
            entry.held = event
            return None
        return self._finish(entry, event.status, event.error)

    def is_next(self, number: int, event: ChunkGenerated) -> bool:
        """``event`` is the chunk the host lacks next, from the incarnation that holds
        its task: `output` would forward it as it is (the hot path asks first)."""
        entry = self._open.get(event.task_id)
        return (
            entry is not None
            and entry.executor == number
            and (entry.mode == "fail" or event.index == entry.next_index)
        )

    def output(self, number: int, event: ChunkGenerated | EmbeddingGenerated) -> BaseEvent | None:
        """One chunk (or embedding) from incarnation ``number``: the chunk to forward,
        None to drop it (the host has that index), or the task's ``Failed`` when a
        replay diverged (the caller also cancels the task on the runner)."""
        entry = self._open.get(event.task_id)
        if entry is None or entry.executor != number:
            return None
        if entry.mode == "fail":
            return event  # never run twice once acknowledged: nothing to compare
        index = event.index
        value = event.text if isinstance(event, ChunkGenerated) else _digest(event.vector)
        if index < entry.next_index:
            if entry.delivered[index] == value:
                return None
            what = "chunk" if isinstance(event, ChunkGenerated) else "embedding"
            return self._finish(
                entry,
                TaskStatus.Failed,
                f"diverged: replay produced a different {what} at index {index} "
                f"(attempt {entry.handovers}); the task was stopped rather than splice "
                "two generations",
            )
        if index > entry.next_index:
            return self._finish(
                entry,
                TaskStatus.Failed,
                f"runner skipped from index {entry.next_index} to {index}; the task was "
                "stopped rather than leave a gap",
            )
        entry.delivered.append(value)
        entry.next_index += 1
        return event

    def ended(
        self, number: int, *, recover: bool, cause: str | None, failure: str
    ) -> list[TaskStatusUpdated]:
        """Incarnation ``number`` ended, every event of it seen: decide each of its
        tasks. ``recover``: a later incarnation comes and these tasks may move to it;
        ``cause``: the restart layer stopped it (its error for tasks it fails);
        ``failure``: why it ended (for tasks it never answered). Returns the
        terminal statuses to send; the others wait again."""
        out: list[TaskStatusUpdated] = []
        for tid in self.held_by(number):
            entry = self._open[tid]
            done = self._decide(entry, number, recover=recover, cause=cause, failure=failure)
            if done is not None:
                out.append(done)
        return out

    # --------------------------------------------------------------- helpers
    def _decide(
        self, entry: Entry, number: int, *, recover: bool, cause: str | None, failure: str
    ) -> TaskStatusUpdated | None:
        held = entry.held
        if entry.cancel_requested:
            error = (
                held.error
                if held is not None and held.status is TaskStatus.Cancelled
                else "cancelled; the runner ended before confirming"
            )
            return self._finish(entry, TaskStatus.Cancelled, error)
        stage = entry.stage
        unsent = stage is Stage.HANDED and held is None
        if recover:
            if unsent or (
                stage is Stage.HANDED and (self.requeue_unacknowledged or entry.mode != "fail")
            ):
                self._wait_again(entry)
                return None
            if entry.mode != "fail" and stage is Stage.QUEUED:
                self._wait_again(entry)  # a bystander: its budget is untouched
                return None
            if entry.mode != "fail" and stage is Stage.RUNNING:
                entry.deaths.append(number)
                if len(entry.deaths) < self.max_task_attempts:
                    self._wait_again(entry)
                    return None
                runs = ", ".join(f"#{n}" for n in entry.deaths)
                return self._finish(
                    entry,
                    TaskStatus.Failed,
                    f"quarantined: the task was running on {len(entry.deaths)} incarnations "
                    f"of runner {self.runner_id} that all died ({runs}); last: "
                    f"{cause or (held.error if held is not None else None) or failure}",
                )
        if held is None:
            error = cause or f"runner ended before acknowledging the task: {failure}"
            return self._finish(entry, TaskStatus.Failed, error)
        if cause is not None and held.status is not TaskStatus.Complete:
            return self._finish(entry, TaskStatus.Failed, cause)
        return self._finish(entry, held.status, held.error)

    def _wait_again(self, entry: Entry) -> None:
        entry.life.transition(Stage.WAITING)
        self._waiting[entry.task.task_id] = None
        entry.executor = None
        entry.held = None

    def _finish(self, entry: Entry, status: TaskStatus, error: str | None) -> TaskStatusUpdated:
        tid = entry.task.task_id
        entry.life.transition(Stage.DONE)
        self._waiting.pop(tid, None)
        entry.status = status
        entry.executor = None
        entry.delivered = []
        entry.held = None
        self._open.pop(tid, None)
        self._done[tid] = None
        if len(self._done) > RECENT_IDS:
            self._done.popitem(last=False)
        return TaskStatusUpdated(tid, status, error)


def _digest(vector: bytes) -> str:
    return hashlib.blake2b(vector, digest_size=16).hexdigest()


__all__ = [
    "STAGE_TABLE",
    "Entry",
    "Ledger",
    "Stage",
    "recovery_of",
]
