"""What a runner's end was: a stop we asked for, or a failure, and its evidence.

Pure functions of what the supervisor observed (exit code, last status, crash
report, last resource sample, captured output), so each classification is
written once and reads the same from every path that ends an incarnation.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from supervisor.config import SupervisorConfig
from supervisor.core.detection.interface import EndCause
from supervisor.core.detection.liveness import ResourceSample
from supervisor.core.diagnostics import OutputCapture
from supervisor.core.evidence import OomEvidence
from supervisor.core.process import describe_exit
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
    cause: EndCause,
    output: OutputCapture,
    limit: int,
    notes: Sequence[str] = (),
    native: Sequence[str] = (),
) -> RunnerFailed:
    """A detector found the runner wedged, frozen or over its memory limit.

    ``native``: py-spy's native stacks, after the runner's own output (``limit``
    counts only that), so they never crowd out faulthandler's Python stacks."""
    assert cause.reason is not None
    return RunnerFailed(
        reason=cause.reason,
        error_message=cause.message,
        detected_by=cause.detected_by,
        diagnostics=(*output.evidence(limit, notes), *native),
    )


def exit_failure(
    code: int | None,
    detected_by: Detector,
    crash: CrashReport | None,
    resources: ResourceSample | None,
    output: OutputCapture,
    config: SupervisorConfig,
    *,
    oom: OomEvidence | None = None,
    stopped_by_us: bool = False,
) -> RunnerFailed:
    """The runner exited (or could not be reaped) without being asked to.

    ``oom``: the kernel's evidence, read after a SIGKILL death. ``stopped_by_us``:
    the runner had closed its event channel and lived on, so the supervisor
    signalled it; the signal it died of is then ours, not an outsider's."""
    extra: list[str] = []
    signum = -code if code is not None and code < 0 else None
    reason: FailureReason
    if stopped_by_us:
        reason = "channel_closed"
        how = describe_exit(code) if code is not None else "not reaped"
        message = (
            "runner closed its event channel (EOF) and was still running; "
            f"the supervisor stopped it ({how})"
        )
    elif code is None:
        reason, message = "exited", "runner could not be reaped"
    elif crash is not None:
        reason = "crashed"
        message = f"{describe_exit(code)}: {crash.error}"
        extra.extend(crash.traceback.rstrip().splitlines())
    elif signum is not None:
        reason, message = "signalled", describe_exit(code)
        if signum == signal.SIGKILL:
            if oom is not None and oom.oom_killed:
                reason = "oom_killed"
                message = f"killed by the kernel's OOM killer ({describe_exit(code)})"
            extra.extend(sigkill_evidence(oom, resources))
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


def sigkill_evidence(oom: OomEvidence | None, resources: ResourceSample | None) -> list[str]:
    """The diagnostics lines of a SIGKILL the supervisor did not send: the kernel's
    OOM evidence, or, when it counted none, that someone outside sent it."""
    rss = (
        "" if not resources or not resources.rss else f"; last RSS {resources.rss / 2**20:.0f} MiB"
    )
    if oom is None or not oom.any_counter:
        return [f"SIGKILL from outside the supervisor (no OOM counters readable here){rss}"]
    if oom.oom_killed:
        return [f"OOM kill counted: {oom.counters()}{rss}", *oom.kernel_lines]
    if oom.system_kills and oom.cgroup_kills is None and not oom.kmsg_readable:
        # Someone was OOM-killed meanwhile, and nothing here can say whether it was us.
        return [
            "SIGKILL from outside the supervisor; the system counted "
            f"{oom.system_kills} OOM kill(s) meanwhile, but neither the runner's memory "
            f"cgroup nor the kernel log could say whose: {oom.counters()}{rss}"
        ]
    return [
        "SIGKILL from outside the supervisor (an operator, a scheduler, another program); "
        f"the kernel counted no OOM kill of the runner: {oom.counters()}{rss}"
    ]


def abandoned(code: int | None) -> RunnerFailed:
    """The host cancelled `run`: we killed the runner, and say so."""
    how = "" if code is None else f" ({describe_exit(code)})"
    return RunnerFailed(
        reason="abandoned",
        error_message=f"supervisor cancelled by the host; it killed the runner{how}",
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        detected_by="supervisor",
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
    "sigkill_evidence",
    "stack_dump_note",
    "stop_note",
]
