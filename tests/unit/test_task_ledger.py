"""The task ledger as pure logic: one terminal status per task, each index to the host once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.core.statemachine import check_table
from supervisor.errors import DuplicateTaskError
from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    Generate,
    Recovery,
    Shutdown,
    TaskStatus,
    TaskStatusUpdated,
)
from supervisor.restart.events import TaskRecovered
from supervisor.restart.ledger import STAGE_TABLE, Ledger, Stage

FAILED = TaskStatusUpdated("x", TaskStatus.Failed, "runner failed (signalled): killed")


def gen(tid: str, recovery: Recovery | None = None, n: int = 4) -> Generate:
    return Generate(task_id=tid, prompt="a b", max_tokens=n, recovery=recovery)


def lost(tid: str) -> TaskStatusUpdated:
    """The Failed a dying incarnation's end path reports for an open task."""
    return TaskStatusUpdated(tid, TaskStatus.Failed, "runner failed (signalled): killed")


def run_to(ledger: Ledger, tid: str, number: int, chunks: int) -> list[BaseEvent]:
    """Acknowledge, start and stream ``chunks`` chunks of ``tid`` on ``number``."""
    out: list[BaseEvent] = []
    ledger.acked(tid, number)
    running = ledger.status(number, TaskStatusUpdated(tid, TaskStatus.Running), ending=False)
    if running is not None:
        out.append(running)
    for i in range(chunks):
        ev = ledger.output(number, ChunkGenerated(tid, i, f"t{i}"))
        if ev is not None:
            out.append(ev)
    return out


def test_the_stage_table_is_complete() -> None:
    check_table(STAGE_TABLE, Stage)


def test_a_task_handed_to_an_ending_incarnation_waits_for_the_next() -> None:
    ledger = Ledger("r")
    ledger.accept(gen("a"))
    task, recovered = ledger.hand_over("a", 1)
    assert task == gen("a")
    assert recovered is None
    # incarnation 1 refused it before writing it (its detector had fired): no event
    assert ledger.ended(1, recover=True, cause=None, failure="killed") == []
    assert ledger.waiting() == ["a"]
    _, recovered = ledger.hand_over("a", 2)
    assert recovered == TaskRecovered("a", 2, "requeue", 0)


def test_without_a_next_incarnation_an_unsent_task_fails_saying_why() -> None:
    ledger = Ledger("r")
    ledger.accept(gen("a"))
    ledger.hand_over("a", 1)
    [done] = ledger.ended(1, recover=False, cause=None, failure="killed")
    assert done.status is TaskStatus.Failed
    assert done.error is not None
    assert "before acknowledging" in done.error


def test_fail_mode_fails_an_acknowledged_task_and_requeues_only_on_request() -> None:
    ledger = Ledger("r", requeue_unacknowledged=False)
    for tid in ("acked", "unacked"):
        ledger.accept(gen(tid))
        ledger.hand_over(tid, 1)
    run_to(ledger, "acked", 1, 2)
    for tid in ("acked", "unacked"):
        assert ledger.status(1, lost(tid), ending=True) is None  # held until the end
    done = ledger.ended(1, recover=True, cause=None, failure="killed")
    assert {d.task_id for d in done} == {"acked", "unacked"}
    assert all(d.status is TaskStatus.Failed for d in done)

    requeuing = Ledger("r", requeue_unacknowledged=True)
    requeuing.accept(gen("u"))
    requeuing.hand_over("u", 1)
    requeuing.status(1, lost("u"), ending=True)
    assert requeuing.ended(1, recover=True, cause=None, failure="killed") == []
    assert requeuing.waiting() == ["u"]


def test_replay_sends_no_index_twice_and_compares_what_it_regenerates() -> None:
    ledger = Ledger("r", default_recovery="replay")
    ledger.accept(gen("a"))
    ledger.hand_over("a", 1)
    first = run_to(ledger, "a", 1, 2)
    assert [e.index for e in first if isinstance(e, ChunkGenerated)] == [0, 1]
    ledger.status(1, lost("a"), ending=True)
    assert ledger.ended(1, recover=True, cause=None, failure="killed") == []
    task, recovered = ledger.hand_over("a", 2)
    assert task == gen("a")  # replay: the same task again
    assert recovered == TaskRecovered("a", 2, "replay", 0)
    again = run_to(ledger, "a", 2, 3)
    assert [e.index for e in again if isinstance(e, ChunkGenerated)] == [2]
    assert not any(isinstance(e, TaskStatusUpdated) for e in again)  # Running: old news
    done = ledger.status(2, TaskStatusUpdated("a", TaskStatus.Complete), ending=False)
    assert done == TaskStatusUpdated("a", TaskStatus.Complete)
    assert ledger.get("a") is None  # nothing of a finished task is kept but its id


