"""The pure liveness judges: heartbeat staleness, progress deadlines, resource readings."""

from __future__ import annotations

from collections.abc import Callable

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.detection.liveness import (
    BUSY_CPU_EPSILON,
    HeartbeatMonitor,
    ProcessSample,
    ProgressMonitor,
    ResourceMeter,
    sample_process,
)


def monitor(**kw: float) -> HeartbeatMonitor:
    args: dict[str, float] = {
        "stale_checks": 3,
        "check_interval": 0.1,
        "busy_grace": 1.0,
        "start_timeout": 5.0,
        "started_at": 0.0,
    }
    args.update(kw)
    return HeartbeatMonitor(
        stale_checks=int(args["stale_checks"]),
        check_interval=args["check_interval"],
        busy_grace=args["busy_grace"],
        start_timeout=args["start_timeout"],
        started_at=args["started_at"],
    )


def sample(status: str = psutil.STATUS_SLEEPING, cpu: float = 1.0) -> ProcessSample:
    return ProcessSample(status=status, cpu_time=cpu, rss=1 << 20, when=0.0)


def fixed(s: ProcessSample | None) -> Callable[[], ProcessSample | None]:
    return lambda: s


def never() -> ProcessSample | None:
    raise AssertionError("a fresh heartbeat must not cost a process sample")


class Cpu:
    """A sampler whose CPU time grows by ``step`` per call."""

    def __init__(self, step: float, status: str = psutil.STATUS_RUNNING) -> None:
        self.cpu = 0.0
        self.step = step
        self.status = status

    def __call__(self) -> ProcessSample:
        self.cpu += self.step
        return sample(self.status, self.cpu)


# ------------------------------------------------------------------ heartbeat
def test_a_changing_heartbeat_is_ok_without_sampling_the_process() -> None:
    m = monitor()
    for i in range(1, 20):
        assert m.check(float(i), now=i * 0.1, sampler=never).verdict == "ok"
    assert m.last_value == 19.0
    assert m.stale == 0


def test_zero_is_not_a_beat() -> None:
    m = monitor()
    assert m.check(0.0, now=0.1, sampler=fixed(sample())).verdict == "waiting"
    assert m.last_value is None


def test_no_cpu_progress_is_frozen_after_stale_checks_and_not_before() -> None:
    m = monitor(stale_checks=3)
    assert m.check(1.0, now=0.1, sampler=never).verdict == "ok"
    idle = fixed(sample(cpu=5.0))
    assert [m.check(1.0, now=0.1 * k, sampler=idle).verdict for k in (2, 3)] == ["waiting"] * 2
    v = m.check(1.0, now=0.4, sampler=idle)
    assert v.verdict == "frozen"
    assert "no CPU progress" in v.message
    assert "stale for 0.3s" in v.message  # measured from the last change, not the start


@pytest.mark.parametrize("configured", [0, 1, 2])
def test_one_missed_check_never_kills_whatever_the_configuration(configured: int) -> None:
    m = monitor(stale_checks=configured)
    assert m.stale_checks == 2
    m.check(1.0, now=0.1, sampler=never)
    idle = fixed(sample(cpu=5.0))
    assert m.check(1.0, now=0.2, sampler=idle).verdict == "waiting"
    assert m.check(1.0, now=0.3, sampler=idle).verdict == "frozen"


def test_a_beat_after_staleness_starts_the_count_again() -> None:
    m = monitor(stale_checks=3)
    m.check(1.0, now=0.1, sampler=never)
    idle = fixed(sample(cpu=5.0))
    m.check(1.0, now=0.2, sampler=idle)
    m.check(1.0, now=0.3, sampler=idle)
    assert m.check(2.0, now=0.4, sampler=never).verdict == "ok"
    assert m.check(2.0, now=0.5, sampler=idle).verdict == "waiting"
    assert m.check(2.0, now=0.6, sampler=idle).verdict == "waiting"
    assert m.check(2.0, now=0.7, sampler=idle).verdict == "frozen"


@pytest.mark.parametrize("gone", [None, sample(psutil.STATUS_ZOMBIE), sample(psutil.STATUS_DEAD)])
def test_a_vanished_or_zombie_process_is_dead_at_the_first_stale_check(
    gone: ProcessSample | None,
) -> None:
    m = monitor()
    m.check(1.0, now=0.1, sampler=never)
    v = m.check(1.0, now=0.2, sampler=fixed(gone))
    assert v.verdict == "dead"
    assert m.last_sample == gone


@pytest.mark.parametrize("state", [psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP])
def test_a_stopped_process_is_frozen_after_the_configured_stale_checks(state: str) -> None:
    m = monitor(stale_checks=3)  # a stop is judged like any stale heartbeat
    m.check(1.0, now=0.1, sampler=never)
    stopped = fixed(sample(state))
    assert m.check(1.0, now=0.2, sampler=stopped).verdict == "waiting"
    assert m.check(1.0, now=0.3, sampler=stopped).verdict == "waiting"
    v = m.check(1.0, now=0.4, sampler=stopped)
    assert v.verdict == "frozen"
    assert f"state {state!r}" in v.message


def test_a_runner_that_never_beats_is_frozen_after_start_timeout() -> None:
    m = monitor(start_timeout=5.0, started_at=100.0)
    alive = Cpu(step=1.0)  # even busy: start-up has its own bound
    assert all(
        m.check(0.0, now=100.0 + t, sampler=alive).verdict == "waiting" for t in (1.0, 3.0, 5.0)
    )
    v = m.check(0.0, now=105.1, sampler=alive)
    assert v.verdict == "frozen"
    assert "did not start its heartbeat within 5s" in v.message


