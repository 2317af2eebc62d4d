"""A retired or stopped incarnation's bookkeeping: what it takes, what its tasks end as."""

from __future__ import annotations

import random

import pytest

from supervisor.protocol import TaskStatus, TaskStatusUpdated
from supervisor.restart.incarnation import Incarnation
from supervisor.restart.policy import Replace, RestartPolicy, RestartTracker

pytestmark = pytest.mark.anyio


def healthy() -> Incarnation:
    inc = Incarnation(1, "r", requeues=True)
    inc.became_ready()
    return inc


async def test_a_retired_incarnation_has_its_decision_and_shows_restarting() -> None:
    inc = healthy()
    inc.retire("recycle")
    tracker = RestartTracker(RestartPolicy(), random.Random(1))
    assert inc.decide(tracker, stopping=False) == Replace("recycle")
    assert tracker.restarts == 0  # outside the budget
    assert inc.reason == "recycle"
    assert inc.phase == "restarting"
    assert not inc.takes_tasks


async def test_tasks_left_by_a_stop_fail_with_its_cause_unless_complete_or_cancelled() -> None:
    inc = healthy()
    cancelled = TaskStatusUpdated("t", TaskStatus.Cancelled, "runner shutting down")
    assert inc.final_status(cancelled) is cancelled  # nothing stopped it: as the runner said
    inc.stop_cause = "group g: member r0 failed"
    assert inc.final_status(cancelled) == TaskStatusUpdated(
        "t", TaskStatus.Failed, "group g: member r0 failed"
    )
    done = TaskStatusUpdated("d", TaskStatus.Complete)
    assert inc.final_status(done) is done
    inc.host_cancelled.add("h")
    mine = TaskStatusUpdated("h", TaskStatus.Cancelled)
    assert inc.final_status(mine) is mine  # the host's own cancel stays a cancel


async def test_an_unacknowledged_task_of_a_stopped_incarnation_is_requeued() -> None:
    inc = healthy()
    inc.handed_over("u")
    inc.retire("replace")
    assert not inc.hold_back_failed("u")  # retired, but not stopped nor failed
    inc.stop_cause = "drain timeout"
    assert inc.hold_back_failed("u")
    assert inc.take_requeued("u")
