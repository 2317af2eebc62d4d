"""Classifying a runner's end, the progress phases, and the heartbeat's age (no processes)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from supervisor.config import SupervisorConfig
from supervisor.core import verdict
from supervisor.core.detection.interface import EndCause
from supervisor.core.detection.liveness import HeartbeatMonitor
from supervisor.core.detection.watches import phase_deadline
from supervisor.core.diagnostics import OutputCapture
from supervisor.core.evidence import OomEvidence
from supervisor.protocol import (
    CrashReport,
    RunnerFailed,
    RunnerIdle,
    RunnerLoading,
    RunnerReady,
    RunnerRunning,
    RunnerShutdown,
    RunnerShuttingDown,
    RunnerWarmingUp,
)

CONFIG = SupervisorConfig(memory_limit=1000 * 2**20)
MiB = 2**20


@contextmanager
def captured() -> Iterator[OutputCapture]:
    """A capture that already read a short traceback and some chatter (close needs a loop)."""
    r, w = os.pipe()
    os.write(w, b"loading weights\nTraceback (most recent call last):\n  File 'x'\nBoom: no\n")
    os.close(w)
    capture = OutputCapture(r, "r", tail_lines=50, forward=False)
    capture.read_available()
    yield capture
    capture.close()


@pytest.mark.parametrize(
    ("code", "status", "forced", "stop"),
    [
        (0, RunnerShutdown(), False, True),
        (0, RunnerShuttingDown(), False, True),
        (0, RunnerReady(), False, False),  # exit 0 nobody asked for
        (1, RunnerShuttingDown(), False, False),  # crashed while shutting down
        (-signal.SIGKILL, RunnerReady(), True, True),  # kill(): a stop
        (-signal.SIGTERM, RunnerLoading(), True, True),  # escalation after shutdown_grace
        (None, RunnerReady(), True, True),
        (-signal.SIGKILL, RunnerReady(), False, False),  # someone else's SIGKILL
    ],
)
def test_is_stop(code: int | None, status: object, forced: bool, stop: bool) -> None:
    assert verdict.is_stop(code, status, forced=forced) is stop  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_exit_codes_are_classified() -> None:
    with captured() as output:
        _check_exit_codes(output)


def _check_exit_codes(output: OutputCapture) -> None:
    def fail(code: int | None, crash: CrashReport | None = None) -> RunnerFailed:
        return verdict.exit_failure(code, "sentinel", crash, None, output, CONFIG)

    exited = fail(7)
    assert (exited.reason, exited.exit_code, exited.signal) == ("exited", 7, None)
    assert exited.error_message == "exitcode=7"
    assert exited.detected_by == "sentinel"
    assert "Boom: no" in exited.diagnostics  # the traceback anchor is picked out
    clean = fail(0)
    assert clean.reason == "exited"
    assert "without a Shutdown" in clean.error_message
    killed = fail(-signal.SIGKILL)
    assert (killed.reason, killed.signal, killed.exit_code) == ("signalled", 9, None)
    assert killed.diagnostics[0].startswith("SIGKILL from outside")
    segv = fail(-signal.SIGSEGV)
    assert segv.signal == signal.SIGSEGV
    assert not segv.diagnostics[0].startswith("SIGKILL")
    assert fail(None).error_message == "runner could not be reaped"
    crash = CrashReport(error="ValueError: bad weights", traceback="Traceback\n  at load\n")
    crashed = fail(1, crash)
    assert crashed.reason == "crashed"
    assert crashed.error_message == "exitcode=1: ValueError: bad weights"
    assert crashed.diagnostics[:2] == ("Traceback", "  at load")


def _oom(**fields: object) -> OomEvidence:
    return OomEvidence(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("evidence", "reason", "first"),
    [
        # the kernel log names the pid: an OOM kill, whatever the counters
        (
            _oom(system_kills=1, kernel_lines=("Killed process 7 (python)",), kmsg_readable=True),
            "oom_killed",
            "OOM kill counted:",
        ),
        # the runner's own cgroup counted a kill (no kernel log here)
        (
            _oom(cgroup=Path("/cg"), cgroup_kills=1, system_kills=1, kmsg_readable=False),
            "oom_killed",
            "OOM kill counted: memory cgroup /cg oom_kill +1, system oom_kill +1; "
            "/dev/kmsg not readable",
        ),
        # counters read and unmoved: someone outside sent it
        (
            _oom(cgroup=Path("/cg"), cgroup_kills=0, system_kills=0, kmsg_readable=True),
            "signalled",
            "SIGKILL from outside the supervisor (an operator, a scheduler, another program); "
            "the kernel counted no OOM kill of the runner: memory cgroup /cg oom_kill +0, "
            "system oom_kill +0",
        ),
        # another cgroup's OOM kill: the system counter alone names nobody
        (
            _oom(cgroup=Path("/cg"), cgroup_kills=0, system_kills=2, kmsg_readable=True),
            "signalled",
            "SIGKILL from outside the supervisor (an operator",
        ),
        # only the system counter, and it moved: said, not concluded
        (_oom(system_kills=1), "signalled", "SIGKILL from outside the supervisor; the system"),
        (None, "signalled", "SIGKILL from outside the supervisor (no OOM counters readable"),
    ],
)
@pytest.mark.anyio
async def test_a_sigkill_is_an_oom_kill_only_on_the_kernels_word(
    evidence: OomEvidence | None, reason: str, first: str
) -> None:
    with captured() as output:
        failure = verdict.exit_failure(
            -signal.SIGKILL, "sentinel", None, None, output, CONFIG, oom=evidence
        )
    assert failure.reason == reason
    assert failure.signal == signal.SIGKILL
    assert failure.diagnostics[0].startswith(first), failure.diagnostics[0]
    if reason == "signalled":
        assert failure.error_message == "signal=9 (Killed)"
        assert not any(g in failure.diagnostics[0] for g in ("likely OOM", "OOM kill or"))
    else:
        assert failure.error_message == "killed by the kernel's OOM killer (signal=9 (Killed))"


@pytest.mark.anyio
async def test_the_supervisors_own_signal_is_never_an_outside_kill() -> None:
    with captured() as output:
        failure = verdict.exit_failure(
            -signal.SIGKILL, "channel", None, None, output, CONFIG, stopped_by_us=True
        )
    assert failure.reason == "channel_closed"
    assert failure.error_message == (
        "runner closed its event channel (EOF) and was still running; "
        "the supervisor stopped it (signal=9 (Killed))"
    )
    assert not any("SIGKILL" in line or "OOM" in line for line in failure.diagnostics)


@pytest.mark.anyio
async def test_a_live_failure_carries_its_notes_first() -> None:
    cause = EndCause(detected_by="progress", reason="stalled", message="no progress for 1.0s")
    note = verdict.stack_dump_note(cause)
    assert note == "stack dump requested (SIGUSR1) after: no progress for 1.0s"
    with captured() as output:
        failure = verdict.live_failure(cause, output, CONFIG.diagnostics_lines, [note])
    assert (failure.reason, failure.detected_by) == ("stalled", "progress")
    assert failure.error_message == cause.message
    assert failure.diagnostics[0] == note
    assert "Boom: no" in failure.diagnostics


def test_abandoned_and_stop_notes() -> None:
    killed = verdict.abandoned(-signal.SIGKILL)
    assert (killed.reason, killed.signal, killed.exit_code) == ("abandoned", 9, None)
    assert killed.detected_by == "supervisor"
    assert killed.error_message == (
        "supervisor cancelled by the host; it killed the runner (signal=9 (Killed))"
    )
    gone = verdict.abandoned(None)
    assert (gone.reason, gone.signal, gone.exit_code) == ("abandoned", None, None)
    assert verdict.abandoned(3).exit_code == 3
    assert verdict.stop_note(0) == ""
    assert verdict.stop_note(-signal.SIGTERM) == " (signal=15 (Terminated))"
    assert verdict.stop_note(None) == " (unreaped)"


def test_phase_deadlines() -> None:
    c = CONFIG
    assert phase_deadline(RunnerIdle(), False, c) is None
    assert phase_deadline(RunnerReady(), True, c) is None
    assert phase_deadline(RunnerLoading(), False, c) == ("load", c.load_timeout)
    assert phase_deadline(RunnerWarmingUp(), False, c) == ("warmup", c.warmup_timeout)
    assert phase_deadline(RunnerRunning(), False, c) == ("prefill", c.prefill_timeout)
    assert phase_deadline(RunnerRunning(), True, c) == ("decode", c.decode_timeout)


def test_heartbeat_age_is_derived_from_the_checks() -> None:
    monitor = HeartbeatMonitor(
        stale_checks=3, check_interval=0.5, busy_grace=1, start_timeout=60, started_at=100.0
    )
    assert monitor.age(0.0, 101.0) is None  # not beating yet
    assert monitor.age(3.0, 101.0) == 0.0  # beat since the last check: alive now
    monitor.check(3.0, 101.0, lambda: None)
    assert monitor.age(3.0, 101.0) == 0.0
    assert monitor.age(3.0, 104.5) == 3.5  # unchanged since the check that saw it move
    assert monitor.age(3.0, 104.5) == 3.5  # reading it changes nothing
    assert monitor.age(4.0, 104.5) == 0.0
