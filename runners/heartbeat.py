"""The runner's heartbeat thread and parent-death guards."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

from supervisor.ipc.shared import SharedState

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, arg: int) -> bool:
    """``prctl(option, arg)`` on Linux; False where it failed or does not exist."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, arg, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send us ``signum`` when the thread that started us dies."""
    prctl(PR_SET_PDEATHSIG, signum)


class Heartbeat(threading.Thread):
    """Bumps the shared heartbeat every ``interval`` seconds.

    It proves the process is scheduled and its interpreter can still switch
    threads; it says nothing about the main loop (that is the progress tick).
    It also watches for its parent's death (pipe EOF and PDEATHSIG cover most
    cases; this covers platforms without PDEATHSIG) and then takes the whole
    process group down, grandchildren included.
    """

    def __init__(self, shared: SharedState, interval: float) -> None:
        super().__init__(name="runner-heartbeat", daemon=True)
        self._shared = shared
        self._interval = interval
        # Not ``_stop``: that would shadow the Thread method that threading's after-fork
        # hook calls in a forked child.
        self._halted = False
        self._parent = os.getppid()

    def run(self) -> None:
        # A plain sleep, not ``Event.wait(timeout)``: each beat wakes a thread in every
        # runner of a node, and a condition variable's wait costs about twice a sleep's
        # (lock objects made and dropped per wait). `stop` takes effect at the next beat.
        shared, interval, parent = self._shared, self._interval, self._parent
        while True:
            time.sleep(interval)
            if self._halted:
                return
            shared.beat()
            if os.getppid() != parent:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os._exit(70)

    def stop(self) -> None:
        """No more beats (from the next one on)."""
        self._halted = True
