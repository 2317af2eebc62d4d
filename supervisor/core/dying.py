"""The host's half of the early death signal: is the runner dying?

A runner that holds GiBs is reported dead by the kernel (pidfd, EOF, ``waitpid``)
only once its memory is torn down, hundreds of ms after a SIGKILL. Its sentinels
(`runners.deathwatch`) die with its threads, within a millisecond. When one does,
the runner's ``/proc/PID/stat`` says whether the runner is dying: its main thread a
zombie, exiting (``PF_EXITING``), or holding a pending SIGKILL (every thread gets
one when the process is killed or exits). A sentinel that died while the runner
lives was killed alone: the runner starts another, and nothing is reported.

The end is then reported at once, with the exit status the kernel already shows
(the main thread's ``exit_code``); the memory is released later, when the process
is reaped (`RunnerProcess.wait_exit`).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from supervisor.core.process import RunnerProcess, anyio_notify_closing
from supervisor.core.procfs import ProcFile

#: ``task->flags``: the task is in ``do_exit``.
PF_EXITING = 0x4
_SIGKILL = 1 << (signal.SIGKILL - 1)
#: How long to wait for a dying runner's exit status to show (its main thread must
#: run to take its SIGKILL); past it the usual exit path waits for the real one.
_STATUS_WITHIN = 0.02


@dataclass(frozen=True, slots=True)
class TaskStat:
    """The fields of ``/proc/PID/stat`` the judgement reads."""

    state: str
    ppid: int
    flags: int
    #: pending signals of the main thread (field 31, "signal")
    pending: int
    #: the main thread's exit status, ``waitpid`` style (field 52; 0 before Linux 3.5)
    exit_code: int


def parse_stat(data: bytes) -> TaskStat | None:
    """Parse ``/proc/PID/stat``; None for anything that is not one."""
    # "pid (comm) S ppid ...": comm may hold spaces and parentheses, so the fields
    # start after the last ')'.
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 1 :].split()
    try:
        state = fields[0].decode("ascii")
        exit_code = int(fields[49]) if len(fields) > 49 else 0
        return TaskStat(state, int(fields[1]), int(fields[6]), int(fields[28]), exit_code)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class Dying:
    """The runner is dying. ``exitcode`` as multiprocessing reports it (a signal
    negative), None while the kernel does not show it yet."""

    exitcode: int | None


def _exitcode(status: int) -> int:
    signum = status & 0x7F
    return -signum if signum else (status >> 8) & 0xFF


def parse_shared_pending(data: bytes) -> int:
    """The process-wide pending signals (``ShdPnd``) of ``/proc/PID/status``; 0 if absent."""
    for line in data.splitlines():
        if line.startswith(b"ShdPnd:"):
            try:
                return int(line[7:].strip(), 16)
            except ValueError:
                return 0
    return 0


def judge(stat: TaskStat | None, shared_pending: int = 0) -> Dying | None:
    """Is the process whose stat this is dying? None: it lives, as far as /proc shows.

    ``stat`` None (the process is already reaped) is a death whose status is unknown.
    ``shared_pending``: the process-wide pending signals. A SIGKILL there was sent to
    the process (a kill, the OOM killer), which gives the status before any thread ran
    (an ``exit_group`` also leaves SIGKILL pending, but only in each thread's own set).
    """
    if stat is None:
        return Dying(None)
    zombie = stat.state in ("Z", "X", "x")
    exiting = bool(stat.flags & PF_EXITING)
    if not (zombie or exiting or (stat.pending | shared_pending) & _SIGKILL):
        return None
    if zombie:
        return Dying(_exitcode(stat.exit_code))
    # Exiting: the kernel sets the status a few instructions after PF_EXITING, so a
    # 0 there may be "not yet"; a pending SIGKILL alone has no status yet.
    if exiting and stat.exit_code:
        return Dying(_exitcode(stat.exit_code))
    if shared_pending & _SIGKILL:
        return Dying(-signal.SIGKILL)
    return Dying(None)


class StatFile:
    """``/proc/PID/stat`` of one process, kept open (a `ProcFile`), parsed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._file = ProcFile(pid, "stat")

    def read(self) -> TaskStat | None:
        """None once the process is reaped (the open file then names nobody)."""
        data = self._file.read()
        return None if data is None else parse_stat(data)

    def shared_pending(self) -> int:
        """``ShdPnd`` from ``/proc/PID/status`` (read only when the stat is not enough)."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                return parse_shared_pending(f.read())
        except OSError:
            return 0

    def close(self) -> None:
        self._file.close()


class DeathWatch:
    """Watches one runner's sentinels; ends the watch when the runner is dying."""

    def __init__(self, proc: RunnerProcess) -> None:
        self._proc = proc
        #: `time.monotonic()` when the runner was found dying (None while it lives)
        self.dying_at: float | None = None
        #: the exit status read from /proc at that moment, if it showed already
        self.exitcode: int | None = None

    async def watch(self, on_dying: Callable[[], None]) -> None:
        """Return (after calling ``on_dying``) once the runner is known to be dying.

        Never returns where there are no sentinels (not Linux, no pidfds): the exit
        watch covers those runners as before."""
        proc = self._proc
        runner = await proc.wait_runner_pid()
        if runner is None or not hasattr(os, "pidfd_open"):
            await anyio.sleep_forever()
        assert runner is not None
        stat = StatFile(runner)
        poller = select.epoll()
        watched: dict[int, int] = {}  # pidfd -> sentinel pid
        seen: set[int] = set()  # sentinel pids adopted once: their slot may still hold them
        try:
            delay = 0.002
            while True:
                self._adopt(runner, watched, seen, poller)
                if len(watched) < len(proc.shared.sentinels()):
                    # One is missing (not started yet, or being replaced): look again.
                    with anyio.move_on_after(delay):
                        await anyio.wait_readable(poller.fileno())
                    delay = min(delay * 2, 2.0)
                else:
                    await anyio.wait_readable(poller.fileno())
                fired = [fd for fd, _ in poller.poll(0)]
                for fd in fired:
                    poller.unregister(fd)
                    os.close(fd)
                    del watched[fd]
                if not fired:
                    continue
                found = stat.read()
                dying = judge(found)
                if dying is not None and dying.exitcode is None and found is not None:
                    dying = judge(found, stat.shared_pending())
                if dying is None:
                    delay = 0.002  # killed alone: its replacement comes at once
                    continue
                self.dying_at = time.monotonic()
                self.exitcode = await self._status(stat, dying)
                on_dying()
                return
        finally:
            anyio_notify_closing(poller.fileno())
            poller.close()
            for fd in watched:
                os.close(fd)
            stat.close()

    def exitcode_now(self) -> int | None:
        """The runner's exit code if the kernel or its keeper already tells it, without
        waiting for its memory to go or its keeper to exit; None if neither does yet.

        A code found here (another detector, e.g. the event channel's EOF, came
        first) also dates the death: `dying_at` is set if the watch had not yet."""
        if self.exitcode is not None:
            return self.exitcode
        code = self._read_exitcode()
        if code is not None and self.dying_at is None:
            self.dying_at = time.monotonic()
        return code

    def _read_exitcode(self) -> int | None:
        proc = self._proc
        status = proc.shared.runner_status  # its keeper reaped it
        if status is not None:
            return _exitcode(status)
        runner = proc.runner_pid
        if runner is None or runner == proc.process_pid:
            return None  # no keeper: the process's own exit code comes as soon
        stat = StatFile(runner)
        found = stat.read()
        stat.close()
        # Exiting, or a zombie our keeper has not reaped yet: while its parent is our
        # keeper, the pid cannot be a stranger's.
        if found is None or found.ppid != proc.process_pid:
            return None
        dying = judge(found)
        return None if dying is None else dying.exitcode

    @staticmethod
    async def _status(stat: StatFile, dying: Dying) -> int | None:
        """The exit status, once the kernel shows it (its main thread must run first)."""
        deadline = time.monotonic() + _STATUS_WITHIN
        while dying.exitcode is None and time.monotonic() < deadline:
            await anyio.sleep(0.0002)
            again = stat.read()
            if again is None:
                return None  # reaped meanwhile: the exit path has the status
            dying = judge(again) or dying
        return dying.exitcode

    def _adopt(
        self, runner: int, watched: dict[int, int], seen: set[int], poller: select.epoll
    ) -> None:
        """Open a pidfd on each sentinel not watched yet: only the runner's own children."""
        for pid in self._proc.shared.sentinels():
            if not pid or pid in seen:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            # A sentinel that died and was reaped may have left its pid to a stranger.
            child = StatFile(pid)
            found = child.read()
            child.close()
            if found is None or found.ppid != runner:
                os.close(fd)
                continue
            seen.add(pid)
            watched[fd] = pid
            poller.register(fd, select.EPOLLIN)
