"""`RunnerNode`: many supervised runners, keyed by runner id, in one task group.

One event stream for all of them (events carry their runner id, or a task id the
host chose), runners added and removed while the node runs, and isolation: each
runner is its own `RestartingSupervisor` in its own task, guarded so that one
runner's failure (or a bug in its supervision) never touches the others, unless
they were added together as a group (`add_group`): then they fail and restart
together under the group's strategy and budget (`supervisor.restart.group`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE, Done
from supervisor.core.statemachine import StateMachine
from supervisor.errors import SupervisorClosedError, SupervisorError
from supervisor.ops.observe import RunnerHealth, SupervisorObserver
from supervisor.protocol import BaseEvent, BaseTask
from supervisor.restart.group import RestartGroup
from supervisor.restart.policy import RestartPolicy
from supervisor.restart.restarting_supervisor import RestartingSupervisor
from supervisor.restart.strategy import StartMode, Strategy

if TYPE_CHECKING:
    from supervisor.gpu.watcher import GpuWatcher


class UnknownRunnerError(KeyError):
    """No runner with that id in this node."""


class UnknownGroupError(KeyError):
    """No group with that id in this node."""


class NodeState(enum.Enum):
    CREATED = "created"  # run() not called yet: added runners wait for it
    CLOSED = "closed"  # shut down before run(): run() only sees the runners end
    RUNNING = "running"
    STOPPING = "stopping"  # shut down: every runner stops gracefully, no new ones
    FINISHED = "finished"  # run() returned


_N = NodeState

TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    _N.CREATED: frozenset({_N.RUNNING, _N.CLOSED}),
    _N.CLOSED: frozenset({_N.STOPPING}),
    _N.RUNNING: frozenset({_N.STOPPING, _N.FINISHED}),  # FINISHED: run() was cancelled
    _N.STOPPING: frozenset({_N.FINISHED}),
    _N.FINISHED: frozenset(),
}


class RunnerNode:
    """Supervise many runners in one event loop.

    >>> node = RunnerNode(event_sender=send)
    >>> async with anyio.create_task_group() as tg:
    ...     await tg.start(node.run)
    ...     node.add_runner("r1", RunnerSpec(engine="echo"))
    ...     await node.start_task("r1", Generate(task_id="g", prompt="hi"))
    ...     node.shutdown()
    """

    def __init__(
        self,
        *,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig | None = None,
        policy: RestartPolicy | None = None,
        observers: Sequence[SupervisorObserver] = (),
        min_ready: int | None = None,
    ) -> None:
        if min_ready is not None and min_ready < 1:
            raise ValueError("min_ready must be >= 1 (or None: every runner)")
        #: how many runners must be Ready for the node to be ready (/readyz); None: all.
        #: A group member counts only while its whole group is Ready.
        self.min_ready = min_ready
        self._events = event_sender
        self.default_config = config or SupervisorConfig()
        self.default_policy = policy or RestartPolicy()
        self._observers: list[SupervisorObserver] = list(observers)
        self._runners: dict[str, RestartingSupervisor] = {}
        self._groups: dict[str, RestartGroup] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting: list[RestartingSupervisor] = []  # added before run()
        self._life = StateMachine(NodeState.CREATED, TRANSITIONS)
        self._gpu: GpuWatcher | None = None

    # ---------------------------------------------------------------- runners
    @property
    def runners(self) -> Mapping[str, RestartingSupervisor]:
        return dict(self._runners)

    def __getitem__(self, runner_id: str) -> RestartingSupervisor:
        try:
            return self._runners[runner_id]
        except KeyError:
            raise UnknownRunnerError(runner_id) from None

    def add_runner(
        self,
        runner_id: str,
        spec: RunnerSpec | None = None,
        config: SupervisorConfig | None = None,
        policy: RestartPolicy | None = None,
    ) -> RestartingSupervisor:
        """Start supervising a new runner (now if the node runs, else when it starts)."""
        self._check_new([runner_id])
        runner = self._add(runner_id, spec, config, policy or self.default_policy, None)
        self._start(runner)
        return runner

    def _check_new(self, runner_ids: Sequence[str]) -> None:
        if self._life.state not in (_N.CREATED, _N.RUNNING):
            raise SupervisorClosedError("the node is shutting down; no new runners")
        if len(set(runner_ids)) != len(runner_ids):
            raise ValueError("runner ids must be distinct")
        for runner_id in runner_ids:
            if not runner_id or not isinstance(runner_id, str):
                raise ValueError("runner_id must be a non-empty string")
            if runner_id in self._runners:
                raise ValueError(f"runner {runner_id!r} already exists in this node")

    def _add(
        self,
        runner_id: str,
        spec: RunnerSpec | None,
        config: SupervisorConfig | None,
        policy: RestartPolicy,
        group: RestartGroup | None,
    ) -> RestartingSupervisor:
        runner = RestartingSupervisor(
            spec=spec or RunnerSpec(),
            event_sender=self._events,
            config=config or self.default_config,
            policy=policy,
            runner_id=runner_id,
            observers=self._observers,
            group=group,
        )
        if group is not None:
            group.add(runner)
        self._runners[runner_id] = runner
        return runner

    def _start(self, runner: RestartingSupervisor) -> None:
        if self._tg is None:
            self._waiting.append(runner)
        else:
            self._tg.start_soon(self._supervise, runner, name=f"runner {runner.runner_id}")

    async def remove_runner(self, runner_id: str) -> None:
        """Shut ``runner_id`` down gracefully, wait for its end, and forget it."""
        runner = self[runner_id]
        if runner.group is not None:
            raise ValueError(
                f"runner {runner_id!r} is a member of group {runner.group.group_id!r}; "
                "remove the group"
            )
        await self._remove([runner])

    async def _remove(self, runners: Sequence[RestartingSupervisor]) -> None:
        for runner in runners:
            runner.shutdown()
            if runner in self._waiting:
                self._waiting.remove(runner)
        for runner in runners:
            if runner.started:
                await runner.wait_finished()
            self._runners.pop(runner.runner_id, None)

    # ----------------------------------------------------------------- groups
    @property
    def groups(self) -> Mapping[str, RestartGroup]:
        return dict(self._groups)

    def group(self, group_id: str) -> RestartGroup:
        try:
            return self._groups[group_id]
        except KeyError:
            raise UnknownGroupError(group_id) from None

    def add_group(
        self,
        group_id: str,
        members: Mapping[str, RunnerSpec | None],
        *,
        strategy: Strategy = "one_for_all",
        policy: RestartPolicy | None = None,
        config: SupervisorConfig | None = None,
        start: StartMode = "parallel",
    ) -> RestartGroup:
        """Supervise ``members`` (runner id -> spec, in rank order) as one group.

        ``strategy``: who restarts when a member fails (``one_for_all``,
        ``rest_for_one``: it and the members after it, ``one_for_one``: it alone);
        every strategy counts restarts under one budget for the group (``policy``).
        ``start``: members start at once (``parallel``) or each once the ones
        before it are Ready (``ordered``). Members stay runners of this node:
        ``node[runner_id]``, ``start_task``, ``cancel_task``, their own events.
        """
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} already exists in this node")
        ids = list(members)
        if not ids:
            raise ValueError("a group needs at least one member")
        self._check_new(ids)
        policy = policy or self.default_policy
        group = RestartGroup(group_id, strategy=strategy, start=start, policy=policy)
        runners = [self._add(rid, members[rid], config, policy, group) for rid in ids]
        self._groups[group_id] = group
        for runner in runners:
            self._start(runner)
        return group

    async def remove_group(self, group_id: str) -> None:
        """Shut every member of ``group_id`` down gracefully, wait, and forget them."""
        group = self.group(group_id)
        await self._remove(list(group.members.values()))
        self._groups.pop(group_id, None)

    # ------------------------------------------------------------ replacing
    async def replace_runner(self, runner_id: str, *, drain_timeout: float | None = None) -> None:
        """Replace ``runner_id`` without losing a task (`RestartingSupervisor.replace`).
        A group member is replaced with the members its group's strategy names."""
        await self[runner_id].replace(drain_timeout=drain_timeout)

    async def replace_group(self, group_id: str, *, drain_timeout: float | None = None) -> None:
        """Replace every member of ``group_id`` (ranks restart together unless prespawn)."""
        await self.group(group_id).replace(drain_timeout=drain_timeout)

    async def rolling_replace(
        self, *, max_unavailable: int = 1, drain_timeout: float | None = None
    ) -> None:
        """Replace every runner and group, at most ``max_unavailable`` at a time.

        A group counts as one. Runners that gave up or stopped are skipped. The first
        replacement that fails (its runner gave up or was shut down) stops the roll:
        no further one starts, those under way finish, and its error is raised.
        """
        if max_unavailable < 1:
            raise ValueError("max_unavailable must be >= 1")
        units: list[RestartingSupervisor | RestartGroup] = []
        for runner in list(self._runners.values()):
            unit = runner if runner.group is None else runner.group
            if unit not in units and not runner.gave_up and not runner.finished:
                units.append(unit)
        slots = anyio.Semaphore(max_unavailable)
        errors: list[BaseException] = []

        async def one(unit: RestartingSupervisor | RestartGroup) -> None:
            try:
                await unit.replace(drain_timeout=drain_timeout)
            except SupervisorError as exc:
                errors.append(exc)
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:
            for unit in units:
                await slots.acquire()
                if errors:
                    slots.release()
                    break
                tg.start_soon(one, unit)
        if errors:
            raise errors[0]

    async def start_task(
        self, runner_id: str, task: BaseTask, *, within: float | None = None
    ) -> None:
        await self[runner_id].start_task(task, within=within)

    def cancel_task(self, runner_id: str, task_id: str) -> Done:
        return self[runner_id].cancel_task(task_id)

    # ---------------------------------------------------------------- health
    def health_snapshots(self) -> Sequence[RunnerHealth]:
        snaps = [r.health() for r in list(self._runners.values())]
        return snaps if self._gpu is None else self._gpu.annotate(snaps)

    @property
    def gpu_watcher(self) -> GpuWatcher | None:
        """The node's GPU watcher (`watch_gpus`), None without one."""
        return self._gpu

    def watch_gpus(
        self,
        *,
        nvml_module: Any = None,
        interval: float | None = None,
        event_wait_ms: int | None = None,
    ) -> GpuWatcher | None:
        """Watch this node's GPUs through NVML (the ``gpu`` extra): one watcher for
        every runner, failing those on a GPU with an Xid critical error (reason
        ``gpu_fault``) or over their ``gpu_memory_limit``, and adding GPU memory, ECC
        and retired pages to health (docs/gpu.md). Returns None, after one log line,
        without the library or a GPU. Call before or while the node runs; it stops
        once every runner has ended. ``nvml_module``: a stand-in for ``pynvml``;
        ``interval`` and ``event_wait_ms``: see `GpuWatcher`."""
        from supervisor.gpu.nvml import Nvml
        from supervisor.gpu.watcher import EVENT_WAIT_MS, SAMPLE_INTERVAL, GpuWatcher

        if self._gpu is not None:
            return self._gpu
        if self._life.state not in (_N.CREATED, _N.RUNNING):
            raise SupervisorClosedError("the node is shutting down; no GPU watcher")
        nvml = Nvml.open(nvml_module)
        if nvml is None:
            return None
        every = SAMPLE_INTERVAL if interval is None else interval
        wait = EVENT_WAIT_MS if event_wait_ms is None else event_wait_ms
        self._gpu = GpuWatcher(nvml, lambda: self._runners, interval=every, event_wait_ms=wait)
        if self._tg is not None:
            self._tg.start_soon(self._watch_gpus, self._gpu, name="GPU watcher")
        return self._gpu

    async def _watch_gpus(self, watcher: GpuWatcher) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            await self._life.wait_for(_N.STOPPING, _N.FINISHED)
            for runner in list(self._runners.values()):
                if runner.started:  # a GPU fault while runners stop still counts
                    await runner.wait_finished()
            tg.cancel_scope.cancel()

    def add_observer(self, observer: SupervisorObserver) -> None:
        self._observers.append(observer)
        for runner in self._runners.values():
            runner.add_observer(observer)

    # -------------------------------------------------------------------- run
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise until `shutdown` (then every runner stops gracefully).

        Cancelling this kills every runner (each supervisor's own clean-up).
        """
        state = self._life.state
        if state not in (_N.CREATED, _N.CLOSED):
            raise RuntimeError("RunnerNode.run() may only be called once")
        self._life.transition(_N.RUNNING if state is _N.CREATED else _N.STOPPING)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                waiting, self._waiting = self._waiting, []
                for runner in waiting:
                    tg.start_soon(self._supervise, runner, name=f"runner {runner.runner_id}")
                if self._gpu is not None:
                    tg.start_soon(self._watch_gpus, self._gpu, name="GPU watcher")
                task_status.started()
                await self._life.wait_for(_N.STOPPING)
                for runner in list(self._runners.values()):
                    runner.shutdown()
        finally:
            self._tg = None
            self._life.transition(_N.FINISHED)

    def shutdown(self) -> Done:
        """Stop every runner gracefully; `run` returns once all have ended."""
        self._life.advance(_N.CLOSED if self._life.state is _N.CREATED else _N.STOPPING)
        for runner in list(self._runners.values()):
            runner.shutdown()
        return DONE

    async def _supervise(self, runner: RestartingSupervisor) -> None:
        try:
            await runner.run()
        except Exception as exc:  # noqa: BLE001 - one runner's bug must not cancel the others
            logger.opt(exception=exc).error(
                "node: supervision of runner {} broke; it is stopped", runner.runner_id
            )
            runner.shutdown()


__all__ = ["NodeState", "RunnerNode", "UnknownGroupError", "UnknownRunnerError"]