def test_a_replay_that_regenerates_something_else_fails_as_diverged() -> None:
    ledger = Ledger("r", default_recovery="replay")
    ledger.accept(gen("a"))
    ledger.hand_over("a", 1)
    run_to(ledger, "a", 1, 2)
    ledger.status(1, lost("a"), ending=True)
    ledger.ended(1, recover=True, cause=None, failure="killed")
    ledger.hand_over("a", 2)
    ledger.acked("a", 2)
    assert ledger.output(2, ChunkGenerated("a", 0, "t0")) is None
    out = ledger.output(2, ChunkGenerated("a", 1, "other"))
    assert isinstance(out, TaskStatusUpdated)
    assert out.status is TaskStatus.Failed
    assert out.error is not None
    assert "diverged" in out.error
    assert ledger.output(2, ChunkGenerated("a", 2, "t2")) is None  # never spliced
    assert ledger.status(2, TaskStatusUpdated("a", TaskStatus.Cancelled), ending=False) is None


def test_resume_hands_over_what_was_delivered_and_continues_there() -> None:
    ledger = Ledger("r", default_recovery="resume")
    ledger.accept(gen("a"))
    ledger.hand_over("a", 1)
    run_to(ledger, "a", 1, 3)
    ledger.status(1, lost("a"), ending=True)
    ledger.ended(1, recover=True, cause=None, failure="killed")
    task, recovered = ledger.hand_over("a", 2)
    assert isinstance(task, Generate)
    assert task.resume_from == ("t0", "t1", "t2")
    assert recovered == TaskRecovered("a", 2, "resume", 3)
    ledger.acked("a", 2)
    assert ledger.output(2, ChunkGenerated("a", 3, "t3")) == ChunkGenerated("a", 3, "t3")


def test_a_task_running_on_every_dead_incarnation_is_quarantined() -> None:
    ledger = Ledger("r", default_recovery="replay", max_task_attempts=3)
    ledger.accept(gen("poison"))
    ledger.accept(gen("bystander"))
    for number in (1, 2, 3):
        ledger.hand_over("poison", number)
        ledger.hand_over("bystander", number)
        run_to(ledger, "poison", number, 1)
        ledger.acked("bystander", number)  # queued behind it, never Running
        ledger.status(number, lost("poison"), ending=True)
        ledger.status(number, lost("bystander"), ending=True)
        done = ledger.ended(number, recover=True, cause=None, failure="killed")
        if number < 3:
            assert done == []
    [quarantined] = done
    assert quarantined.task_id == "poison"
    assert quarantined.status is TaskStatus.Failed
    assert quarantined.error is not None
    assert quarantined.error.startswith("quarantined")
    assert "#1, #2, #3" in quarantined.error
    assert ledger.waiting() == ["bystander"]  # its budget untouched
    entry = ledger.get("bystander")
    assert entry is not None
    assert entry.deaths == []


def test_cancel_reaches_a_task_wherever_it_waits() -> None:
    ledger = Ledger("r", default_recovery="replay")
    ledger.accept(gen("w"))
    cancelled = ledger.cancel("w")
    assert cancelled is not None
    assert cancelled.status is TaskStatus.Cancelled
    ledger.accept(gen("h"))
    ledger.hand_over("h", 1)
    run_to(ledger, "h", 1, 1)
    assert ledger.cancel("h") is None  # its incarnation is told; its end decides
    ledger.status(1, lost("h"), ending=True)
    [done] = ledger.ended(1, recover=True, cause=None, failure="killed")
    assert done.status is TaskStatus.Cancelled  # never recovered once cancelled


def test_shutdown_fails_waiting_tasks_saying_so_and_ids_are_not_reused() -> None:
    ledger = Ledger("r")
    ledger.accept(gen("a"))
    [done] = ledger.fail_waiting("runner r shut down before a runner took the task")
    assert done.error is not None
    assert "shut down" in done.error
    with pytest.raises(DuplicateTaskError):
        ledger.accept(gen("a"))


def test_a_stopped_group_member_fails_tasks_with_its_cause_unless_recovered() -> None:
    ledger = Ledger("r")
    ledger.accept(gen("a"))
    ledger.hand_over("a", 1)
    run_to(ledger, "a", 1, 1)
    shutting = TaskStatusUpdated("a", TaskStatus.Cancelled, "runner shutting down")
    assert ledger.status(1, shutting, ending=True) is None
    [done] = ledger.ended(1, recover=True, cause="group g: member r0 failed", failure="stopped")
    assert done == TaskStatusUpdated("a", TaskStatus.Failed, "group g: member r0 failed")


def test_withdraw_only_a_task_never_handed_over() -> None:
    ledger = Ledger("r")
    ledger.accept(gen("a"))
    assert ledger.withdraw("a")
    ledger.accept(gen("b"))
    ledger.hand_over("b", 1)
    ledger.ended(1, recover=True, cause=None, failure="killed")
    assert not ledger.withdraw("b")  # it was accepted: it is owed a status
    assert ledger.fail_one("b", "gave up") is not None


