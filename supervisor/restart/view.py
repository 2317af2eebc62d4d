"""What a `RestartingSupervisor` shows the outside: read-only, cheap, no system calls.

Kept apart from the supervisor's logic so that each stays small; the parts read
here are made and driven by `supervisor.restart.restarting_supervisor`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from supervisor.core.detection.liveness import ResourceSample
from supervisor.core.runner_supervisor import RunnerSupervisor
from supervisor.core.statemachine import StateMachine
from supervisor.errors import RunnerUnavailableError, SupervisorClosedError, SupervisorError
from supervisor.ops.observe import RankHealth, RunnerHealth
from supervisor.ops.phases import Phase, phase_of
from supervisor.protocol import BaseRunnerStatus, BaseTask, RunnerFailed, RunnerIdle
from supervisor.restart.launcher import Launcher
from supervisor.restart.policy import GiveUp, RestartTracker
from supervisor.restart.restart_states import RestartState
from supervisor.restart.roster import Roster

if TYPE_CHECKING:
    from supervisor.restart.group import RestartGroup


class RestartingView:
    """The read-only face of a restarting supervisor, over the parts it is made of.

    It owns the record the views read: the parts (lifecycle, roster of incarnations,
    restart tracker, launcher) are built by the supervisor and handed in once; the
    last failure and the restart time are this record's, set by the supervisor as
    they happen."""

    def __init__(
        self,
        runner_id: str,
        *,
        group: RestartGroup | None,
        life: StateMachine[RestartState],
        roster: Roster,
        tracker: RestartTracker,
        launcher: Launcher,
    ) -> None:
        self.runner_id = runner_id
        #: the group whose strategy and budget decide this runner's restarts, if any
        self.group = group
        self._life = life
        self._roster = roster
        self._tracker = tracker
        self._launcher = launcher
        #: the latest incarnation failure
        self._last_failure: RunnerFailed | None = None
        #: when the restart under way (its backoff) ends
        self._restart_at: float | None = None

    @property
    def incarnation(self) -> int:
        """Number of the current (or last) incarnation; 0 before the first."""
        inc = self._roster.current
        return 0 if inc is None else inc.number

    @property
    def restarts(self) -> int:
        """Failure restarts so far (a group member: its group's); replacements not counted."""
        return self._tracker.restarts if self.group is None else self.group.restarts

    @property
    def current(self) -> RunnerSupervisor | None:
        """The current incarnation's one-shot supervisor (None between incarnations)."""
        inc = self._roster.current
        return None if inc is None else inc.sup

    @property
    def spare_pid(self) -> int | None:
        """The pre-started spare runner's pid (``policy.prespawn``), if one is waiting."""
        return self._launcher.spare_pid

    @property
    def spare_pids(self) -> Sequence[int]:
        """The spare's rank pids, in rank order (empty without one)."""
        return self._launcher.spare_pids

    @property
    def spare_ready(self) -> bool:
        """A spare waits at its ``policy.spare_stage`` (prepared: Idle with its hook run;
        loaded: Ready; imported: its runner is up, its imports may still be running)."""
        return self._launcher.spare_ready

    @property
    def pid(self) -> int | None:
        sup = self.current
        return None if sup is None or sup.finished else sup.pid

    @property
    def pids(self) -> Sequence[int]:
        """The current incarnation's rank pids, in rank order (empty between incarnations)."""
        sup = self.current
        return [] if sup is None or sup.finished else sup.pids

    @property
    def status(self) -> BaseRunnerStatus:
        """The current incarnation's status (its `RunnerFailed` while restarting)."""
        sup = self.current
        if sup is not None:
            return sup.status
        return self._last_failure or RunnerIdle()

    @property
    def failure(self) -> RunnerFailed | None:
        """The latest incarnation failure, if any."""
        return self._last_failure

    @property
    def gave_up(self) -> bool:
        return self._life.state.gave_up

    @property
    def gave_up_reason(self) -> str | None:
        if not self.gave_up:
            return None
        inc = self._roster.current
        if inc is not None and isinstance(inc.decision, GiveUp):
            return inc.decision.reason
        if self.group_gave_up is not None:
            return self.group_gave_up.reason
        return None

    @property
    def group_gave_up(self) -> GiveUp | None:
        """Its group's budget is spent (None without a group)."""
        return None if self.group is None else self.group.gave_up

    @property
    def started(self) -> bool:
        """True once `run` was called."""
        return self._life.state.started

    @property
    def finished(self) -> bool:
        return self._life.state.ended

    @property
    def ready(self) -> bool:
        """The current incarnation takes tasks now."""
        inc = self._roster.current
        return inc is not None and inc.takes_tasks

    @property
    def replacing(self) -> bool:
        """A replacement (``replace()``, recycling) is under way."""
        return self._roster.replacement is not None

    @property
    def heartbeat_age(self) -> float | None:
        sup = self.current
        return None if sup is None or sup.finished else sup.heartbeat_age

    @property
    def resources(self) -> ResourceSample | None:
        sup = self.current
        return None if sup is None or sup.finished else sup.resources

    @property
    def pending(self) -> Mapping[str, BaseTask]:
        """Tasks handed over and not yet acknowledged, by every live incarnation."""
        return self._roster.pending()

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        """Acknowledged unfinished tasks, a draining incarnation's included."""
        return self._roster.in_progress()

    @property
    def phase(self) -> Phase:
        shown = self._life.state.shown_phase
        if shown is not None:
            return shown
        inc = self._roster.current
        return "starting" if inc is None else inc.phase

    @property
    def retry_after(self) -> float | None:
        """Seconds left of the restart backoff, while one is under way."""
        if self._restart_at is not None:
            return max(0.0, self._restart_at - time.monotonic())
        if self.phase == "restarting":
            # Failed, but the end is not decided yet (the dead runner's memory is still
            # being released): the backoff to come is the best estimate.
            return self._tracker.next_backoff()
        return None

    def health(self) -> RunnerHealth:
        rss = self.resources
        return RunnerHealth(
            runner_id=self.runner_id,
            phase=self.phase,
            incarnation=self.incarnation,
            restarts=self.restarts,
            pid=self.pid,
            heartbeat_age=self.heartbeat_age,
            rss=None if rss is None else rss.rss,
            pending=len(self.pending),
            in_progress=len(self.in_progress),
            retry_after=self.retry_after,
            gave_up_reason=self.gave_up_reason,
            group=None if self.group is None else self.group.group_id,
            containment=None if self.current is None else self.current.containment,
            descendants=None if rss is None else rss.descendants,
            ranks=self._ranks_health(),
        )

    def _ranks_health(self) -> tuple[RankHealth, ...]:
        """Each rank of a rank group: which one is behind, or growing."""
        sup = self.current
        if sup is None or sup.finished or len(sup.ranks) < 2:
            return ()
        return tuple(
            RankHealth(
                rank=k,
                pid=rank.pid,
                phase=phase_of(rank.status),
                heartbeat_age=rank.heartbeat_age,
                rss=None if (res := rank.resources) is None else res.rss,
            )
            for k, rank in enumerate(sup.ranks)
        )

    def health_snapshots(self) -> Sequence[RunnerHealth]:
        return [self.health()]

    # ------------------------------------------------ checks (for commands)
    @property
    def running(self) -> bool:
        """`run` is under way and no stop was asked for: incarnations come and go."""
        return self._life.state is RestartState.RUNNING

    def live_incarnations(self) -> list[int]:
        """Numbers of the incarnations whose process has not ended yet."""
        return self._roster.live_numbers()

    def _closed_error(self) -> SupervisorError:
        """What a command is told once no new incarnation will come."""
        if self.gave_up:
            return RunnerUnavailableError(
                f"runner {self.runner_id} gave up: {self.gave_up_reason}", self._last_failure
            )
        return SupervisorClosedError(f"runner {self.runner_id} is {self.phase}; no new tasks")

    def check_open(self) -> None:
        """Raise what a command is told when no task can be taken any more."""
        if self.gave_up or not self._life.state.takes_tasks:
            raise self._closed_error()


__all__ = ["RestartingView"]
