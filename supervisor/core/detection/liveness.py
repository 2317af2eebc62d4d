"""Deciding whether a runner is alive, frozen, busy or wedged.

Pure decision logic over samples, so it can be reasoned about (and tested) apart
from the event loop. The supervisor feeds it readings of the shared counters and
psutil samples of the runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import psutil

#: CPU seconds a stale runner must burn between two checks to count as busy.
BUSY_CPU_EPSILON = 0.02


class Readings(Protocol):
    """What the monitors read of a runner (`ProcReader`, or `TreeReader` for a tree)."""

    @property
    def pid(self) -> int: ...

    @property
    def descendant_count(self) -> int: ...

    def read(self) -> tuple[str, float, int] | None:
        """(status, CPU seconds, RSS bytes) in one reading; None once it is gone."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """What psutil says about the runner right now."""

    status: str
    cpu_time: float
    rss: int
    when: float


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """The latest resource reading of a runner, for metrics."""

    rss: int
    cpu_percent: float
    when: float
    #: processes in the runner's tree besides the runner (counted in ``rss``)
    descendants: int = 0


def sample_process(proc: Readings) -> ProcessSample | None:
    """One cheap reading; ``None`` if the process is gone."""
    read = proc.read()
    if read is None:
        return None
    return ProcessSample(status=read[0], cpu_time=read[1], rss=read[2], when=time.monotonic())


def is_stopped(sample: ProcessSample) -> bool:
    return sample.status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def is_dead(sample: ProcessSample | None) -> bool:
    return sample is None or sample.status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


Verdict = Literal["ok", "waiting", "busy", "frozen", "dead"]


@dataclass(frozen=True, slots=True)
class HeartbeatVerdict:
    verdict: Verdict
    message: str = ""


class HeartbeatMonitor:
    """Debounced heartbeat check with a psutil second opinion.

    A stale heartbeat alone never kills: after ``stale_checks`` unchanged checks (at
    least 2) the process is classified. Stopped (``T``) is frozen, after that same
    debounce, so a short SIGSTOP followed by SIGCONT is survived; a zombie or a
    vanished process is dead at once; CPU time still advancing is busy (native code
    holding the GIL, a heavy import) and is given up to ``busy_grace``; no CPU
    progress is frozen.
    """

    def __init__(
        self,
        *,
        stale_checks: int,
        check_interval: float,
        busy_grace: float,
        start_timeout: float,
        started_at: float,
    ) -> None:
        # Debounce: a single missed check never kills, whatever the configuration.
        self.stale_checks = max(2, stale_checks)
        # cpu_times tick at 10 ms; a busy runner shows at least that per check.
        self.cpu_epsilon = min(BUSY_CPU_EPSILON, 0.25 * check_interval)
        self.check_interval = check_interval
        self.busy_grace = busy_grace
        self.start_timeout = start_timeout
        self.started_at = started_at
        self.last_value: float | None = None
        self.last_change = started_at
        self.stale = 0
        self.busy_since: float | None = None
        self._last_cpu: float | None = None
        self.last_sample: ProcessSample | None = None

    def age(self, value: float, now: float) -> float | None:
        """Seconds since the beat last changed as of the last `check`, given its value now.

        None before the first beat; 0 if it moved since the last check (it is alive
        now, and the check, not this reading, is what records when it changed).
        """
        if value <= 0:
            return None
        if value != self.last_value:
            return 0.0
        return now - self.last_change

    def check(
        self, value: float, now: float, sampler: Callable[[], ProcessSample | None]
    ) -> HeartbeatVerdict:
        """Judge one check. ``sampler`` (psutil) is only called when the beat is stale."""
        if value != self.last_value and value > 0:
            self.last_value = value
            self.last_change = now
            self.stale = 0
            self.busy_since = None
            self._last_cpu = None
            return HeartbeatVerdict("ok")
        sample = sampler()
        self.last_sample = sample
        if is_dead(sample):
            return HeartbeatVerdict("dead", "runner process is gone")
        assert sample is not None
        cpu = sample.cpu_time
        cpu_advanced = self._last_cpu is not None and cpu - self._last_cpu >= self.cpu_epsilon
        self._last_cpu = cpu

        if is_stopped(sample):
            # Stopped is not proof of death: a debugger, job control or a checkpoint can
            # SIGCONT it, so it gets the same debounce as any stale heartbeat. It is not
            # busy and has no start-up allowance: a stopped process makes no progress.
            self.stale += 1
            if self.stale >= self.stale_checks:
                return HeartbeatVerdict(
                    "frozen",
                    f"runner is stopped (state {sample.status!r}); "
                    f"heartbeat stale for {now - self.last_change:.1f}s",
                )
            return HeartbeatVerdict("waiting")

        if self.last_value is None:
            # Not started beating yet: interpreter start-up and unpickling.
            if now - self.started_at > self.start_timeout:
                return HeartbeatVerdict(
                    "frozen", f"runner did not start its heartbeat within {self.start_timeout:.0f}s"
                )
            return HeartbeatVerdict("waiting")

        self.stale += 1
        if self.stale < self.stale_checks:
            return HeartbeatVerdict("waiting")
        age = now - self.last_change
        if cpu_advanced:
            if self.busy_since is None:
                self.busy_since = now
            busy_for = now - self.busy_since
            if busy_for <= self.busy_grace:
                return HeartbeatVerdict(
                    "busy", f"heartbeat stale {age:.1f}s but CPU time advancing (busy)"
                )
            return HeartbeatVerdict(
                "frozen",
                f"heartbeat stale for {age:.1f}s; busy without a heartbeat for "
                f"{busy_for:.1f}s, beyond busy_grace={self.busy_grace:g}s",
            )
        return HeartbeatVerdict(
            "frozen",
            f"heartbeat stale for {age:.1f}s and no CPU progress "
            f"(state {sample.status!r}): the runner is frozen",
        )


class ProgressMonitor:
    """Per-phase deadline on the time of the main loop's last progress tick.

    The runner stamps each tick with CLOCK_MONOTONIC (system-wide on Linux), so the
    supervisor knows when progress stopped, not merely that it has not seen any
    since its last look: it can wake exactly at the deadline instead of up to one
    polling interval after it.
    """

    def __init__(self, now: float) -> None:
        self.floor = now

    def reset(self, now: float) -> None:
        """A new phase starts now: earlier silence does not count against it."""
        self.floor = now

    def check(
        self, last_tick: float, now: float, deadline: float, extend_until: float
    ) -> tuple[float | None, float]:
        """``(seconds without progress, 0)`` past the deadline, else ``(None, seconds left)``."""
        since = max(last_tick, self.floor)
        due = max(since + deadline, extend_until)
        if now > due:
            return now - since, 0.0
        return None, due - now


class ResourceMeter:
    """Memory (of the whole tree, with a `TreeReader`) and CPU percent of a runner."""

    def __init__(self, proc: Readings) -> None:
        self._proc = proc
        self._cpu: tuple[int, float, float] | None = None

    def sample(self) -> ResourceSample | None:
        read = self._proc.read()
        pid = self._proc.pid  # after the read: a keeper's reader turns to the runner once
        if read is None:
            return None
        _, cpu, rss = read
        now = time.monotonic()
        pct = 0.0
        if self._cpu is not None and self._cpu[0] == pid and now > self._cpu[2]:
            pct = 100.0 * (cpu - self._cpu[1]) / (now - self._cpu[2])
        self._cpu = (pid, cpu, now)
        return ResourceSample(
            rss=rss, cpu_percent=pct, when=now, descendants=self._proc.descendant_count
        )
