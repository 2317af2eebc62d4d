"""One incarnation's record: its decision, its phase, whether it is ending (no processes)."""

from __future__ import annotations

import random

import pytest

from supervisor.core.statemachine import IllegalTransition, check_table
from supervisor.protocol import RunnerFailed
from supervisor.restart.incarnation import INCARNATION_TABLE, Incarnation, IncState
from supervisor.restart.policy import RestartPolicy, RestartTracker, Stop

pytestmark = pytest.mark.anyio

DEATH = RunnerFailed(reason="signalled", error_message="killed")


def tracker(**kw: object) -> RestartTracker:
    return RestartTracker(RestartPolicy(jitter=0.0, **kw), random.Random(3))  # type: ignore[arg-type]


def failed(t: RestartTracker) -> Incarnation:
    """An incarnation that failed after Ready, the policy's decision made."""
    inc = Incarnation(1, "r")
    t.on_ready(inc.became_ready())
    inc.failed(DEATH)
    inc.decide(t, stopping=False)
    return inc


async def test_a_failed_or_stopped_incarnation_is_ending() -> None:
    inc = Incarnation(1, "r")
    assert not inc.ending  # a live incarnation: a task's Failed is the task's own
    inc.stop("group g: member r0 failed")
    assert inc.ending
    assert failed(tracker()).ending


async def test_the_decision_is_made_once() -> None:
    t = tracker()
    inc = failed(t)
    first = inc.decision
    assert inc.decide(t, stopping=True) is first  # a later ask changes nothing
    assert t.restarts == 1
    stopped = Incarnation(2, "r")
    assert isinstance(stopped.decide(t, stopping=True), Stop)
    assert stopped.phase == "stopped"


async def test_startup_ids_and_phase_before_a_process() -> None:
    inc = Incarnation(3, "r1")
    assert inc.startup_ids == ("r1:prepare:3", "r1:load:3", "r1:warmup:3")
    assert inc.phase == "restarting"
    assert not inc.takes_tasks
    assert not inc.healthy
    assert inc.detection_latency(DEATH) is None


async def test_the_incarnation_table_is_complete_and_its_moves_are_one_way() -> None:
    check_table(INCARNATION_TABLE, IncState)
    inc = Incarnation(1, "r")
    inc.became_ready()
    assert inc.state is IncState.READY
    inc.retire("replace")
    assert inc.state is IncState.RETIRED
    assert not inc.takes_tasks
    inc.stop("drain timeout")
    inc.stop("a later cause")  # the first one stays
    assert inc.stop_cause == "drain timeout"
    inc.failed(DEATH)
    inc.ended()
    assert inc.state is IncState.ENDED
    assert inc.settled.is_set()
    with pytest.raises(IllegalTransition):
        inc.life.transition(IncState.READY)
