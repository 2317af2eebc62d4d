"""`RunnerSupervisor`: one logical runner (one incarnation), as the host sees it.

A logical runner is made of rank processes, each watched by its own
`RankSupervisor` (``rank_supervisor``). With one rank (the usual case) this class
only forwards: the rank writes its events straight to the host's stream, so the
per-event path has no extra hop. With ``spec.world_size`` > 1 (docs/ranks.md) each
rank starts with torchrun's environment and a fresh ``MASTER_PORT``; every task
goes to every rank; their events meet in a `RankFanIn` (``rank_fanin``), which
decides what the host hears; and the first rank to end stops every other one at
once: one rank's end is the group's end.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.detection.liveness import ResourceSample
from supervisor.core.done import DONE, Done
from supervisor.core.exec_env import rank_env
from supervisor.core.host_stream import HostStream
from supervisor.core.rank_fanin import RankFanIn
from supervisor.core.rank_supervisor import RankSupervisor
from supervisor.core.rendezvous import MASTER_ADDR, free_port
from supervisor.core.tasks import RECENT_TASK_IDS as RECENT_TASK_IDS
from supervisor.core.tasks import validate_task
from supervisor.errors import DuplicateTaskError, RunnerFailedError, SupervisorClosedError
from supervisor.protocol import (
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    Detector,
    FailureReason,
    RunnerFailed,
    Shutdown,
)


class _Group:
    """What a rank group (world size > 1) adds: the fan-in and each rank's inbox."""

    __slots__ = ("done", "failed_at", "fanin", "host", "inboxes", "outboxes")

    def __init__(self, runner_id: str, world_size: int, host: HostStream) -> None:
        self.fanin = RankFanIn(runner_id, world_size)
        self.host = host
        self.outboxes: list[MemoryObjectSendStream[BaseEvent]] = []
        self.inboxes: list[MemoryObjectReceiveStream[BaseEvent]] = []
        self.done = anyio.Event()
        self.failed_at: float | None = None

    def inbox(self) -> MemoryObjectSendStream[BaseEvent]:
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        self.outboxes.append(send)
        self.inboxes.append(recv)
        return send

    def close(self) -> None:
        for outbox in self.outboxes:
            outbox.close()
        for inbox in self.inboxes:
            inbox.close()


