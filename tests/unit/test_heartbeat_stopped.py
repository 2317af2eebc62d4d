"""HeartbeatMonitor on a stopped process: ``stale_checks`` is the debounce, as for any freeze.

Pure: the monitor is fed heartbeat values and made-up psutil samples, one per check.
"""

from __future__ import annotations

import psutil
import pytest

from supervisor.core.detection.liveness import HeartbeatMonitor, HeartbeatVerdict, ProcessSample

INTERVAL = 0.5


def _monitor(stale_checks: int) -> HeartbeatMonitor:
    return HeartbeatMonitor(
        stale_checks=stale_checks,
        check_interval=INTERVAL,
        busy_grace=30.0,
        start_timeout=60.0,
        started_at=0.0,
    )


def _sample(status: str, now: float) -> ProcessSample:
    return ProcessSample(status=status, cpu_time=1.0, rss=1 << 20, when=now)


class Clock:
    """Drives a monitor one check at a time, like the supervisor's loop."""

    def __init__(self, monitor: HeartbeatMonitor) -> None:
        self.monitor = monitor
        self.now = 0.0
        self.beat = 0.0

    def check(self, *, beating: bool, status: str = psutil.STATUS_SLEEPING) -> HeartbeatVerdict:
        self.now += INTERVAL
        if beating:
            self.beat += 1.0
        now = self.now
        return self.monitor.check(self.beat, now, lambda: _sample(status, now))

    def stopped_checks_until_frozen(self, limit: int = 50) -> int:
        for n in range(1, limit + 1):
            verdict = self.check(beating=False, status=psutil.STATUS_STOPPED)
            if verdict.verdict == "frozen":
                assert "stopped" in verdict.message
                return n
            assert verdict.verdict == "waiting", verdict
        raise AssertionError(f"a stopped process was never judged frozen in {limit} checks")


@pytest.mark.parametrize(("stale_checks", "expected"), [(1, 2), (2, 2), (3, 3), (5, 5), (8, 8)])
def test_stopped_process_is_frozen_after_stale_checks_with_a_floor_of_two(
    stale_checks: int, expected: int
) -> None:
    clock = Clock(_monitor(stale_checks))
    assert clock.check(beating=True).verdict == "ok"
    assert clock.stopped_checks_until_frozen() == expected


def test_short_stop_then_continue_is_survived_and_the_count_starts_over() -> None:
    clock = Clock(_monitor(5))
    assert clock.check(beating=True).verdict == "ok"
    # SIGSTOP for 1.4 s with checks 0.5 s apart: at most 3 stale checks see it stopped.
    for _ in range(3):
        assert clock.check(beating=False, status=psutil.STATUS_STOPPED).verdict == "waiting"
    # SIGCONT: the heartbeat thread may not have beaten before the next check.
    assert clock.check(beating=False, status=psutil.STATUS_RUNNING).verdict == "waiting"
    assert clock.check(beating=True).verdict == "ok"
    # A later stop gets the whole debounce again, not what was left of it.
    assert clock.stopped_checks_until_frozen() == 5


def test_stopped_while_traced_counts_as_stopped() -> None:
    clock = Clock(_monitor(4))
    assert clock.check(beating=True).verdict == "ok"
    verdicts = [
        clock.check(beating=False, status=psutil.STATUS_TRACING_STOP).verdict for _ in range(4)
    ]
    assert verdicts == ["waiting", "waiting", "waiting", "frozen"]


def test_stopped_before_the_first_beat_is_debounced_too() -> None:
    clock = Clock(_monitor(3))
    verdicts = [clock.check(beating=False, status=psutil.STATUS_STOPPED).verdict for _ in range(3)]
    assert verdicts == ["waiting", "waiting", "frozen"]


def test_a_dead_process_is_not_debounced() -> None:
    clock = Clock(_monitor(5))
    assert clock.check(beating=True).verdict == "ok"
    assert clock.check(beating=False, status=psutil.STATUS_ZOMBIE).verdict == "dead"
