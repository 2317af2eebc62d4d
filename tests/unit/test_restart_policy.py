"""The pure restart calculator: backoff growth, reset, intensity, crash loop (no processes)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.restart.policy import (
    RESTART_MODES,
    GiveUp,
    Restart,
    RestartPolicy,
    RestartTracker,
    Stop,
)

NAN = float("nan")


def tracker(**kw: object) -> RestartTracker:
    defaults: dict[str, object] = {"jitter": 0.0, "max_restarts": 100, "restart_window": 60.0}
    defaults.update(kw)
    return RestartTracker(RestartPolicy(**defaults), random.Random(7))  # type: ignore[arg-type]


def fail_after_ready(t: RestartTracker, now: float, uptime: float = 0.1) -> Restart | GiveUp | Stop:
    t.on_ready(now - uptime)
    return t.on_end(now, failed=True, reached_ready=True)


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    t = tracker(backoff_base=0.5, backoff_factor=2.0, backoff_cap=5.0)
    delays = []
    for i in range(8):
        d = fail_after_ready(t, now=float(i))
        assert isinstance(d, Restart)
        delays.append(d.delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert t.restarts == 8


def test_backoff_resets_after_a_healthy_period() -> None:
    t = tracker(backoff_base=1.0, backoff_cap=60.0, healthy_after=30.0)
    assert [fail_after_ready(t, float(i)).delay for i in range(3)] == [1.0, 2.0, 4.0]  # type: ignore[union-attr]
    # Up for 29 s: not healthy long enough, backoff keeps growing.
    assert fail_after_ready(t, 100.0, uptime=29.0) == Restart(delay=8.0, attempt=4)
    # Up for 30 s: healthy, back to the base.
    assert fail_after_ready(t, 200.0, uptime=30.0) == Restart(delay=1.0, attempt=5)
    assert fail_after_ready(t, 201.0) == Restart(delay=2.0, attempt=6)


def test_zero_backoff_restarts_at_once() -> None:
    t = tracker(backoff_base=0.0, jitter=0.5)
    assert all(fail_after_ready(t, float(i)).delay == 0.0 for i in range(5))  # type: ignore[union-attr]


def test_jitter_stays_within_its_fraction_and_the_cap() -> None:
    p = RestartPolicy(backoff_base=1.0, backoff_cap=3.0, jitter=0.25, max_restarts=10**6)
    t = RestartTracker(p, random.Random(1))
    seen = set()
    for k in range(2000):
        d = t.jittered(t.backoff(k % 3))
        base = t.backoff(k % 3)
        assert base * 0.75 - 1e-9 <= d <= min(3.0, base * 1.25) + 1e-9
        seen.add(round(d, 3))
    assert len(seen) > 100  # it does vary


def test_huge_exponents_do_not_overflow() -> None:
    t = tracker(backoff_base=0.1, backoff_cap=30.0)
    assert t.backoff(10_000) == 30.0


def test_intensity_gives_up_after_max_restarts_within_the_window() -> None:
    t = tracker(backoff_base=0.0, max_restarts=3, restart_window=10.0)
    assert [type(fail_after_ready(t, now)) for now in (0.0, 1.0, 2.0)] == [Restart] * 3
    d = fail_after_ready(t, 3.0)
    assert d == GiveUp("gave up after 3 restarts in 10 s")


def test_intensity_window_slides() -> None:
    t = tracker(backoff_base=0.0, max_restarts=2, restart_window=10.0)
    assert isinstance(fail_after_ready(t, 0.0), Restart)
    assert isinstance(fail_after_ready(t, 5.0), Restart)
    # The restart at t=0 left the window at t=10: one in the window, one allowed.
    assert isinstance(fail_after_ready(t, 10.5), Restart)
    assert isinstance(fail_after_ready(t, 14.0), GiveUp)


def test_max_restarts_zero_gives_up_on_the_first_failure() -> None:
    t = tracker(max_restarts=0)
    assert fail_after_ready(t, 1.0) == GiveUp("gave up after 0 restarts in 60 s")


def test_crash_loop_during_startup_stops_early() -> None:
    t = tracker(backoff_base=0.0, crash_loop_threshold=3, max_restarts=100)
    assert isinstance(t.on_end(0.0, failed=True, reached_ready=False), Restart)
    assert isinstance(t.on_end(1.0, failed=True, reached_ready=False), Restart)
    d = t.on_end(2.0, failed=True, reached_ready=False)
    assert isinstance(d, GiveUp)
    assert d.reason == "crash loop: 3 consecutive failures during load/warm-up"


def test_reaching_ready_resets_the_crash_loop_count() -> None:
    t = tracker(backoff_base=0.0, crash_loop_threshold=2)
    assert isinstance(t.on_end(0.0, failed=True, reached_ready=False), Restart)
    t.on_ready(0.5)
    assert isinstance(t.on_end(1.0, failed=True, reached_ready=True), Restart)
    assert isinstance(t.on_end(2.0, failed=True, reached_ready=False), Restart)
    assert isinstance(t.on_end(3.0, failed=True, reached_ready=False), GiveUp)


@pytest.mark.parametrize(
    ("mode", "failed", "expected"),
    [
        ("never", True, GiveUp),
        ("never", False, Stop),
        ("on-failure", True, Restart),
        ("on-failure", False, Stop),
        ("always", True, Restart),
        ("always", False, Restart),
    ],
)
def test_modes(mode: str, failed: bool, expected: type) -> None:
    t = tracker(mode=mode)
    t.on_ready(0.0)
    assert isinstance(t.on_end(1.0, failed=failed, reached_ready=True), expected)


def test_clean_restarts_in_always_mode_count_toward_intensity_but_not_backoff() -> None:
    t = tracker(mode="always", backoff_base=1.0, max_restarts=2, restart_window=60.0)
    t.on_ready(0.0)
    assert t.on_end(1.0, failed=False, reached_ready=True) == Restart(delay=1.0, attempt=1)
    t.on_ready(1.5)
    assert t.on_end(2.0, failed=False, reached_ready=True) == Restart(delay=1.0, attempt=2)
    assert isinstance(t.on_end(3.0, failed=False, reached_ready=True), GiveUp)


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "sometimes"},
        {"backoff_base": -1.0},
        {"backoff_cap": float("inf")},
        {"jitter": 1.5},
        {"max_restarts": -1},
        {"restart_window": 0.0},
        {"crash_loop_threshold": 0},
        {"backoff_factor": 0.5},
        {"backoff_factor": float("inf")},
        {"backoff_factor": NAN},
        {"backoff_base": NAN},
        {"backoff_base": float("inf")},
        {"backoff_cap": -0.1},
        {"healthy_after": -1.0},
        {"healthy_after": NAN},
        {"jitter": -0.1},
        {"jitter": NAN},
        {"restart_window": -1.0},
        {"restart_window": NAN},
        {"ready_wait": 0.0},
        {"ready_wait": NAN},
    ],
    ids=repr,
)
def test_bad_policies_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=f"RestartPolicy.{next(iter(kw))}"):
        RestartPolicy(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {"backoff_base": 0.0},
        {"backoff_cap": 0.0},
        {"jitter": 0.0},
        {"jitter": 1.0},
        {"max_restarts": 0},
        {"crash_loop_threshold": 1},
        {"backoff_factor": 1.0},
        {"healthy_after": 0.0},
    ],
    ids=repr,
)
def test_edge_values_are_accepted(kw: dict[str, object]) -> None:
    policy = RestartPolicy(**kw)  # type: ignore[arg-type]
    assert getattr(policy, next(iter(kw))) == next(iter(kw.values()))


# ------------------------------------------------------------------ properties
policies = st.builds(
    RestartPolicy,
    mode=st.sampled_from(RESTART_MODES),
    backoff_base=st.floats(min_value=0, max_value=100),
    backoff_cap=st.floats(min_value=0, max_value=1000),
    backoff_factor=st.floats(min_value=1, max_value=1e6),
    jitter=st.floats(min_value=0, max_value=1),
    healthy_after=st.floats(min_value=0, max_value=100),
    max_restarts=st.integers(min_value=0, max_value=10),
    restart_window=st.floats(min_value=0.001, max_value=1000),
    crash_loop_threshold=st.integers(min_value=1, max_value=5),
)
#: One incarnation: (seconds until Ready or None if it never got there, seconds
#: from then until it ended, whether it failed).
lives = st.lists(
    st.tuples(
        st.none() | st.floats(min_value=0, max_value=50),
        st.floats(min_value=0, max_value=50),
        st.booleans(),
    ),
    max_size=40,
)


@given(policies, lives, st.integers(min_value=0, max_value=2**32))
def test_any_history_keeps_the_policy_promises(
    policy: RestartPolicy, history: list[tuple[float | None, float, bool]], seed: int
) -> None:
    t = RestartTracker(policy, random.Random(seed))
    now = 0.0
    granted: list[float] = []
    startup_failures = 0
    for to_ready, uptime, failed in history:
        if to_ready is not None:
            now += to_ready
            t.on_ready(now)
            startup_failures = 0
        now += uptime
        decision = t.on_end(now, failed=failed, reached_ready=to_ready is not None)
        if failed and to_ready is None:
            startup_failures += 1
        if isinstance(decision, Restart):
            # The delay is a non-negative number never above the cap.
            assert 0.0 <= decision.delay <= policy.backoff_cap
            assert decision.attempt == len(granted) + 1
            granted.append(now)
            # Intensity: never more than max_restarts restarts within one window.
            recent = [g for g in granted if g > now - policy.restart_window]
            assert len(recent) <= policy.max_restarts
            assert policy.mode != "never"
            assert failed or policy.mode == "always"
        elif isinstance(decision, Stop):
            assert not failed
            assert policy.mode != "always"
            break
        else:
            assert failed or policy.mode == "always"
            if decision.reason.startswith("crash loop"):
                assert startup_failures >= policy.crash_loop_threshold
            break
        now += decision.delay
    assert t.restarts == len(granted)


def test_next_backoff_bounds_the_delay_the_next_restart_gets() -> None:
    policy = RestartPolicy(
        backoff_base=0.5, backoff_factor=2.0, backoff_cap=3.0, jitter=0.2, max_restarts=10
    )
    tracker = RestartTracker(policy, random.Random(7))
    for _ in range(6):
        promised = tracker.next_backoff()
        decision = tracker.on_end(100.0, failed=True, reached_ready=True)
        assert isinstance(decision, Restart)
        assert decision.delay <= promised <= policy.backoff_cap
