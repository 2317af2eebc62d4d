"""When did the runner die? An independent clock for the detection-latency metric.

The kernel's own notice of a process exit (a pidfd turning readable) times a
death without trusting the detectors being measured. Freezes have no exit: the
last heartbeat change the detector saw stands in for their moment.
"""

from __future__ import annotations

from supervisor.core.runner_supervisor import RunnerSupervisor
from supervisor.protocol import RunnerFailed

#: Failures in which the process is gone: their death time is when it exited.
_DEATHS = frozenset({"exited", "signalled", "oom_killed", "crashed"})


class ExitClock:
    """Records when one runner exits (no clock where pidfds are missing)."""

    __slots__ = ("exited_at",)

    def __init__(self) -> None:
        self.exited_at: float | None = None

    async def watch(self, sup: RunnerSupervisor) -> None:
        """Wait for the runner's exit and note its time (returns at once without a pidfd).

        The runner's own exit, not its keeper's: the keeper outlives the runner by
        the tree's clean-up, too close to the report to time anything. The core's
        pidfd on the runner tells it: no second one is opened here."""
        self.exited_at = await sup.wait_runner_exit()


def detection_latency(
    sup: RunnerSupervisor, failure: RunnerFailed, exited_at: float | None
) -> float | None:
    """Failure emitted minus the best estimate of when the runner died or froze.

    Deaths: the exit time (``exited_at``), or when the runner was seen dying if it
    was reported before its exit. Freezes: the heartbeat's age at the
    report. Wedges, probe failures and internal errors have no death time: None.
    """
    failed_at = sup.failed_at
    if failed_at is None:
        return None
    if failure.reason in _DEATHS:
        # (an exit after the report is our own kill of a live runner: no death time)
        if exited_at is not None and exited_at <= failed_at:
            return failed_at - exited_at
        # A runner reported while still dying (the early death signal, before its
        # memory is torn down) has not exited yet: it died when it was seen dying.
        dying_at = sup.dying_at
        if dying_at is not None and dying_at <= failed_at:
            return failed_at - dying_at
    if failure.reason == "unresponsive" and sup.heartbeat_age is not None:
        return sup.heartbeat_age
    return None


__all__ = ["ExitClock", "detection_latency"]