class RunnerSupervisor:
    """Spawns one runner, forwards its events, and reports its failure exactly once."""

    def __init__(self, ranks: Sequence[RankSupervisor], group: _Group | None = None) -> None:
        if not ranks:
            raise ValueError("a runner has at least one rank")
        self._ranks = tuple(ranks)
        self._lead = self._ranks[0]
        self._group = group
        for rank in self._ranks:  # a wedged rank's report shows its siblings' stacks too
            rank.peers = lambda: self.pids

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
        spec = spec or RunnerSpec()
        config = config or SupervisorConfig()
        rid = runner_id or spec.runner_id or f"runner-{uuid.uuid4().hex[:8]}"
        size = spec.world_size
        port = free_port()  # this incarnation's rendezvous, a new one every time
        if size == 1:
            rank = RankSupervisor.create(
                spec=spec,
                event_sender=event_sender,
                config=config,
                runner_id=rid,
                incarnation=incarnation,
                env=rank_env(0, 1, port),
            )
            return cls([rank])
        group = _Group(rid, size, HostStream(event_sender, rid))
        made: list[RunnerSupervisor] = []  # the ranks' end hooks reach it once it exists

        def ending(rank: int) -> Callable[[], None]:
            return lambda: made[0].rank_ending(rank) if made else None

        ranks: list[RankSupervisor] = []
        try:
            for k in range(size):
                ranks.append(
                    RankSupervisor.create(
                        spec=spec,
                        event_sender=group.inbox(),
                        config=config,
                        runner_id=rid,
                        incarnation=incarnation,
                        env=rank_env(k, size, port),
                        on_end=ending(k),
                    )
                )
        except BaseException:
            for started in ranks:  # a group is all of its ranks or none
                started.discard()
            group.close()
            raise
        made.append(cls(ranks, group))
        logger.info(
            "runner {}: {} ranks (pids {}) meet on {}:{}",
            rid,
            size,
            " ".join(str(rank.pid) for rank in ranks),
            MASTER_ADDR,
            port,
        )
        return made[0]

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

    async def wait_runner_exit(self) -> float | None:
        """When rank 0's runner process itself exited (``time.monotonic()``), not its
        keeper; None where that cannot be watched (no pidfd)."""
        return await self._lead.wait_runner_exit()

    async def wait_runner_pid(self, within: float = 60.0) -> int:
        """Rank 0's own pid, once it reported it (``pid`` as a fallback)."""
        return await self._lead.wait_runner_pid(within)

    @property
    def containment(self) -> str:
        """What holds the runner's process tree: ``cgroup``, ``keeper`` or ``group``."""
        return self._lead.containment

    @property
    def status(self) -> BaseRunnerStatus:
        return self._lead.status if self._group is None else self._group.fanin.status

    @property
    def failure(self) -> RunnerFailed | None:
        return self._lead.failure if self._group is None else self._group.fanin.failure

    @property
    def pending(self) -> Mapping[str, BaseTask]:
        """Tasks sent to the runner and not yet acknowledged."""
        return self._lead.pending if self._group is None else self._group.fanin.pending

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        """Acknowledged tasks without a terminal status yet (from every rank)."""
        return self._lead.in_progress if self._group is None else self._group.fanin.in_progress

    @property
    def finished(self) -> bool:
        """True once every rank is gone and the runner's end was reported."""
        return self._lead.finished if self._group is None else self._group.done.is_set()

    async def wait_finished(self) -> None:
        """Wait until `run` has reported the runner's end (shutdown or failure)."""
        if self._group is None:
            await self._lead.wait_finished()
        else:
            await self._group.done.wait()

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the runner's heartbeat last changed (None before the first);
        a group's stalest rank's."""
        ages = [age for rank in self._ranks if (age := rank.heartbeat_age) is not None]
        return max(ages) if ages else None

    @property
    def resources(self) -> ResourceSample | None:
        """The latest RSS and CPU reading of rank 0 (None before the first); each
        rank's is in ``ranks``."""
        return self._lead.resources

    @property
    def failed_at(self) -> float | None:
        """`time.monotonic()` when the failure was reported (None without one)."""
        return self._lead.failed_at if self._group is None else self._group.failed_at

    @property
    def probes_sent(self) -> int:
        return sum(rank.probes_sent for rank in self._ranks)

    # -- the early death signal: the end is reported before the memory is free
    @property
    def dying_at(self) -> float | None:
        """`time.monotonic()` when a rank was first seen dying, before its memory was
        released (None while they live, or when an exit was the first news)."""
        return min((t for r in self._ranks if (t := r.dying_at) is not None), default=None)

    @property
    def released(self) -> bool:
        """True once every rank's process is gone and reaped: their memory is free."""
        return all(rank.released for rank in self._ranks)

    async def wait_released(self) -> None:
        """Wait until every rank's memory is free (a restart on the same GPU needs it).

        A `RunnerFailed` comes first, as soon as the runner is known to be dying; `run`
        returns only after this. A cancellation point; cancelling it changes nothing."""
        for rank in self._ranks:
            await rank.wait_released()

    # ------------------------------------------------------------------ commands
    async def start_task(self, task: BaseTask) -> None:
        """Send ``task`` (to every rank); return once the runner (every rank)
        acknowledged it.

        Raises `RunnerFailedError` (with its failure) if the runner fails first or
        already failed, `SupervisorClosedError` once it is shut down or shutting
        down, `DuplicateTaskError` for a task id already in use, `ReservedTaskIdError`
        for one in the supervisor's own namespace, and `TypeError` or `ValueError`
        for a malformed task (the supervisor keeps running).

        A cancellation point: cancelled while waiting for the acknowledgement, the
        task stays with the runner (it was sent) and still gets its terminal status.
        """
        group = self._group
        if group is None:
            await self._lead.start_task(task)
            return
        fanin = group.fanin
        validate_task(task, self.config.max_task_bytes)
        if fanin.failure is not None:
            raise RunnerFailedError(fanin.failure)
        if fanin.is_open(task.task_id):
            raise DuplicateTaskError(f"task id {task.task_id!r} is already in use")
        if isinstance(task, Shutdown):
            fanin.stopping = True
        fanin.started(task)
        errors: list[Exception | None] = [None] * len(self._ranks)

        async def send(k: int, rank: RankSupervisor) -> None:
            try:
                await rank.start_task(task)
            except Exception as exc:  # noqa: BLE001 - sorted out below, for the group
                errors[k] = exc

        async with anyio.create_task_group() as tg:
            for k, rank in enumerate(self._ranks):
                tg.start_soon(send, k, rank)
        if not any(errors):
            return
        for k, exc in enumerate(errors):
            if isinstance(exc, RunnerFailedError) and fanin.failure is None:
                await self._emit(fanin.fail(k, exc.status))
        if fanin.failure is not None:
            raise RunnerFailedError(fanin.failure)
        first = next(exc for exc in errors if exc is not None)
        if not isinstance(first, SupervisorClosedError):
            fanin.forget(task.task_id)  # refused before it was sent (every rank alike)
        raise first

    def cancel_task(self, task_id: str) -> Done:
        """Ask the runner to stop ``task_id`` at its next step. Never blocks."""
        for rank in self._ranks:
            rank.cancel_task(task_id)
        return DONE

    def shutdown(self) -> Done:
        """Graceful stop: a Shutdown task, SIGTERM after ``shutdown_grace``, then SIGKILL."""
        self._stopping()
        for rank in self._ranks:
            rank.shutdown()
        return DONE

    def kill(self) -> Done:
        """Stop the runner now with SIGKILL (reported as a stop, not a failure)."""
        self._stopping()
        for rank in self._ranks:
            rank.kill()
        return DONE

    def fail(
        self,
        reason: FailureReason,
        message: str,
        *,
        detected_by: Detector,
        diagnostics: Sequence[str] = (),
    ) -> Done:
        """An outside watcher found the runner broken: end it now as a failure (see
        `RankSupervisor.fail`; a group fails through its rank 0). Never blocks."""
        return self._lead.fail(reason, message, detected_by=detected_by, diagnostics=diagnostics)

    def _stopping(self) -> None:
        if self._group is not None and self._group.fanin.failure is None:
            self._group.fanin.stopping = True

    def rank_ending(self, rank: int) -> None:
        """Rank ``rank`` started ending (called from its end path, synchronously): if
        nobody asked the group to stop, that is the group's end, and every other rank
        is killed now, not after the report (a collective waits on the dead rank)."""
        assert self._group is not None
        if self._group.fanin.rank_ending(rank):
            for k, other in enumerate(self._ranks):
                if k != rank:
                    other.kill()

    async def _emit(self, events: Sequence[BaseEvent]) -> None:
        assert self._group is not None
        if events and self._group.failed_at is None and self._group.fanin.failure is not None:
            self._group.failed_at = time.monotonic()
        for event in events:
            await self._group.host.send(event)

    # ----------------------------------------------------------------------- run
    async def run(self) -> None:
        """Watch the runner until it shuts down or fails. Never raises for a failure."""
        group = self._group
        if group is None:
            await self._lead.run()
            return
        try:
            async with anyio.create_task_group() as tg:
                for k, rank in enumerate(self._ranks):
                    tg.start_soon(self._run_rank, k, rank)
        finally:
            group.close()
            group.done.set()

    async def _run_rank(self, k: int, rank: RankSupervisor) -> None:
        """Run rank ``k`` and pass its events through the fan-in until it is reaped."""
        assert self._group is not None
        group = self._group
        outbox, inbox = group.outboxes[k], group.inboxes[k]

        async def watch() -> None:
            async with outbox:  # closed once the rank is reaped: ends the pump
                await rank.run()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async for event in inbox:
                await self._emit(group.fanin.on_event(k, event))
        if k == group.fanin.ended_by and group.fanin.failure is None and not group.fanin.stopping:
            # Its report never came (the host left, or it could not be read).
            failure = rank.failure or RunnerFailed(
                reason="crashed", error_message="the rank ended without a report"
            )
            await self._emit(group.fanin.fail(k, failure))


__all__ = ["RECENT_TASK_IDS", "RunnerSupervisor"]
