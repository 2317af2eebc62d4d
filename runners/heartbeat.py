"""The runner's heartbeat thread and parent-death guards."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading

from supervisor.ipc.shared import SharedState

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the process that started us dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
        self._stop = threading.Event()
        self._parent = os.getppid()

    def run(self) -> None:
        shared = self._shared
        while not self._stop.wait(self._interval):
            shared.beat()
            if os.getppid() != self._parent:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os._exit(70)

    def stop(self) -> None:
        self._stop.set()
