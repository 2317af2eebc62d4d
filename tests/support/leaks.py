"""Leak checks shared by tests and e2e: no processes, threads or fds left behind."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

#: Long-lived helpers multiprocessing starts once per host process, by design.
_INFRA_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker")


def _is_infra(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return True
    return any(marker in cmdline for marker in _INFRA_MARKERS)


def stray_processes(exclude: set[int] | None = None) -> list[psutil.Process]:
    """Descendants of this process that are not multiprocessing infrastructure."""
    exclude = exclude or set()
    out = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in exclude or _is_infra(child):
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue  # reaped by whoever owns it; not running
        except psutil.Error:
            continue
        out.append(child)
    return out


def fd_targets() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return out


@dataclass
class Snapshot:
    children: set[int]
    threads: set[int]
    fds: dict[int, str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            children={p.pid for p in psutil.Process().children(recursive=True)},
            threads={t.ident for t in threading.enumerate() if t.ident is not None},
            fds=fd_targets(),
        )

    def leaks(self) -> list[str]:
        problems = []
        strays = stray_processes(self.children)
        if strays:
            problems.append(f"processes left: {[(p.pid, p.name()) for p in strays]}")
        threads = [
            t.name
            for t in threading.enumerate()
            if t.ident not in self.threads and t.is_alive() and not t.daemon
        ]
        if threads:
            problems.append(f"threads left: {threads}")
        now = fd_targets()
        new = {fd: target for fd, target in now.items() if fd not in self.fds}
        # multiprocessing keeps one shared-memory arena and the resource tracker's pipe
        # open for the life of the process; they are created once, not per supervisor.
        new = {
            fd: t for fd, t in new.items() if not any(m in t for m in ("/dev/shm", "pym-", "/tmp"))
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
