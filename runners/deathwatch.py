"""The runner's half of the early death signal: two sentinel processes.

A SIGKILLed runner is reported dead by the kernel (pidfd readable, pipe EOF,
``waitpid``) only once its last thread has torn its memory down: a quarter of a
second for 4 GiB, more for more. Its other threads are gone within a millisecond.
A child armed with ``PR_SET_PDEATHSIG`` is signalled when the *thread* that started
it exits, so a sentinel dies with its thread, long before the memory is free.

Two threads each keep one sentinel: the thread that drops the last reference to the
memory tears it down, and only one thread can be last, so at least one sentinel dies
at once. The host watches both sentinels' pidfds and, when one fires, asks /proc
whether the runner itself is dying (`supervisor.core.dying`); a sentinel that died
alone (someone killed it) is started again here and never fails the runner.

A sentinel is a fork of the runner that arms its PDEATHSIG, checks that its thread
is still there, closes every fd (no pipe of the runner stays open in it) and execs
``sleep``: its memory is tiny, so its own exit costs microseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

from supervisor.ipc.shared import SENTINELS, SharedState

PR_SET_PDEATHSIG = 1
#: A sentinel that dies sooner than this after its start is restarted only after it.
_RESPAWN_PAUSE = 1.0
_SLEEP_SECONDS = str(2**31 - 1)


def _sleep_binary() -> str | None:
    for path in ("/usr/bin/sleep", "/bin/sleep"):
        if os.access(path, os.X_OK):
            return path
    return None


def start_sentinels(shared: SharedState) -> bool:
    """Start the sentinel threads (Linux only); False where there are none."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return False
    try:
        # Resolved here, not in the fork child: dlopen there could wait on a lock
        # another thread held at the fork.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    sleep = _sleep_binary()
    runner = os.getpid()
    for slot in range(SENTINELS):
        threading.Thread(
            target=_keep,
            args=(shared, slot, prctl, sleep, runner),
            name=f"runner-sentinel-{slot}",
            daemon=True,
        ).start()
    return True


def _keep(
    shared: SharedState, slot: int, prctl: Callable[..., int], sleep: str | None, runner: int
) -> None:
    """Keep one sentinel alive for as long as this thread (the runner) lives."""
    while True:
        started = time.monotonic()
        try:
            pid = _spawn(prctl, sleep, runner)
        except OSError:  # EAGAIN: out of processes; the exit watch still works
            time.sleep(_RESPAWN_PAUSE)
            continue
        shared.set_sentinel(slot, pid)
        _wait(pid)
        # It died while we live: someone killed it. Start another.
        left = _RESPAWN_PAUSE - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)


def _spawn(prctl: Callable[..., int], sleep: str | None, runner: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: no Python object of the runner may be touched here
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != runner:  # our thread died before the arming: so do we
            os._exit(0)
        os.closerange(0, 1 << 20)  # close_range(2): no pipe end of the runner survives
        if sleep is not None:
            os.execv(sleep, [sleep, _SLEEP_SECONDS])
        while True:
            signal.pause()
    finally:
        os._exit(0)


def _wait(pid: int) -> None:
    """Until the sentinel exits; then reap it (an engine's ``waitpid(-1)`` may have)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            poller.poll()
        finally:
            os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