def test_other_task_kinds_are_never_run_twice_once_acknowledged() -> None:
    ledger = Ledger("r", default_recovery="replay")
    ledger.accept(Shutdown(task_id="s"))
    ledger.hand_over("s", 1)
    ledger.acked("s", 1)
    ledger.status(1, lost("s"), ending=True)
    [done] = ledger.ended(1, recover=True, cause=None, failure="killed")
    assert done.status is TaskStatus.Failed


# ----------------------------------------------------------- random interleavings
TOKENS = 5


@dataclass
class Runner:
    """One incarnation as the ledger's caller sees it: what it holds and has streamed."""

    number: int
    cursor: dict[str, int] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)


ACTIONS = ("accept", "dispatch", "ack", "run", "chunk", "finish", "end", "cancel", "shutdown")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_interleavings_keep_one_status_and_each_index_once(data: st.DataObject) -> None:
    ledger = Ledger(
        "r",
        default_recovery=data.draw(st.sampled_from(["fail", "replay", "resume"])),
        max_task_attempts=data.draw(st.integers(1, 3)),
        requeue_unacknowledged=data.draw(st.booleans()),
    )
    runner = Runner(1)
    closing = False
    accepted: list[str] = []
    finals: dict[str, list[TaskStatusUpdated]] = defaultdict(list)
    chunks: dict[str, list[ChunkGenerated]] = defaultdict(list)

    def host(events: list[BaseEvent] | BaseEvent | None) -> None:
        items = events if isinstance(events, list) else [events]
        for ev in items:
            if isinstance(ev, ChunkGenerated):
                chunks[ev.task_id].append(ev)
            elif isinstance(ev, TaskStatusUpdated) and ev.status.terminal:
                finals[ev.task_id].append(ev)

    def pick(ids: set[str] | list[str]) -> str | None:
        pool = sorted(ids)
        return data.draw(st.sampled_from(pool)) if pool else None

    for step in range(data.draw(st.integers(5, 60))):
        action = data.draw(st.sampled_from(ACTIONS))
        live = set(runner.written) - runner.answered
        if action == "accept" and not closing:
            tid = f"t{step}"
            mode = data.draw(st.sampled_from([None, "fail", "replay", "resume"]))
            ledger.accept(gen(tid, mode, TOKENS))
            accepted.append(tid)
        elif action == "dispatch" and not closing:
            for tid in ledger.waiting():
                task, _ = ledger.hand_over(tid, runner.number)
                assert isinstance(task, Generate)
                if data.draw(st.booleans()):  # else: refused in the end window, unwritten
                    runner.written.add(tid)
                    runner.cursor[tid] = len(task.resume_from)
        elif action == "ack" and (tid := pick(live - runner.acked)) is not None:
            runner.acked.add(tid)
            ledger.acked(tid, runner.number)
        elif action == "run" and (tid := pick(runner.acked - runner.running - runner.answered)):
            runner.running.add(tid)
            host(
                ledger.status(
                    runner.number, TaskStatusUpdated(tid, TaskStatus.Running), ending=False
                )
            )
        elif action == "chunk" and (tid := pick(runner.running - runner.answered)) is not None:
            i = runner.cursor[tid]
            if i < TOKENS:
                runner.cursor[tid] = i + 1
                host(ledger.output(runner.number, ChunkGenerated(tid, i, f"w{i}")))
        elif action == "finish" and (tid := pick(runner.running - runner.answered)) is not None:
            runner.answered.add(tid)
            status = TaskStatus.Complete if runner.cursor[tid] == TOKENS else TaskStatus.Failed
            host(ledger.status(runner.number, TaskStatusUpdated(tid, status), ending=False))
        elif action == "cancel" and accepted:
            tid = data.draw(st.sampled_from(accepted))
            host(ledger.cancel(tid))
        elif action == "shutdown" and not closing:
            closing = True
            host(ledger.fail_waiting("shut down before a runner took the task"))
        elif action == "end":
            recover = not closing and data.draw(st.booleans())
            for tid in sorted(live):  # the end path fails what it held
                host(ledger.status(runner.number, lost(tid), ending=True))
            host(ledger.ended(runner.number, recover=recover, cause=None, failure="killed"))
            assert ledger.held_by(runner.number) == []  # each of its tasks was decided
            if not recover:
                closing = True
            runner = Runner(runner.number + 1)
    # the end: the last incarnation ends, no other comes
    for tid in sorted(set(runner.written) - runner.answered):
        host(ledger.status(runner.number, lost(tid), ending=True))
    host(ledger.ended(runner.number, recover=False, cause=None, failure="killed"))
    host(ledger.close("no runner will come"))

    assert len(ledger) == 0
    for tid in accepted:
        assert len(finals[tid]) == 1, (tid, finals[tid])
        indexes = [c.index for c in chunks[tid]]
        assert indexes == list(range(len(indexes))), (tid, indexes)  # once each, no gap
        assert all(c.text == f"w{c.index}" for c in chunks[tid])
        if finals[tid][0].status is TaskStatus.Complete:
            assert len(indexes) == TOKENS
