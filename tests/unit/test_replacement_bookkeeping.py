"""A retired incarnation's bookkeeping: its decision, what it takes (tasks: the ledger's)."""

from __future__ import annotations

import random

import pytest

from supervisor.restart.incarnation import Incarnation
from supervisor.restart.policy import Replace, RestartPolicy, RestartTracker

pytestmark = pytest.mark.anyio


def healthy() -> Incarnation:
    inc = Incarnation(1, "r")
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
