"""Misbehaving engines for tests, loaded in the runner as ``tests.support.engines:Name``."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.protocol import BaseTask, Generate


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownTask(BaseTask):
    """A task kind no engine supports."""


class _Base(EchoEngine):
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.extra = dict(options)
        super().__init__({k: v for k, v in options.items() if k in ("token_delay",)})


class ExitEngine(_Base):
    """Exits with ``code`` after ``after`` tokens of a Generate."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        for i, token in enumerate(super().generate(task, ctx)):
            if i >= int(self.extra.get("after", 1)):
                sys.stdout.flush()
                os._exit(int(self.extra.get("code", 1)))
            yield token


class SleepyLoadEngine(_Base):
    """Load blocks in time.sleep (GIL released) without ticking progress."""

    def load(self, ctx: EngineContext) -> None:
        time.sleep(float(self.extra.get("load_sleep", 30)))


class GilBusyLoadEngine(_Base):
    """Load holds the GIL in a pure-C loop that burns CPU (no heartbeat possible)."""

    def load(self, ctx: EngineContext) -> None:
        seconds = float(self.extra.get("gil_seconds", 4))
        n = 2_000_000
        t0 = time.perf_counter()
        sum(range(n))  # calibrate: sum over a range never releases the GIL
        per = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        sum(range(int(seconds / per)))
        print(f"held the GIL busy for {time.perf_counter() - t0:.2f}s", flush=True)


class GilSleepLoadEngine(_Base):
    """Load holds the GIL while sleeping in C: indistinguishable from a deadlock."""

    def load(self, ctx: EngineContext) -> None:
        ctypes.PyDLL(None).sleep(int(self.extra.get("gil_seconds", 30)))


class GrandchildEngine(_Base):
    """Load starts a grandchild process (like a tokenizer pool) and records its pid."""

    def load(self, ctx: EngineContext) -> None:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(str(self.extra["pid_file"]), "w") as f:
            f.write(str(child.pid))


class CrashOnLoadEngine(_Base):
    def load(self, ctx: EngineContext) -> None:
        raise ValueError("weights are corrupt")


class NoisyEngine(_Base):
    """Writes to stdout/stderr, then dies with a MemoryError on generate."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        print("allocating the KV cache", flush=True)
        yield "a "
        raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class ProbeEngine(_Base):
    """Echo whose probe misbehaves after ``good`` healthy probes.

    ``mode``: "hang" (never answers), "raise" (answers with an error), "device"
    (the device reports itself broken).
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.calls = 0

    def probe(self, ctx: EngineContext) -> None:
        self.calls += 1
        if self.calls <= int(self.extra.get("good", 0)):
            return
        mode = self.extra.get("mode", "hang")
        if mode == "hang":
            while True:
                time.sleep(3600)
        if mode == "raise":
            raise RuntimeError("canary output mismatch")

    def device_health(self) -> str | None:
        if self.extra.get("mode") == "device" and self.calls > int(self.extra.get("good", 0)):
            return "CUDA error: an illegal memory access was encountered"
        return None


class StubbornEngine(_Base):
    """Ignores SIGTERM, then wedges its main loop in load: only SIGKILL ends it."""

    def load(self, ctx: EngineContext) -> None:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)
