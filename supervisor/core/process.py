"""Starting, signalling and reaping one runner process (and its process group)."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import weakref
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import anyio

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.channel import ChannelReader, ChannelWriter
from supervisor.core.diagnostics import OutputCapture
from supervisor.core.procfs import ProcReader
from supervisor.ipc.shared import SharedState
from supervisor.ipc.spawn_args import BootstrapArgs

_live: weakref.WeakSet[RunnerProcess] = weakref.WeakSet()


def describe_signal(signum: int) -> str:
    try:
        name = signal.strsignal(signum) or signal.Signals(signum).name
    except ValueError:
        name = "unknown signal"
    return f"signal={signum} ({name})"


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        return describe_signal(-exitcode)
    return f"exitcode={exitcode}"


class RunnerProcess:
    """One spawned runner with the parent's ends of its three pipes."""

    def __init__(
        self,
        process: BaseProcess,
        events: ChannelReader,
        tasks: ChannelWriter,
        output: OutputCapture,
        shared: SharedState,
    ) -> None:
        self.process = process
        self.events = events
        self.tasks = tasks
        self.output = output
        self.shared = shared
        pid = process.pid
        assert pid is not None
        self.pid: int = pid
        self.sentinel: int = process.sentinel
        self.reader = ProcReader(pid)
        _live.add(self)

    @classmethod
    def spawn(cls, spec: RunnerSpec, config: SupervisorConfig, runner_id: str) -> RunnerProcess:
        from runners.bootstrap import main as runner_main

        ctx = multiprocessing.get_context(config.start_method)
        task_r, task_w = os.pipe()
        event_r, event_w = os.pipe()
        out_r, out_w = os.pipe()
        # Connection objects only for the child's ends: multiprocessing passes their
        # fds to the child. The parent keeps raw fds and reads them non-blocking.
        child_ends = (
            Connection(task_r, writable=False),
            Connection(event_w, readable=False),
            Connection(out_w, readable=False),
        )
        args = BootstrapArgs(
            runner_id=runner_id,
            spec=spec,
            tasks=child_ends[0],
            events=child_ends[1],
            output=child_ends[2],
            shared=SharedState.create(ctx),
            chaos=config.chaos,
            heartbeat_interval=config.heartbeat_interval,
        )
        process = ctx.Process(  # type: ignore[attr-defined]
            target=runner_main, args=(args,), name=f"runner-{runner_id}"
        )
        try:
            process.start()
        except BaseException:
            for fd in (task_w, event_r, out_r):
                os.close(fd)
            raise
        finally:
            # Closing our copies of the child's ends is what turns its death into EOF.
            for conn in child_ends:
                conn.close()
        return cls(
            process,
            ChannelReader(event_r),
            ChannelWriter(task_w),
            OutputCapture(
                out_r,
                runner_id,
                tail_lines=config.stderr_tail_lines,
                forward=config.forward_output,
            ),
            args.shared,
        )

    # ------------------------------------------------------------ signalling
    def signal_group(self, signum: int) -> None:
        """Signal the runner's whole process group (it leads its own)."""
        # Also after the leader was reaped: while any member lives, the kernel keeps
        # the leader's pid reserved as the group id, so this cannot hit a stranger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
        # The runner may not have called setpgid yet, or may have left the group.
        if self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)

    def kill_group(self) -> None:
        self.signal_group(signal.SIGKILL)

    # --------------------------------------------------------------- reaping
    @property
    def exitcode(self) -> int | None:
        """``waitpid(WNOHANG)`` until it reaps; multiprocessing caches the code then."""
        return self.process.exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    async def wait_exit(self, within: float) -> int | None:
        """Wait (without blocking the loop) up to ``within`` s for the exit code."""
        with anyio.move_on_after(within):
            delay = 0.001
            while self.exitcode is None:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.05)
        return self.exitcode

    async def terminate(self, stop_grace: float, *, frozen: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_grace``; straight to SIGKILL if frozen."""
        if self.exitcode is not None:
            self.kill_group()
            return self.exitcode
        if not frozen and stop_grace > 0:
            self.signal_group(signal.SIGTERM)
            code = await self.wait_exit(stop_grace)
            if code is not None:
                self.kill_group()  # stragglers in the group
                return code
        self.kill_group()
        return await self.wait_exit(5.0)

    def close(self) -> None:
        """Close every fd we hold. The process must have been reaped or killed."""
        self.events.close()
        self.tasks.close()
        self.output.close()
        self.reader.close()
        if self.exitcode is not None:
            anyio_notify_closing(self.sentinel)
            self.process.close()
        _live.discard(self)


def anyio_notify_closing(fd: int) -> None:
    # Outside an event loop there is nobody to notify.
    with contextlib.suppress(Exception):
        anyio.notify_closing(fd)


@atexit.register
def _kill_leftovers() -> None:
    """A host that exits without running its supervisors must not leave runners."""
    for proc in list(_live):
        if proc.exitcode is None:
            proc.kill_group()
            proc.process.join(1.0)
