"""Starting, signalling and reaping one runner process, and the tree it starts."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import time
import weakref
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import anyio

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.core.cgroups import RunnerCgroup
from supervisor.core.channel import ChannelReader, ChannelWriter
from supervisor.core.containment import Layer, choose, remove_later, runner_cgroup
from supervisor.core.diagnostics import OutputCapture
from supervisor.core.exec_env import exec_environment
from supervisor.core.tree_walk import TreeWalk
from supervisor.core.treemem import TreeReader
from supervisor.ipc import proctree
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
    """One spawned runner, the parent's ends of its three pipes, and its containment.

    Under a keeper (see `runners.keeper`) the process multiprocessing started is the
    keeper and the runner is its child: ``pid`` is the runner's as soon as it has
    reported it (first thing in its bootstrap), the keeper's before. ``exitcode`` is the
    keeper's, which exits as the runner did once the runner's tree is gone.
    """

    def __init__(
        self,
        process: BaseProcess,
        events: ChannelReader,
        tasks: ChannelWriter,
        output: OutputCapture,
        shared: SharedState,
        *,
        containment: Layer = "group",
        cgroup: RunnerCgroup | None = None,
        eager_tree: bool = True,
    ) -> None:
        self.process = process
        self.events = events
        self.tasks = tasks
        self.output = output
        self.shared = shared
        #: the layer holding the runner's tree (for logs and the health snapshot)
        self.containment: Layer = containment
        self.cgroup = cgroup
        pid = process.pid
        assert pid is not None
        self.process_pid: int = pid
        self._process_fd = _pidfd_open(pid)
        #: readable once the started process exited (a pidfd where the kernel has them:
        #: whoever else holds multiprocessing's sentinel pipe cannot delay it)
        self.sentinel: int = self._process_fd if self._process_fd is not None else process.sentinel
        self._runner_pid: int | None = None
        self._runner_fd: int | None = None
        if containment == "group":
            self._runner_pid, self._runner_fd = pid, self._process_fd
        self.closed = False
        #: the tree's /proc files kept open: walked at the polls (each one under a memory_limit)
        self._walk = TreeWalk()
        self.reader = TreeReader(
            lambda: self.pid,
            self._others,
            cgroup.memory if cgroup is not None else None,
            eager=eager_tree,
        )
        _live.add(self)

    @classmethod
    def spawn(
        cls,
        spec: RunnerSpec,
        config: SupervisorConfig,
        runner_id: str,
        env: Mapping[str, str] | None = None,
    ) -> RunnerProcess:
        """Start one runner; ``env`` is in its environment from exec on (a rank's)."""
        from runners.bootstrap import main as runner_main

        choice = choose(config.containment)
        cgroup = runner_cgroup(choice, config.containment, runner_id)
        layer: Layer = choice.layer if choice.layer != "cgroup" or cgroup else "keeper"
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
            heartbeat_interval=config.beat_interval,
            keeper=layer != "group",
            cgroup=str(cgroup.path) if cgroup is not None else None,
            host_pid=os.getpid(),
            env=dict(env or {}),
        )
        process = ctx.Process(  # type: ignore[attr-defined]
            target=runner_main, args=(args,), name=f"runner-{runner_id}"
        )
        try:
            with exec_environment(args.env):
                process.start()
        except BaseException:
            for fd in (task_w, event_r, out_r):
                os.close(fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            # Closing our copies of the child's ends is what turns its death into EOF.
            for conn in child_ends:
                conn.close()
        if cgroup is not None:
            cgroup.add(process.pid)  # the child joins by itself too; whichever is first
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
            containment=layer,
            cgroup=cgroup,
            eager_tree=config.memory_limit is not None,
        )

    # ------------------------------------------------------------ the runner
    @property
    def pid(self) -> int:
        """The runner's pid; the keeper's until the runner has reported its own."""
        return self.runner_pid or self.process_pid

    @property
    def runner_pid(self) -> int | None:
        """The runner's pid, None until it has reported it (keeper layers only)."""
        if self._runner_pid is None:
            self._resolve_runner()
        return self._runner_pid

    def _resolve_runner(self) -> None:
        pid = self.shared.runner_pid
        if not pid:
            return
        if pid == self.process_pid:  # no keeper after all (the split was refused)
            self._runner_pid, self._runner_fd = pid, self._process_fd
            return
        fd = _pidfd_open(pid)
        # A runner that died and was reaped at once may have left its pid to a
        # stranger: it is ours only while its parent is our keeper.
        if fd is not None and proctree.parent(pid) != self.process_pid:
            os.close(fd)
            fd = None
        self._runner_pid, self._runner_fd = pid, fd

    async def wait_runner_pid(self, within: float = 60.0) -> int | None:
        """Wait (without blocking the loop) until the runner reported its pid.

        None if it did not within ``within`` s, or the keeper exited first.
        """
        with anyio.move_on_after(within):
            delay = 0.002
            while self.runner_pid is None and not self.closed and self.exitcode is None:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.05)
        return self.runner_pid

    async def wait_runner_exit(self) -> float | None:
        """When the runner itself (not its keeper) exited, on ``time.monotonic()``.

        Waits, without blocking the loop, on the runner's pidfd: the one this process
        holds, verified as the keeper's child, never a second one opened by pid. None
        where its exit cannot be watched (no pidfd, Linux < 5.3) or we closed first.
        """
        if await self.wait_runner_pid() is None or self._runner_fd is None:
            return None
        # A duplicate: anyio allows one waiter per fd, and without a keeper the
        # runner's pidfd is also the sentinel the exit detector waits on.
        try:
            fd = os.dup(self._runner_fd)
        except OSError:
            return None
        try:
            await anyio.wait_readable(fd)
            return time.monotonic()
        finally:
            os.close(fd)

    def _root(self) -> int | None:
        """Where the tree walk starts: keeper or runner, while its pid is still ours."""
        if self.closed or self.exitcode is not None:
            return None  # reaped: its pid may name a stranger now
        return self.process_pid

    def _others(self) -> list[int]:
        """The tree's live processes other than keeper, runner and the runner's own
        sentinels (tiny ``sleep``s that die with it: neither its memory nor news)."""
        skip = {self.process_pid, self._runner_pid, *self.shared.sentinels()}
        if self.cgroup is not None:
            return [p for p in self.cgroup.pids() if p not in skip]
        root = self._root()
        return [] if root is None else [p for p in self._walk.descendants(root) if p not in skip]

    def descendants(self) -> list[tuple[int, str]]:
        """(pid, name) of what the runner started that still lives: for diagnostics,
        taken just before a kill."""
        return [(pid, proctree.name(pid)) for pid in self._others()]

    def tree_memory(self) -> tuple[int, int] | None:
        """(bytes, other processes) of the runner's tree, as ``memory_limit`` sees it."""
        total = self.reader.rss()
        return None if total is None else (total, self.reader.descendant_count)

    # ------------------------------------------------------------ signalling
    def signal_group(self, signum: int) -> None:
        """Signal the runner's whole process group (it leads its own)."""
        runner = self.runner_pid
        if runner is None:
            # Not reported yet: the keeper forwards SIGTERM and the like; its death
            # (SIGKILL) takes the runner down with it through PDEATHSIG.
            if self.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.process_pid, signum)
            return
        # Also after the leader was reaped: while any member lives, the kernel keeps
        # the leader's pid reserved as the group id, so this cannot hit a stranger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(runner, signum)
        # The runner may not have called setpgid yet, or may have left the group.
        # A pidfd cannot name a stranger; without one, only an unreaped child is safe.
        if self._runner_fd is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self._runner_fd, signum)
        elif runner == self.process_pid and self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(runner, signum)

    def kill_group(self) -> None:
        """SIGKILL the runner, its group, and every process of its tree."""
        others = self._others()
        self.signal_group(signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()
        for pid in others:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

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
            if self._process_fd is not None and self.exitcode is None:
                # The exit itself, no polling; if someone else waits on it, poll instead.
                with contextlib.suppress(anyio.BusyResourceError, anyio.ClosedResourceError):
                    await anyio.wait_readable(self._process_fd)
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
        self._walk.close()
        for fd in {self._runner_fd, self._process_fd} - {None}:
            assert fd is not None
            anyio_notify_closing(fd)
            os.close(fd)
        self._runner_fd = self._process_fd = None
        if self.exitcode is not None:
            if self.sentinel == self.process.sentinel:
                anyio_notify_closing(self.sentinel)
            self.process.close()
        if self.cgroup is not None:
            remove_later(self.cgroup)
        self.closed = True
        _live.discard(self)


def _pidfd_open(pid: int) -> int | None:
    """A pidfd (Linux >= 5.3): readable at exit, immune to pid reuse. None elsewhere."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


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
