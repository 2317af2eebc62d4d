"""One incarnation's bookkeeping: the one place that decides what is re-queued (no processes)."""

from __future__ import annotations

import random

import pytest

from supervisor.protocol import RunnerFailed
from supervisor.restart.incarnation import Incarnation
from supervisor.restart.policy import GiveUp, Restart, RestartPolicy, RestartTracker, Stop

pytestmark = pytest.mark.anyio

DEATH = RunnerFailed(reason="signalled", error_message="killed")


def tracker(**kw: object) -> RestartTracker:
    return RestartTracker(RestartPolicy(jitter=0.0, **kw), random.Random(3))  # type: ignore[arg-type]


def failed(t: RestartTracker, requeues: bool = True) -> Incarnation:
    """An incarnation that failed after Ready, the policy's decision made."""
    inc = Incarnation(1, "r", requeues=requeues)
    t.on_ready(inc.became_ready())
    inc.failure = DEATH
    inc.decide(t, stopping=False)
    return inc


async def test_only_an_unacknowledged_task_of_a_failed_incarnation_is_held_back() -> None:
    inc = failed(tracker())
    assert isinstance(inc.decision, Restart)
    inc.handed_over("a")
    inc.handed_over("b")
    inc.acked("b")
    assert inc.hold_back_failed("a")
    assert not inc.hold_back_failed("b")  # acknowledged: at most once
    assert not inc.hold_back_failed("never-handed")
    assert inc.owes("a")
    assert not inc.owes("b")
    assert inc.take_requeued("a")
    assert not inc.take_requeued("a")  # taken once
    assert not inc.owes("a")


async def test_nothing_is_held_back_unless_the_policy_requeues() -> None:
    inc = failed(tracker(), requeues=False)
    assert isinstance(inc.decision, Restart)
    inc.handed_over("a")
    assert not inc.hold_back_failed("a")
    assert not inc.owes("a")


async def test_nothing_is_held_back_when_no_restart_follows() -> None:
    inc = failed(tracker(mode="never"))
    assert isinstance(inc.decision, GiveUp)
    inc.handed_over("a")
    assert not inc.hold_back_failed("a")  # nobody would take it: the host gets its Failed


async def test_a_live_incarnation_holds_nothing_back() -> None:
    inc = Incarnation(1, "r", requeues=True)
    inc.handed_over("a")
    assert not inc.hold_back_failed("a")  # no failure yet: a Failed is the task's own


async def test_the_decision_is_made_once() -> None:
    t = tracker()
    inc = failed(t)
    first = inc.decision
    assert inc.decide(t, stopping=True) is first  # a later ask changes nothing
    assert t.restarts == 1
    stopped = Incarnation(2, "r", requeues=False)
    assert isinstance(stopped.decide(t, stopping=True), Stop)
    assert stopped.phase == "stopped"


async def test_startup_ids_and_phase_before_a_process() -> None:
    inc = Incarnation(3, "r1", requeues=False)
    assert inc.startup_ids == ("r1:load:3", "r1:warmup:3")
    assert inc.phase == "restarting"
    assert not inc.takes_tasks
    assert not inc.healthy
    assert inc.detection_latency(DEATH) is None
