"""`GpuWatcher`: one NVML watcher per node, failing the runners a GPU fault broke.

It runs in the host's event loop as two anyio tasks and never in a runner:

- events: ``nvmlEventSetWait`` in a worker thread with a short timeout, for Xid
  critical errors and double-bit ECC errors. On one, it takes a fresh reading (so a
  runner that created its CUDA context a moment ago is found) and fails the runners
  `supervisor.gpu.decisions.on_event` names, with reason ``gpu_fault``, detected by
  ``nvml``, the Xid and its meaning in the diagnostics;
- sampling, every ``interval`` seconds: the pids on each GPU and their memory, ECC
  counts and retired pages, matched to each runner's process tree. A runner over
  its ``gpu_memory_limit`` is failed (reason ``memory_limit``); a GPU that NVML
  reports lost fails the runners on it.

The runners are anything with a ``config``, a ``current`` incarnation (its rank
``pids``) and the public ``fail`` verb: `RestartingSupervisor` (what `RunnerNode`
and the CLI hold). A failure is sent to the incarnation that was read, never to a
newer one that replaced it in between.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import anyio
import anyio.abc
import anyio.to_thread
from loguru import logger

from supervisor.config import SupervisorConfig
from supervisor.core.done import Done
from supervisor.gpu.decisions import (
    DeviceSample,
    FailRunner,
    GpuEvent,
    RunnerGpu,
    on_event,
    over_memory_limit,
    place,
)
from supervisor.gpu.nvml import Nvml
from supervisor.ipc.proctree import descendants
from supervisor.ops.observe import HealthSource, RunnerHealth, SupervisorObserver
from supervisor.ops.readiness import min_ready_of
from supervisor.protocol import Detector, FailureReason

#: Seconds between readings (pid memory, ECC, retired pages).
SAMPLE_INTERVAL = 1.0
#: Milliseconds one ``nvmlEventSetWait`` blocks its thread: also how long stopping
#: the watcher may wait for that thread.
EVENT_WAIT_MS = 250


class Incarnation(Protocol):
    @property
    def pids(self) -> Sequence[int]: ...


class Watched(Protocol):
    """A supervised runner as the watcher sees it (`RestartingSupervisor` is one)."""

    @property
    def config(self) -> SupervisorConfig: ...

    @property
    def current(self) -> Incarnation | None: ...

    def fail(
        self,
        reason: FailureReason,
        message: str,
        *,
        detected_by: Detector,
        diagnostics: Sequence[str] = (),
    ) -> Done: ...


def tree_pids(rank_pids: Sequence[int]) -> list[int]:
    """Every pid of a runner's tree: its ranks (their keepers) and all below them."""
    out: list[int] = []
    for pid in rank_pids:
        out.append(pid)
        out.extend(descendants(pid))
    return out


