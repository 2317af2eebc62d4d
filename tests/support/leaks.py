"""The one leak check of tests and e2e: no processes, threads or fds left behind.

`no_leaks` is an autouse fixture that both conftests import. It compares the test
process before and after each test: every descendant process (grandchildren
included), every thread and every open fd.

A runner started by a CLI under test is our grandchild; when the CLI dies first the
kernel would hand the runner to init and it would drop out of our tree unseen. The
test process therefore makes itself a child subreaper: orphans of its descendants
are re-parented to it, stay visible to the check, and are reaped here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

#: Long-lived helpers multiprocessing starts once per host process, by design.
_INFRA_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker")
#: Idle worker threads the event loops keep for a while after a `to_thread` call.
_LOOP_POOL_THREADS = ("AnyIO worker thread", "Trio thread")
#: multiprocessing keeps one shared-memory arena and the resource tracker's pipe open
#: for the life of the process; they are created once, not per supervisor. So is the
#: host's one reader of the kernel log (supervisor.core.evidence.kmsg.kernel_log).
_INFRA_FD_MARKERS = ("/dev/shm", "pym-", "/tmp", "/dev/kmsg")

_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux; idempotent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def running(pid: int) -> bool:
    """True while ``pid`` runs: a zombie (exited, not yet reaped) is not running."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_infra(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return True
    return any(marker in cmdline for marker in _INFRA_MARKERS)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]!r}"
    except psutil.Error:
        return str(proc.pid)


def stray_processes(exclude: set[int]) -> list[psutil.Process]:
    """Running descendants of this process, other than ``exclude`` and infrastructure."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if child.pid not in exclude and running(child.pid) and not _is_infra(child)
    ]


def fd_targets() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return out


def _threads() -> dict[int, str]:
    return {
        t.ident: t.name
        for t in threading.enumerate()
        if t.ident is not None and t.is_alive() and not t.name.startswith(_LOOP_POOL_THREADS)
    }


@dataclass
class Snapshot:
    """What this process had running and open at one moment."""

    children: set[int]
    threads: set[int]
    fds: dict[int, str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            children={p.pid for p in psutil.Process().children(recursive=True) if running(p.pid)},
            threads=set(_threads()),
            fds=fd_targets(),
        )

    def leaks(self) -> list[str]:
        problems = []
        strays = stray_processes(self.children)
        if strays:
            problems.append(f"processes left: {[_describe(p) for p in strays]}")
        threads = [name for ident, name in _threads().items() if ident not in self.threads]
        if threads:
            problems.append(f"threads left: {threads}")
        new = {
            fd: target
            for fd, target in fd_targets().items()
            if fd not in self.fds and not any(m in target for m in _INFRA_FD_MARKERS)
        }
        if new:
            problems.append(f"fds left: {new}")
        return problems

    def wait_clean(self, timeout: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            problems = self.leaks()
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.05)

    def clean_up(self) -> None:
        """Kill what the test left running and reap the orphans adopted meanwhile, so
        that one leaking test is reported once instead of failing every later one."""
        strays = stray_processes(self.children)
        for proc in strays:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while any(running(p.pid) for p in strays) and time.monotonic() < deadline:
            time.sleep(0.02)
        for child in psutil.Process().children():
            # Only zombies that were not running when the test began: older children
            # (multiprocessing's helpers) belong to someone who reaps them.
            if child.pid not in self.children and not running(child.pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, os.WNOHANG)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test: no processes (descendants at any depth), threads or fds left behind."""
    adopt_orphans()
    before = Snapshot.take()
    yield
    problems = before.wait_clean()
    before.clean_up()
    assert not problems, "; ".join(problems)
