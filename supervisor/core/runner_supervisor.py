"""`RunnerSupervisor`: one logical runner (one incarnation), as the host sees it.

A logical runner is made of rank processes, each watched by its own
`RankSupervisor` (``rank_supervisor``). With one rank (the usual case) this class
only forwards: the rank writes its events straight to the host's stream, so the
per-event path has no extra hop. The public verbs and views of one incarnation
live here, whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from anyio.streams.memory import MemoryObjectSendStream

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import Done
from supervisor.core.liveness import ResourceSample
from supervisor.core.rank_supervisor import RankSupervisor
from supervisor.core.tasks import RECENT_TASK_IDS as RECENT_TASK_IDS
from supervisor.protocol import (
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    Detector,
    FailureReason,
    RunnerFailed,
)


class RunnerSupervisor:
    """Spawns one runner, forwards its events, and reports its failure exactly once."""

    def __init__(self, ranks: Sequence[RankSupervisor]) -> None:
        if not ranks:
            raise ValueError("a runner has at least one rank")
        self._ranks = tuple(ranks)
        self._lead = self._ranks[0]

    @classmethod
    def create(
        cls,
        *,
        spec: RunnerSpec | None = None,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig | None = None,
        runner_id: str | None = None,
        incarnation: int = 1,
    ) -> RunnerSupervisor:
        """Spawn the runner's process now; call `run` to watch it.

        ``incarnation`` numbers this runner id's processes (a restarting supervisor
        counts them); it stamps the runner's log lines."""
        rank = RankSupervisor.create(
            spec=spec,
            event_sender=event_sender,
            config=config,
            runner_id=runner_id,
            incarnation=incarnation,
        )
        return cls([rank])

    # ---------------------------------------------------------------- read-only
    @property
    def ranks(self) -> Sequence[RankSupervisor]:
        """The rank supervisors, in rank order (rank 0 speaks for the runner)."""
        return self._ranks

    @property
    def spec(self) -> RunnerSpec:
        return self._lead.spec

    @property
    def config(self) -> SupervisorConfig:
        return self._lead.config

    @property
    def runner_id(self) -> str:
        return self._lead.runner_id

    @property
    def incarnation(self) -> int:
        return self._lead.incarnation

    @property
    def started_at(self) -> float:
        return self._lead.started_at

    @property
    def exit_code(self) -> int | None:
        """Rank 0's exit code once it was reaped."""
        return self._lead.exit_code

    @property
    def pid(self) -> int:
        """Rank 0's pid (its keeper's until the runner reported its own)."""
        return self._lead.pid

    @property
    def pids(self) -> Sequence[int]:
        """Every rank's pid, in rank order."""
        return [rank.pid for rank in self._ranks]

    @property
    def runner_pid(self) -> int | None:
        """Rank 0's own pid; None until it has reported it."""
        return self._lead.runner_pid

    async def wait_runner_pid(self, within: float = 60.0) -> int:
        """Rank 0's own pid, once it reported it (``pid`` as a fallback)."""
        return await self._lead.wait_runner_pid(within)

    @property
    def containment(self) -> str:
        """What holds the runner's process tree: ``cgroup``, ``keeper`` or ``group``."""
        return self._lead.containment

    @property
    def status(self) -> BaseRunnerStatus:
        return self._lead.status

    @property
    def failure(self) -> RunnerFailed | None:
        return self._lead.failure

    @property
    def pending(self) -> Mapping[str, BaseTask]:
        """Tasks sent to the runner and not yet acknowledged."""
        return self._lead.pending

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        """Acknowledged tasks without a terminal status yet."""
        return self._lead.in_progress

    @property
    def finished(self) -> bool:
        """True once the runner is gone and its end was reported."""
        return self._lead.finished

    async def wait_finished(self) -> None:
        """Wait until `run` has reported the runner's end (shutdown or failure)."""
        await self._lead.wait_finished()

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the runner's heartbeat last changed (None before the first)."""
        return self._lead.heartbeat_age

    @property
    def resources(self) -> ResourceSample | None:
        """The latest RSS and CPU reading of the runner (None before the first)."""
        return self._lead.resources

    @property
    def failed_at(self) -> float | None:
        """`time.monotonic()` when the failure was reported (None without one)."""
        return self._lead.failed_at

    @property
    def probes_sent(self) -> int:
        return self._lead.probes_sent

    # ------------------------------------------------------------------ commands
    async def start_task(self, task: BaseTask) -> None:
        """Send ``task``; return once the runner acknowledged it.

        Raises `RunnerFailedError` (with its failure) if the runner fails first or
        already failed, `SupervisorClosedError` once it is shut down or shutting
        down, `DuplicateTaskError` for a task id already in use, `ReservedTaskIdError`
        for one in the supervisor's own namespace, and `TypeError` or `ValueError`
        for a malformed task (the supervisor keeps running).

        A cancellation point: cancelled while waiting for the acknowledgement, the
        task stays with the runner (it was sent) and still gets its terminal status.
        """
        await self._lead.start_task(task)

    def cancel_task(self, task_id: str) -> Done:
        """Ask the runner to stop ``task_id`` at its next step. Never blocks."""
        return self._lead.cancel_task(task_id)

    def shutdown(self) -> Done:
        """Graceful stop: a Shutdown task, SIGTERM after ``shutdown_grace``, then SIGKILL."""
        return self._lead.shutdown()

    def kill(self) -> Done:
        """Stop the runner now with SIGKILL (reported as a stop, not a failure)."""
        return self._lead.kill()

    def fail(
        self,
        reason: FailureReason,
        message: str,
        *,
        detected_by: Detector,
        diagnostics: Sequence[str] = (),
    ) -> Done:
        """An outside watcher found the runner broken: end it now as a failure (see
        `RankSupervisor.fail`). Never blocks."""
        return self._lead.fail(reason, message, detected_by=detected_by, diagnostics=diagnostics)

    # ----------------------------------------------------------------------- run
    async def run(self) -> None:
        """Watch the runner until it shuts down or fails. Never raises for a failure."""
        await self._lead.run()


__all__ = ["RECENT_TASK_IDS", "RunnerSupervisor"]