class GpuWatcher:
    """Watch every GPU of this node for the runners ``runners()`` returns."""

    def __init__(
        self,
        nvml: Nvml,
        runners: Callable[[], Mapping[str, Watched]],
        *,
        interval: float = SAMPLE_INTERVAL,
        event_wait_ms: int = EVENT_WAIT_MS,
    ) -> None:
        self.nvml = nvml
        self._runners = runners
        self.interval = interval
        self.event_wait_ms = event_wait_ms
        #: the latest reading of every GPU, and of each runner on one
        self.devices: list[DeviceSample] = []
        self.placement: dict[str, RunnerGpu] = {}
        #: every event NVML delivered, oldest first (the last 100)
        self.events: list[GpuEvent] = []
        #: every failure asked for, oldest first (the last 100)
        self.failed: list[FailRunner] = []
        #: indexes of the GPUs whose Xid events are watched (set once `run` started)
        self.registered: list[int] = []
        #: NVML calls that failed (each retried), and when one was last logged
        self.errors = 0
        self._error_logged = -math.inf
        self._lost: set[str] = set()
        self._failed_last: dict[str, Incarnation] = {}  # runner id -> incarnation failed
        self._sampled = anyio.Event()  # set, and replaced, at every reading

    # ------------------------------------------------------------------ views
    def runner_gpu(self, runner_id: str) -> RunnerGpu | None:
        """The runner's GPU memory and GPU health as of the latest reading."""
        return self.placement.get(runner_id)

    def annotate(self, snaps: Sequence[RunnerHealth]) -> list[RunnerHealth]:
        """Health snapshots with each runner's GPU fields filled in."""
        out = []
        for h in snaps:
            gpu = self.placement.get(h.runner_id)
            if gpu is None:
                out.append(h)
                continue
            out.append(
                dataclasses.replace(
                    h,
                    gpu_memory=gpu.memory,
                    gpus=gpu.gpus,
                    gpu_ecc_uncorrected=gpu.ecc_uncorrected,
                    gpu_retired_pages=gpu.retired_pages,
                    gpu_retirement_pending=gpu.retirement_pending,
                )
            )
        return out

    async def next_reading(self) -> None:
        """Wait for the next reading of the GPUs to be taken (tests, the GPU checks)."""
        await self._sampled.wait()

    # -------------------------------------------------------------------- run
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch until cancelled; NVML is shut down on the way out.

        Never raises for an NVML error or a bug of its own: GPU health is an extra
        watch, and a broken one must not take the node's runners down with it. A
        failing reading or wait is logged (once a minute at most) and tried again."""
        started = False
        try:
            self.registered = registered = await anyio.to_thread.run_sync(self.nvml.watch_events)
            logger.info(
                "GPU watcher: {} GPU(s), Xid events from {}",
                len(self.nvml.devices),
                ", ".join(map(str, registered)) or "none (sampling only)",
            )
            async with anyio.create_task_group() as tg:
                if registered:
                    tg.start_soon(self._wait_events)
                await self._guarded(self._sample_once)
                task_status.started()
                started = True
                while True:
                    await anyio.sleep(self.interval)
                    await self._guarded(self._sample_once)
        except Exception as exc:  # noqa: BLE001 - see the docstring: log, stop watching
            logger.opt(exception=exc).error("GPU watcher stopped; GPUs are not watched")
            if not started:
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.nvml.close)

    async def _guarded(self, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - one failed NVML call is retried next turn
            self.errors += 1
            now = time.monotonic()
            if now - self._error_logged >= 60.0:
                self._error_logged = now
                logger.opt(exception=exc).error("GPU watcher: NVML call failed; retrying")
            await anyio.sleep(min(1.0, self.interval))

    async def _wait_events(self) -> None:
        async def once() -> None:
            # Not abandoned on cancel: the thread returns within event_wait_ms, and no
            # NVML call outlives the watcher.
            event = await anyio.to_thread.run_sync(self.nvml.wait_event, self.event_wait_ms)
            if event is not None:
                await self.handle(event)

        while True:
            await self._guarded(once)

    async def handle(self, event: GpuEvent) -> None:
        """Act on one NVML event: read the GPUs again, fail whom it breaks."""
        self.events = [*self.events[-99:], event]
        logger.warning(
            "GPU watcher: GPU {} ({}): {}{}",
            event.index,
            event.uuid,
            event.kind,
            "" if event.xid is None else f" {event.xid}",
        )
        targets = await self._sample_once()
        self._act(on_event(event, self.placement), targets)

    async def _sample_once(self) -> dict[str, Incarnation]:
        """Read every GPU and every runner's tree; returns the incarnations read, so a
        failure goes to the one that was seen."""
        targets: dict[str, Incarnation] = {}
        ranks: dict[str, list[int]] = {}
        for runner_id, runner in list(self._runners().items()):
            inc = runner.current
            if inc is not None:
                targets[runner_id] = inc
                ranks[runner_id] = list(inc.pids)

        def read() -> tuple[list[DeviceSample], dict[str, list[int]]]:
            trees = {rid: tree_pids(pids) for rid, pids in ranks.items()}
            return self.nvml.sample(), trees

        devices, trees = await anyio.to_thread.run_sync(read)
        before, self.placement = self.placement, place(devices, trees)
        self.devices = devices
        self._sampled.set()
        self._sampled = anyio.Event()
        # Forget failures of incarnations no longer current (they hold their objects).
        self._failed_last = {
            rid: inc for rid, inc in self._failed_last.items() if targets.get(rid) is inc
        }
        for dev in devices:
            if not dev.lost:
                self._lost.discard(dev.uuid)  # back after a reset: a new loss counts again
            elif dev.uuid not in self._lost:
                # A lost GPU lists no processes: fail whom the reading before saw on it.
                self._lost.add(dev.uuid)
                self._act(on_event(GpuEvent(dev.index, dev.uuid, "gpu_lost"), before), targets)
        runners = self._runners()
        for runner_id, gpu in self.placement.items():
            watched = runners.get(runner_id)
            if watched is not None:
                limit = watched.config.gpu_memory_limit
                self._act(over_memory_limit({runner_id: gpu}, limit), targets)
        return targets

    def _act(self, decisions: Sequence[FailRunner], targets: Mapping[str, Incarnation]) -> None:
        runners = self._runners()
        for d in decisions:
            runner = runners.get(d.runner_id)
            inc = targets.get(d.runner_id)
            if runner is None or inc is None or runner.current is not inc:
                continue  # gone, or a newer incarnation: not the one the reading saw
            if self._failed_last.get(d.runner_id) is inc:
                continue  # already ending; its processes may still show for a reading
            self._failed_last[d.runner_id] = inc
            logger.error("GPU watcher: failing runner {}: {}", d.runner_id, d.message)
            self.failed = [*self.failed[-99:], d]
            runner.fail(d.reason, d.message, detected_by="nvml", diagnostics=d.diagnostics)


class GpuHealth:
    """A health source whose snapshots carry the watcher's GPU fields (for a source
    that is not a `RunnerNode`, e.g. the CLI's one supervisor)."""

    def __init__(self, source: HealthSource, watcher: GpuWatcher) -> None:
        self._source = source
        self.watcher = watcher
        self.min_ready = min_ready_of(source)

    def health_snapshots(self) -> Sequence[RunnerHealth]:
        return self.watcher.annotate(self._source.health_snapshots())

    def add_observer(self, observer: SupervisorObserver) -> None:
        self._source.add_observer(observer)


__all__ = ["EVENT_WAIT_MS", "SAMPLE_INTERVAL", "GpuHealth", "GpuWatcher", "Watched", "tree_pids"]
