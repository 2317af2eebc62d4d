"""What a runner's end was: a stop we asked for, or a failure, and its evidence.

Pure functions of what the supervisor observed (exit code, last status, crash
report, last resource sample, captured output), so each classification is
written once and reads the same from every path that ends an incarnation.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

import psutil

from supervisor.config import SupervisorConfig
from supervisor.core.detectors import EndCause
from supervisor.core.diagnostics import OutputCapture
from supervisor.core.liveness import ResourceSample
from supervisor.core.process import describe_exit, describe_signal
from supervisor.protocol import (
    BaseRunnerStatus,
    CrashReport,
    Detector,
    FailureReason,
    RunnerFailed,
    RunnerShutdown,
    RunnerShuttingDown,
)


def is_stop(code: int | None, status: BaseRunnerStatus, *, forced: bool) -> bool:
    """A clean exit after a Shutdown, or a runner we signalled because a stop was asked."""
    shut_down = isinstance(status, (RunnerShuttingDown, RunnerShutdown))
    return (code == 0 and shut_down) or forced


def stack_dump_note(cause: EndCause) -> str:
    """The diagnostics line that says the stacks that follow were asked for, and why."""
    return f"stack dump requested (SIGUSR1) after: {cause.message}"


def descendants_note(killed: Sequence[tuple[int, str]], most: int = 12) -> str:
    """The diagnostics line naming the processes the runner started that die with it."""
    shown = ", ".join(f"{pid} {name}" for pid, name in killed[:most])
    more = f" and {len(killed) - most} more" if len(killed) > most else ""
    return f"killed with it: {shown}{more}"


def live_failure(
    cause: EndCause, output: OutputCapture, limit: int, notes: Sequence[str] = ()
) -> RunnerFailed:
    """A detector found the runner wedged, frozen or over its memory limit."""
    assert cause.reason is not None
    return RunnerFailed(
        reason=cause.reason,
        error_message=cause.message,
        detected_by=cause.detected_by,
        diagnostics=output.evidence(limit, notes),
    )


def exit_failure(
    code: int | None,
    detected_by: Detector,
    crash: CrashReport | None,
    resources: ResourceSample | None,
    output: OutputCapture,
    config: SupervisorConfig,
) -> RunnerFailed:
    """The runner exited (or could not be reaped) without being asked to."""
    extra: list[str] = []
    signum: int | None = None
    reason: FailureReason
    if code is None:
        reason, message = "exited", "runner could not be reaped"
    elif crash is not None:
        reason = "crashed"
        message = f"{describe_exit(code)}: {crash.error}"
        extra.extend(crash.traceback.rstrip().splitlines())
    elif code < 0:
        signum = -code
        reason, message = "signalled", describe_exit(code)
        if signum == signal.SIGKILL:
            extra.append(sigkill_hint(resources, config.memory_limit))
    elif code == 0:
        reason, message = "exited", "exitcode=0 without a Shutdown"
    else:
        reason, message = "exited", describe_exit(code)
    return RunnerFailed(
        reason=reason,
        error_message=message,
        exit_code=code if code is not None and code >= 0 else None,
        signal=signum,
        detected_by=detected_by,
        diagnostics=output.evidence(config.diagnostics_lines, extra),
    )


def sigkill_hint(resources: ResourceSample | None, memory_limit: int | None) -> str:
    """SIGKILL that we did not send is most often the kernel's OOM killer."""
    if resources is None:
        return "SIGKILL from outside: an OOM kill or an operator (no RSS sample yet)"
    rss = resources.rss
    high = rss > (memory_limit * 0.8 if memory_limit else psutil.virtual_memory().total * 0.5)
    verdict = "likely OOM-killed" if high else "SIGKILL from outside (OOM killer or operator)"
    return f"{verdict}; last RSS {rss / 2**20:.0f} MiB"


def abandoned(code: int | None) -> RunnerFailed:
    """The host cancelled `run`: we killed the runner, and say so."""
    message = "supervisor stopped; runner killed"
    if code is not None and code < 0:
        return RunnerFailed(
            reason="signalled",
            error_message=f"{message} ({describe_signal(-code)})",
            signal=-code,
            detected_by="channel",
        )
    return RunnerFailed(
        reason="exited", error_message=message, exit_code=code, detected_by="channel"
    )


def stop_note(code: int | None) -> str:
    """How a stopped runner's exit reads in the log ("" for a clean exit 0)."""
    if code == 0:
        return ""
    return f" ({describe_exit(code) if code is not None else 'unreaped'})"


__all__ = [
    "abandoned",
    "exit_failure",
    "is_stop",
    "live_failure",
    "sigkill_hint",
    "stack_dump_note",
    "stop_note",
]
