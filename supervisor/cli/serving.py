"""The CLI's run loop with a restart policy, health endpoints and systemd notification.

Used when ``--restart`` is not ``never``, ``--health-port`` is given, or systemd's
``NOTIFY_SOCKET`` is set. A `RestartingSupervisor` owns the runner's load and
warm-up (it re-drives them after every restart), so this loop only feeds tasks.
Every new runner process is announced with a ``RunnerStarted`` record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import anyio
from loguru import logger

from supervisor.cli.worker import (
    TaskTracker,
    WorkerRun,
)
from supervisor.ops.sdnotify import run_sd_notify
from supervisor.protocol import BaseEvent, BaseTask, RunnerIdle, RunnerStatusUpdated
from supervisor.restart.policy import RestartPolicy
from supervisor.restart.supervisor import RestartingSupervisor


@dataclass
class ServingWorkerRun(WorkerRun):
    """`WorkerRun` over a `RestartingSupervisor`, with /healthz, /readyz, /metrics."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    health_host: str = "127.0.0.1"
    health_port: int | None = None

    rsup: RestartingSupervisor | None = field(default=None, init=False)

    async def run(self) -> int:
        self.tracker = TaskTracker()
        self._driver = anyio.CancelScope()
        send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
        metrics = None
        if self.health_port is not None:
            from supervisor.ops.metrics import SupervisorMetrics

            metrics = SupervisorMetrics()
        rsup = RestartingSupervisor(
            spec=self.spec,
            event_sender=send,
            config=self.config,
            policy=self.policy,
            observers=[metrics] if metrics is not None else (),
        )
        self.rsup = rsup
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._supervise, rsup, send)
            tg.start_soon(self._consume, recv)
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            if metrics is not None:
                from supervisor.ops.health import serve_health

                metrics.watch_live(rsup)
                try:
                    await tg.start(serve_health, rsup, self.health_host, self.health_port, metrics)
                except OSError as exc:  # port in use, address not ours: a usage error
                    logger.error(
                        "cannot serve health endpoints on {}:{}: {}",
                        self.health_host,
                        self.health_port,
                        exc.strerror or exc,
                    )
                    self.bad_input += 1
                    self._driver.cancel()
            tg.start_soon(run_sd_notify, rsup)
            await self.serve(tg)
            rsup.shutdown()
            await rsup.wait_finished()
            await self.tracker.wait_closed()
            tg.cancel_scope.cancel()
        code = self.exit_code()
        current = rsup.current
        self.output.finished(code, current.exit_code if current is not None else None)
        return code

    def _before_event(self, event: BaseEvent) -> None:
        rsup = self.rsup
        if (
            rsup is not None
            and isinstance(event, RunnerStatusUpdated)
            and isinstance(event.status, RunnerIdle)
            and rsup.pid is not None
        ):
            self.output.started(rsup.pid, rsup.runner_id)  # each new runner process

    def _shutdown_runner(self) -> None:
        if self.rsup is not None:
            self.rsup.shutdown()

    def _kill_runner(self) -> None:
        current = self.rsup.current if self.rsup is not None else None
        if current is not None:
            current.kill()

    def _startup_tasks(self) -> tuple[BaseTask, ...]:
        return ()  # RestartingSupervisor loads and warms up every incarnation itself

    async def _start_task(self, task: BaseTask) -> None:
        assert self.rsup is not None
        await self.rsup.start_task(task)  # waits for a Ready incarnation

    def _runner_gone(self) -> bool:
        return self.rsup is not None and (self.rsup.gave_up or self.rsup.finished)

    def _runner_failed(self) -> bool:
        """Only giving up is the run's failure (systemd or the kubelet take over then).

        A failure the policy recovered from is not: the tasks it failed count as
        failed tasks (3).
        """
        return self.rsup is not None and self.rsup.gave_up