def test_busy_cpu_is_given_busy_grace_then_frozen() -> None:
    # Binary-exact times: 1/8 s checks, busy_grace 1 s.
    m = monitor(stale_checks=2, busy_grace=1.0, check_interval=0.125)
    m.check(1.0, now=0.0, sampler=never)
    busy = Cpu(step=0.125)
    verdicts = [m.check(1.0, now=0.125 * k, sampler=busy) for k in range(1, 12)]
    # The first stale check has no earlier CPU reading to compare with; the second
    # sees CPU advancing (busy from then, t=0.25) and busy lasts busy_grace, to t=1.25.
    assert [v.verdict for v in verdicts] == ["waiting"] + ["busy"] * 9 + ["frozen"]
    assert "CPU time advancing" in verdicts[1].message
    assert "busy without a heartbeat for 1.1s, beyond busy_grace=1s" in verdicts[-1].message


def test_cpu_below_the_tick_epsilon_is_not_busy() -> None:
    m = monitor(stale_checks=2, check_interval=1.0)
    assert m.cpu_epsilon == BUSY_CPU_EPSILON
    m.check(1.0, now=0.0, sampler=never)
    crawl = Cpu(step=BUSY_CPU_EPSILON / 2)
    assert m.check(1.0, now=1.0, sampler=crawl).verdict == "waiting"
    assert m.check(1.0, now=2.0, sampler=crawl).verdict == "frozen"


def test_short_check_intervals_lower_the_cpu_epsilon() -> None:
    assert monitor(check_interval=0.04).cpu_epsilon == pytest.approx(0.01)


def test_a_beat_clears_busy() -> None:
    m = monitor(stale_checks=2, busy_grace=0.5)
    m.check(1.0, now=0.0, sampler=never)
    busy = Cpu(step=0.1)
    for k in range(1, 5):
        m.check(1.0, now=0.1 * k, sampler=busy)
    assert m.busy_since is not None
    assert m.check(2.0, now=0.5, sampler=never).verdict == "ok"
    assert m.busy_since is None


# ------------------------------------------------------------------- progress
def test_progress_deadline_counts_from_the_last_tick() -> None:
    p = ProgressMonitor(now=0.0)
    assert p.check(last_tick=10.0, now=12.0, deadline=5.0, extend_until=0.0) == (None, 3.0)
    stalled, left = p.check(last_tick=10.0, now=16.0, deadline=5.0, extend_until=0.0)
    assert (stalled, left) == (6.0, 0.0)


def test_silence_before_a_reset_does_not_count() -> None:
    p = ProgressMonitor(now=0.0)
    p.reset(100.0)
    assert p.check(last_tick=1.0, now=104.0, deadline=5.0, extend_until=0.0) == (None, 1.0)
    assert p.check(last_tick=1.0, now=106.0, deadline=5.0, extend_until=0.0) == (6.0, 0.0)


def test_an_extension_moves_the_deadline() -> None:
    p = ProgressMonitor(now=0.0)
    assert p.check(last_tick=0.0, now=8.0, deadline=5.0, extend_until=20.0) == (None, 12.0)
    assert p.check(last_tick=0.0, now=21.0, deadline=5.0, extend_until=20.0) == (21.0, 0.0)


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(floor=finite, tick=finite, now=finite, deadline=finite, extend=finite)
def test_progress_either_stalled_past_due_or_time_left(
    floor: float, tick: float, now: float, deadline: float, extend: float
) -> None:
    p = ProgressMonitor(now=floor)
    stalled, left = p.check(last_tick=tick, now=now, deadline=deadline, extend_until=extend)
    due = max(max(tick, floor) + deadline, extend)
    if stalled is None:
        assert now <= due
        assert left == pytest.approx(due - now)
        assert left >= 0
    else:
        assert now > due
        assert left == 0.0
        assert stalled == pytest.approx(now - max(tick, floor))
        assert stalled > 0


# ------------------------------------------------------------------ resources
class FakeReader:
    """Scripted /proc readings: CPU seconds and RSS per call; None once gone."""

    pid = 4242
    descendant_count = 0

    def __init__(self, readings: list[tuple[str, float, int] | None]) -> None:
        self.readings = readings

    def read(self) -> tuple[str, float, int] | None:
        return self.readings.pop(0)


def test_resource_meter_cpu_percent_from_successive_readings() -> None:
    reader = FakeReader([("R", 1.0, 100), ("R", 1.5, 200), ("R", 1.5, 300)])
    meter = ResourceMeter(reader)  # type: ignore[arg-type]
    first = meter.sample()
    assert first is not None
    assert (first.rss, first.cpu_percent) == (100, 0.0)  # nothing to compare with yet
    second = meter.sample()
    assert second is not None
    assert second.rss == 200
    assert second.cpu_percent == pytest.approx(100 * 0.5 / (second.when - first.when))
    third = meter.sample()
    assert third is not None
    assert third.cpu_percent == 0.0


def test_resource_meter_of_a_gone_process_is_none() -> None:
    meter = ResourceMeter(FakeReader([None]))  # type: ignore[arg-type]
    assert meter.sample() is None


def test_sample_process_reads_status_cpu_and_rss() -> None:
    s = sample_process(FakeReader([("T", 2.5, 4096)]))  # type: ignore[arg-type]
    assert s is not None
    assert (s.status, s.cpu_time, s.rss) == ("T", 2.5, 4096)
    assert sample_process(FakeReader([None])) is None  # type: ignore[arg-type]
