"""How often the runner beats by default: half the window of stale checks that makes
it frozen, and at least every 1.5 checks; a set interval must fit in that window."""

from __future__ import annotations

import pytest

from supervisor import SupervisorConfig


@pytest.mark.parametrize(
    ("stale_checks", "interval", "beat"),
    [(3, 0.5, 0.75), (2, 0.5, 0.5), (1, 0.5, 0.5), (5, 0.5, 0.75), (8, 0.2, 0.3), (3, 2.0, 3.0)],
)
def test_the_default_beat(stale_checks: int, interval: float, beat: float) -> None:
    config = SupervisorConfig(
        heartbeat_stale_checks=stale_checks, heartbeat_check_interval=interval
    )
    assert config.beat_interval == pytest.approx(beat)
    # A beat that late again still lands in every window of stale checks.
    assert 2 * config.beat_interval <= config.stale_window + 1e-9
    assert config.freeze_bound == interval * (stale_checks + 1)


def test_a_set_beat_is_kept_and_must_fit_in_the_window() -> None:
    assert SupervisorConfig(heartbeat_interval=0.1).beat_interval == 0.1
    assert SupervisorConfig(heartbeat_interval=1.0).beat_interval == 1.0  # < 3 x 0.5 s
    with pytest.raises(ValueError, match="heartbeat_interval must be shorter"):
        SupervisorConfig(heartbeat_interval=1.5)
    with pytest.raises(ValueError, match="heartbeat_interval must be shorter"):
        SupervisorConfig(heartbeat_interval=1.0, heartbeat_stale_checks=2)
