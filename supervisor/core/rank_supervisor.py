"""`RankSupervisor`: one runner process (one rank of a logical runner), watched from
an anyio task group.

`RunnerSupervisor` (``runner_supervisor``) is the logical runner the host talks to;
it is made of one `RankSupervisor` per rank process. This is a coordinator over
named parts: the task book (`tasks`), the relay of events to
the host and of the end's report (`relay`), the detectors `detection.registry`
lists (watch loops, health canary, fatal lines) and the classification of the end
(`verdict`). It owns
the commands, the stop path and the one path that ends an incarnation; its
lifecycle is one `StateMachine` over `Life` (`lifecycle`).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import NoReturn

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core import ticker, verdict
from supervisor.core.detection import registry
from supervisor.core.detection.interface import EndCause, Watched
from supervisor.core.detection.liveness import ResourceSample
from supervisor.core.detection.prober import Prober
from supervisor.core.detection.watches import Detectors
from supervisor.core.done import DONE, Done
from supervisor.core.dying import DeathWatch
from supervisor.core.evidence import OomEvidence, OomWitness
from supervisor.core.host_stream import HostStream
from supervisor.core.native_stacks import dump_native_stacks
from supervisor.core.process import RunnerProcess
from supervisor.core.relay import Relay
from supervisor.core.statemachine import LIFE_TABLE, Life, Notifier, StateMachine, Stop
from supervisor.core.tasks import RECENT_TASK_IDS as RECENT_TASK_IDS
from supervisor.core.tasks import TaskBook, validate_task
from supervisor.errors import RunnerFailedError, SupervisorClosedError
from supervisor.logs.files import runner_logger
from supervisor.logs.hook import fatal_message, output_hook
from supervisor.protocol import (
    BaseEvent,
    BaseRunnerStatus,
    BaseTask,
    CancelTask,
    Detector,
    FailureReason,
    RunnerFailed,
    RunnerReady,
    Shutdown,
)

#: The log-file stream name of py-spy's native stacks (runner output is "output").
NATIVE_STREAM = "native"
#: How long a dying runner may take to be reaped after its end was reported.
_RELEASE_WITHIN = 60.0


class RankSupervisor:
    """Spawns one runner process, forwards its events, and reports its end exactly once."""

    def __init__(
        self,
        *,
        spec: RunnerSpec,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig,
        runner_id: str,
        proc: RunnerProcess,
        incarnation: int = 1,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.runner_id = runner_id
        self.started_at = time.monotonic()
        self.exit_code: int | None = None
        self.incarnation = incarnation
        self._proc = proc
        #: the kernel's OOM counters over this runner's life, read after a SIGKILL
        self._oom = OomWitness()
        # read from shared memory only: the writer thread calls this too (under a keeper
        # the runner's own pid comes later, so it is read per line)
        pid = lambda: proc.shared.runner_pid or proc.process_pid  # noqa: E731
        # Lines bound to a runner reach its log file (and are fields of JSON logs).
        self._log = runner_logger(runner_id, incarnation=incarnation, pid=pid)
        self._output_hook = output_hook(
            config,
            runner_id,
            incarnation=incarnation,
            pid=pid,
            on_fatal=self._fatal_line,
        )
        if self._output_hook is not None:
            proc.output.on_line = self._output_hook.on_line
        self._life = StateMachine(Life.CREATED, LIFE_TABLE)
        self._stop = Stop.NONE
        self._stop_changed = Notifier()
        self._book = TaskBook()
        self._cause: EndCause | None = None
        self._early_end: EndCause | None = None  # `fail` before `run`
        #: told the moment this rank starts ending (its group stops the other ranks)
        self._on_end = on_end
        self._scope: anyio.CancelScope | None = None
        #: the pids of this runner's other ranks, whose native stacks a wedge also shows
        self.peers: Callable[[], Sequence[int]] = tuple
        self._prober = Prober(
            config,
            runner_id=runner_id,
            send=proc.tasks.put,
            idle=self._idle,
            end=self._end,
            log=self._log,
        )
        self._relay = Relay(
            proc.events,
            HostStream(event_sender, runner_id),
            self._book,
            self._prober,
            config,
            runner_id=runner_id,
            started_at=self.started_at,
            end=self._end,
            log=self._log,
        )
        self._dying = DeathWatch(proc)
        self._reported_early = False  # the end was reported before the process was reaped
        self._watch = Detectors(
            proc,
            config,
            runner_id=runner_id,
            started_at=self.started_at,
            end=self._end,
            phases=self._relay,
            log=self._log,
        )

    @classmethod
    def create(
        cls,
        *,
        spec: RunnerSpec | None = None,
        event_sender: MemoryObjectSendStream[BaseEvent],
        config: SupervisorConfig | None = None,
        runner_id: str | None = None,
        incarnation: int = 1,
        env: Mapping[str, str] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> RankSupervisor:
        """Spawn the runner process now; call `run` to watch it.

        ``incarnation`` numbers this runner id's processes (a restarting supervisor
        counts them); it stamps the runner's log lines. ``env`` is in the process's
        environment from its start (a rank's torchrun variables); ``on_end`` is
        called once, synchronously, when the rank starts ending."""
        spec = spec or RunnerSpec()
        config = config or SupervisorConfig()
        rid = runner_id or spec.runner_id or f"runner-{uuid.uuid4().hex[:8]}"
        proc = RunnerProcess.spawn(spec, config, rid, env)
        sup = cls(
            spec=spec,
            event_sender=event_sender,
            config=config,
            runner_id=rid,
            proc=proc,
            incarnation=incarnation,
            on_end=on_end,
        )
        # The runner reports its own pid once it runs: this is the process started.
        runner_logger(rid, incarnation=incarnation, pid=lambda: proc.process_pid).info(
            "spawned runner {} (process {}, containment {}, engine {})",
            rid,
            proc.process_pid,
            proc.containment,
            spec.engine,
        )
        return sup

    # ---------------------------------------------------------------- read-only
    @property
    def pid(self) -> int:
        return self._proc.pid

    # -- containment (keeper): ``pid`` is the keeper's until the runner reports its own
    @property
    def runner_pid(self) -> int | None:
        """The runner's own pid; None until it has reported it."""
        return self._proc.runner_pid

    async def wait_runner_pid(self, within: float = 60.0) -> int:
        """The runner's own pid, once it reported it (``pid`` as a fallback)."""
        return await self._proc.wait_runner_pid(within) or self._proc.pid

    async def wait_runner_exit(self) -> float | None:
        """When the runner itself exited (``time.monotonic()``); None where its exit
        cannot be watched. Returns once it has exited."""
        return await self._proc.wait_runner_exit()

    @property
    def containment(self) -> str:
        """What holds the runner's process tree: ``cgroup``, ``keeper`` or ``group``."""
        return self._proc.containment

    @property
    def status(self) -> BaseRunnerStatus:
        return self._relay.status

    @property
    def failure(self) -> RunnerFailed | None:
        return self._relay.failure

    @property
    def pending(self) -> Mapping[str, BaseTask]:
        """Tasks sent to the runner and not yet acknowledged."""
        return dict(self._book.pending)

    @property
    def in_progress(self) -> Mapping[str, BaseTask]:
        """Acknowledged tasks without a terminal status yet."""
        return dict(self._book.in_progress)

    @property
    def finished(self) -> bool:
        """True once the runner is gone and its end was reported."""
        return self._life.state is Life.FINISHED

    async def wait_finished(self) -> None:
        """Wait until `run` has reported the runner's end (shutdown or failure)."""
        await self._life.wait_for(Life.FINISHED)

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the runner's heartbeat last changed (None before the first)."""
        return self._watch.heartbeat_age()

    @property
    def resources(self) -> ResourceSample | None:
        """The latest RSS and CPU reading of the runner (None before the first)."""
        return self._watch.resources

    @property
    def failed_at(self) -> float | None:
        """`time.monotonic()` when the failure was reported (None without one)."""
        return self._relay.failed_at

    @property
    def dying_at(self) -> float | None:
        """`time.monotonic()` when the runner was seen dying, before its memory was
        released (None while it lives, or when its exit was the first news)."""
        return self._dying.dying_at

    @property
    def released(self) -> bool:
        """True once the runner's process is gone and reaped: its memory is free."""
        return self._proc.closed or self._proc.exitcode is not None

    async def wait_released(self) -> None:
        """Wait until the runner's memory is free (`run` has ended). A restart that
        needs the memory (the same GPU) waits for this, not for the failure report."""
        await self._life.wait_for(Life.FINISHED)

    @property
    def probes_sent(self) -> int:
        return self._prober.sent

    # ------------------------------------------------------------------ commands
    async def start_task(self, task: BaseTask) -> None:
        """Send ``task``; return once the runner acknowledged it.

        Raises `RunnerFailedError` (with its failure) if the runner fails first or
        already failed, `SupervisorClosedError` once it is shut down or shutting
        down, `DuplicateTaskError` for a task id already in use, `ReservedTaskIdError`
        for one in the supervisor's own namespace, and `TypeError` or `ValueError`
        for a malformed task (the supervisor keeps running).
        """
        validate_task(task, self.config.max_task_bytes)
        if self._relay.failure is None and self._life.state is Life.ENDING:
            await self._life.wait_for(Life.FINISHED)  # how it ends says why we refuse
        stopping = self._stop is not Stop.NONE and not isinstance(task, Shutdown)
        if self._relay.failure is not None or self.finished or stopping:
            self._refuse("is shut down or shutting down; no new tasks")
        self._book.check_new(task.task_id)
        if isinstance(task, Shutdown):
            self._ask_stop(Stop.ASKED)
        self._proc.tasks.put(task)  # pickles first: an unpicklable task raises here
        waiter = self._book.sent(task)
        await waiter.event.wait()
        if not waiter.acked:
            self._refuse("stopped before acknowledging the task")

    def _refuse(self, why: str) -> NoReturn:
        """The runner failed (its failure says why) or was stopped: no task for it."""
        if self._relay.failure is not None:
            raise RunnerFailedError(self._relay.failure)
        raise SupervisorClosedError(f"runner {self.runner_id} {why}")

    def cancel_task(self, task_id: str) -> Done:
        """Ask the runner to stop ``task_id`` at its next step. Never blocks."""
        if self._book.is_open(task_id):
            self._proc.tasks.put(CancelTask(task_id=task_id))
        return DONE

    def shutdown(self) -> Done:
        """Graceful stop: a Shutdown task, SIGTERM after ``shutdown_grace``, then SIGKILL."""
        if self._stop is Stop.NONE and not self.finished:
            self._ask_stop(Stop.ASKED)
            self._proc.tasks.put(Shutdown(task_id=f"shutdown-{uuid.uuid4().hex[:8]}"))
        return DONE

    def kill(self) -> Done:
        """Stop the runner now with SIGKILL (reported as a stop, not a failure)."""
        if not self.finished:
            self._ask_stop(Stop.FORCED)
            self._proc.kill_group()
        return DONE

    def fail(
        self,
        reason: FailureReason,
        message: str,
        *,
        detected_by: Detector,
        diagnostics: Sequence[str] = (),
    ) -> Done:
        """An outside watcher (GPU health, an operator's tool) found the runner broken:
        end it now as a failure with ``reason``. The usual end path reports it (once,
        if nothing else ended it first), fails its tasks and stops the process. Never
        blocks; before `run` the failure is reported as soon as `run` starts."""
        cause = EndCause(
            detected_by=detected_by, reason=reason, message=message, evidence=tuple(diagnostics)
        )
        if self._life.state is Life.CREATED:
            self._early_end = self._early_end or cause
        else:
            self._end(cause)
        return DONE

    def discard(self) -> None:
        """Kill a rank that will never run (its group could not be started whole) and
        close what it holds. Only before `run`."""
        if self._life.state is not Life.CREATED:
            raise RuntimeError("RankSupervisor.discard() is only for a rank that never ran")
        self._proc.kill_group()
        self._proc.process.join(2.0)
        self._proc.close()
        self._close_output_hook()

    def _ask_stop(self, level: Stop) -> None:
        if level > self._stop:
            self._stop = level
            self._stop_changed.notify()

    # ----------------------------------------------------------------------- run
    async def run(self) -> None:
        """Watch the runner until it shuts down or fails. Never raises for a failure."""
        if not self._life.can(Life.RUNNING):
            raise RuntimeError("RankSupervisor.run() may only be called once")
        self._life.transition(Life.RUNNING)
        if self._early_end is not None:
            self._end(self._early_end)
        # Every detector's loop, as the registry lists them, then the rank's own loops.
        watched = Watched(
            watches=self._watch,
            prober=self._prober,
            relay=self._relay,
            early_death=self._watch_dying,
        )
        watchers: list[Callable[[], Awaitable[None]]] = [
            *(partial(spec.run, watched) for spec in registry.loops() if spec.run is not None),
            self._proc.tasks.flush_forever,
            self._proc.output.pump,
            self._escalate_stop,
            self._note_cgroup,
        ]
        try:
            if self._life.state is Life.RUNNING:
                async with anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    for watcher in watchers:
                        tg.start_soon(self._guard, watcher)
            await self._finish()
        finally:
            if not self.finished:
                with anyio.CancelScope(shield=True):
                    await self._abandon()

    def _end(self, cause: EndCause) -> None:
        """First detector wins; the rest are cancelled. Synchronous: no race."""
        if self._life.advance(Life.ENDING):
            self._cause = cause
            if self._scope is not None:
                self._scope.cancel()
            if not self._takes_stacks(cause):
                self._tell_end()

    def _takes_stacks(self, cause: EndCause) -> bool:
        """Whether the end path reads the live runner's stacks before it reports."""
        reason = cause.reason
        return (
            self.config.dump_stacks
            and reason not in (None, "memory_limit")
            and not (cause.frozen or self._proc.exitcode is not None)
        )

    def _tell_end(self) -> None:
        """Tell the group (once) that this rank ends: it kills the other ranks. After
        the stacks were read, when they are: the siblings' are read too."""
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    async def _watch_dying(self) -> None:
        """The early death signal: a dying runner is reported before its memory is free."""
        await self._dying.watch(lambda: self._end(EndCause(detected_by="sentinel")))

    def _fatal_line(self, name: str, line: str) -> None:
        """A fatal pattern matched a runner output line: end the runner now."""
        self._end(
            EndCause(
                detected_by="log",
                reason="fatal_log",
                message=fatal_message(name, line),
                evidence=(line,),
            )
        )

    def _close_output_hook(self) -> None:
        if self._output_hook is not None:
            self._output_hook.close()

    async def _guard(self, watcher: Callable[[], Awaitable[None]]) -> None:
        try:
            await watcher()
        except Exception as exc:  # noqa: BLE001 - a supervisor bug must not take down the host
            self._log.opt(exception=exc).error("supervisor {} internal error", self.runner_id)
            message = f"supervisor internal error: {type(exc).__name__}: {exc}"
            cause = EndCause(detected_by="supervisor", reason="supervisor_error", message=message)
            self._end(cause)

    def _idle(self) -> bool:
        book = self._book
        return (
            isinstance(self._relay.status, RunnerReady)
            and not book.pending
            and not book.in_progress
            and self._stop is Stop.NONE
        )

    async def _note_cgroup(self) -> None:
        """Follow the runner's memory cgroup while it lives: after it is gone, its
        cgroup can no longer be found, and its OOM counter is the kernel's evidence."""
        pid = await self._proc.wait_runner_pid()
        if pid is None:
            return

        def note() -> bool:
            self._oom.note(pid)
            return False

        try:  # with the polls: no timer of its own
            await ticker.every(self.config.poll_interval, note)
        finally:
            self._oom.close()

    async def _escalate_stop(self) -> None:
        await self._stop_changed.wait_until(lambda: self._stop is not Stop.NONE)
        cfg = self.config
        await anyio.sleep(cfg.shutdown_grace)
        self._log.warning(
            "runner {} did not shut down within {:g}s; sending SIGTERM",
            self.runner_id,
            cfg.shutdown_grace,
        )
        self._ask_stop(Stop.FORCED)
        self._proc.signal_group(signal.SIGTERM)
        await anyio.sleep(cfg.stop_grace)
        self._log.warning("runner {} ignored SIGTERM; sending SIGKILL", self.runner_id)
        self._proc.kill_group()

    # ------------------------------------------------------------------ ending
    async def _finish(self) -> None:
        """The one path that ends an incarnation: report once, then clean up."""
        self._end(EndCause(detected_by="channel"))  # no-op when a detector ended it
        cause = self._cause
        assert cause is not None
        # Events the runner wrote before it died come first (chunks in order).
        await self._relay.drain()
        if cause.reason is not None and self._proc.exitcode is None:
            await self._fail_live_runner(cause)
        else:
            await self._end_exited_runner(cause)
        await self._await_release()
        self._proc.close()
        self._close_output_hook()
        self._life.transition(Life.FINISHED)

    async def _await_release(self) -> None:
        """After an early report: wait until the dying runner is reaped (its memory
        free), so that `run` returns, and a restart starts, only then."""
        proc = self._proc
        if not self._reported_early:
            return
        proc.kill_group()  # what the runner started dies with it
        if await proc.wait_exit(_RELEASE_WITHIN) is None:
            self._log.warning(
                "runner {}: still not reaped {:g}s after its end", self.runner_id, _RELEASE_WITHIN
            )
            return
        await proc.output.drain(0.1)  # its last lines, for the log file

    async def _fail_live_runner(self, cause: EndCause) -> None:
        """Heartbeat, progress, memory, probe or internal failure: the process still exists."""
        proc, cfg = self._proc, self.config
        notes: list[str] = []
        native: list[str] = []
        # (A stopped process (SIGSTOP) can neither run faulthandler nor be read by py-spy.)
        if self._takes_stacks(cause):
            # Native frames first: faulthandler's signal moves the stack it interrupts.
            native = await self._native_stacks()
            self._tell_end()
            # faulthandler in the runner prints every thread's stack on SIGUSR1.
            proc.signal_group(signal.SIGUSR1)
            # faulthandler writes from the signal handler at once; 0.15 s is slack.
            await proc.output.drain(0.15)
            notes.append(verdict.stack_dump_note(cause))
        self._tell_end()  # (a no-op when told already)
        killed = proc.descendants()  # what dies with it: a tokenizer pool, a compile worker
        if killed:
            notes.append(verdict.descendants_note(killed))
        await self._relay.report_failure(
            verdict.live_failure(
                cause, proc.output, cfg.diagnostics_lines, [*cause.evidence, *notes], native
            )
        )
        self.exit_code = await proc.terminate(cfg.stop_grace, frozen=cause.frozen)
        await proc.output.drain(0.1)

    async def _native_stacks(self) -> list[str]:
        """py-spy's native stacks of this rank and its siblings (where installed), also
        written to the runner's log file beside faulthandler's Python stacks."""
        pids = [self._proc.pid, *(p for p in self.peers() if p != self._proc.pid)]
        lines = await dump_native_stacks(pids)
        if self._output_hook is not None:
            for line in lines:
                self._output_hook.on_line(NATIVE_STREAM, line)
        return lines

    async def _end_exited_runner(self, cause: EndCause) -> None:
        proc, cfg = self._proc, self.config
        self._tell_end()  # it died meanwhile: no stacks to wait for
        # Dying, with its status shown in /proc: no need to wait for its memory to go.
        early = self._dying.exitcode_now() if proc.exitcode is None else None
        self._reported_early = early is not None
        code = early if early is not None else await proc.wait_exit(1.0)
        stopped_by_us = False
        if code is None:
            # EOF on the event channel but still running: it closed its end or is
            # tearing down; it is useless to us either way. The signal it then dies
            # of is ours, and its report must say so.
            code = await proc.terminate(cfg.stop_grace)
            if self._stop is Stop.ASKED:
                self._ask_stop(Stop.FORCED)
            stopped_by_us = True
        if early is None:
            proc.kill_group()  # grandchildren in the runner's group die with it
            await proc.output.drain(0.1)
        else:
            # Dying: EOF comes only once its memory is gone, so take what is there; its
            # tree is killed right after the report (the walk costs ms on a busy host).
            await proc.output.drain(0.0)
        await self._relay.drain()
        self.exit_code = code
        if verdict.is_stop(code, self._relay.status, forced=self._stop is Stop.FORCED):
            await self._relay.report_stop(verdict.stop_note(code))
            return
        crash, resources = self._relay.crash, self.resources
        oom: OomEvidence | None = None
        if code == -signal.SIGKILL and not stopped_by_us and crash is None:
            oom = await self._oom.after_sigkill({proc.process_pid, proc.pid})
        await self._relay.report_failure(
            verdict.exit_failure(
                code,
                cause.detected_by,
                crash,
                resources,
                proc.output,
                cfg,
                oom=oom,
                stopped_by_us=stopped_by_us,
            )
        )

    async def _abandon(self) -> None:
        """The host cancelled `run` (or it broke): kill the runner, release everyone."""
        proc = self._proc
        self._tell_end()  # cancelled while reading stacks: the group still hears of it
        proc.kill_group()
        self.exit_code = code = await proc.wait_exit(2.0)
        await self._relay.report_abandoned(verdict.abandoned(code))
        proc.close()
        self._close_output_hook()
        self._life.transition(Life.FINISHED)
