"""`RunnerNode`: many supervised runners, keyed by runner id, in one task group.

One event stream for all of them (events carry their runner id, or a task id the
host chose), runners added and removed while the node runs, and isolation: each
runner is its own `RestartingSupervisor` in its own task, guarded so that one
runner's failure (or a bug in its supervision) never touches the others.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream
from loguru import logger

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.done import DONE, Done
from supervisor.core.lifecycle import StateMachine
from supervisor.errors import SupervisorClosedError
from supervisor.ops.observe import RunnerHealth, SupervisorObserver
from supervisor.protocol import BaseEvent, BaseTask
from supervisor.restart.policy import RestartPolicy
from supervisor.restart.supervisor import RestartingSupervisor


class UnknownRunnerError(KeyError):
    """No runner with that id in this node."""


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
    ) -> None:
        self._events = event_sender
        self.default_config = config or SupervisorConfig()
        self.default_policy = policy or RestartPolicy()
        self._observers: list[SupervisorObserver] = list(observers)
        self._runners: dict[str, RestartingSupervisor] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting: list[RestartingSupervisor] = []  # added before run()
        self._life = StateMachine(NodeState.CREATED, TRANSITIONS)

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
        if self._life.state not in (_N.CREATED, _N.RUNNING):
            raise SupervisorClosedError("the node is shutting down; no new runners")
        if not runner_id:
            raise ValueError("runner_id must be a non-empty string")
        if runner_id in self._runners:
            raise ValueError(f"runner {runner_id!r} already exists in this node")
        runner = RestartingSupervisor(
            spec=spec or RunnerSpec(),
            event_sender=self._events,
            config=config or self.default_config,
            policy=policy or self.default_policy,
            runner_id=runner_id,
            observers=self._observers,
        )
        self._runners[runner_id] = runner
        if self._tg is None:
            self._waiting.append(runner)
        else:
            self._tg.start_soon(self._supervise, runner, name=f"runner {runner_id}")
        return runner

    async def remove_runner(self, runner_id: str) -> None:
        """Shut ``runner_id`` down gracefully, wait for its end, and forget it."""
        runner = self[runner_id]
        runner.shutdown()
        if runner in self._waiting:
            self._waiting.remove(runner)
        elif runner.started:
            await runner.wait_finished()
        self._runners.pop(runner_id, None)

    async def start_task(
        self, runner_id: str, task: BaseTask, *, within: float | None = None
    ) -> None:
        await self[runner_id].start_task(task, within=within)

    def cancel_task(self, runner_id: str, task_id: str) -> Done:
        return self[runner_id].cancel_task(task_id)

    # ---------------------------------------------------------------- health
    def health_snapshots(self) -> Sequence[RunnerHealth]:
        return [r.health() for r in list(self._runners.values())]

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


__all__ = ["NodeState", "RunnerNode", "UnknownRunnerError"]
