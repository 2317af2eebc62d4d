"""When an incarnation is due for recycling, and the policy fields that say so (no processes)."""

from __future__ import annotations

import random

import pytest

from supervisor.restart.policy import RSS_RECYCLE_SAMPLES, RestartPolicy
from supervisor.restart.recycle import RecycleCounter


def counter(seed: int = 1, **kw: object) -> RecycleCounter:
    return RecycleCounter(RestartPolicy(**kw), random.Random(seed))  # type: ignore[arg-type]


def test_nothing_to_count_by_default() -> None:
    c = counter()
    assert not c.active
    assert not any(c.task_ended() for _ in range(1000))
    assert not any(c.rss_sample(float(t), 10**12) for t in range(10))
    assert not c.due


def test_due_once_after_max_tasks() -> None:
    c = counter(max_tasks=3)
    assert [c.task_ended() for _ in range(6)] == [False, False, True, False, False, False]
    assert c.reason == "finished 3 tasks (max_tasks, this incarnation 3)"


def test_jitter_draws_a_limit_per_incarnation_within_bounds() -> None:
    limits = {counter(seed, max_tasks=10, max_tasks_jitter=5).task_limit for seed in range(200)}
    assert limits == set(range(10, 16))  # every value 10..15, nothing outside


def test_rss_must_stay_high_for_consecutive_fresh_samples() -> None:
    c = counter(max_rss=1000)
    high, low = 2000, 500
    samples = [(1.0, high), (2.0, high), (3.0, low)]  # a dip resets the streak
    assert not any(c.rss_sample(t, rss) for t, rss in samples)
    # The same reading seen twice (one poll, two looks) counts once.
    assert not c.rss_sample(4.0, high)
    assert not c.rss_sample(4.0, high)
    assert RSS_RECYCLE_SAMPLES == 3
    assert not c.rss_sample(5.0, high)
    assert c.rss_sample(6.0, high)
    assert not c.rss_sample(7.0, high)  # due once
    assert c.reason is not None
    assert "above max_rss" in c.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tasks", 0), ("max_tasks_jitter", -1), ("max_rss", 0), ("drain_timeout", -1.0)],
)
def test_bad_recycling_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RestartPolicy(**{field: value})  # type: ignore[arg-type]


def test_new_fields_carry_help() -> None:
    from dataclasses import fields

    helps = {f.name: f.metadata.get("help") for f in fields(RestartPolicy)}
    for name in ("max_tasks", "max_tasks_jitter", "max_rss", "drain_timeout"):
        assert helps[name], name
