"""Engines whose end the supervisor must explain, loaded in the runner as
``tests.support.evidence_engines:Name``."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.protocol import Generate


class _Base(EchoEngine):
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.extra = dict(options)
        super().__init__({k: v for k, v in options.items() if k in ("token_delay",)})


class HogEngine(_Base):
    """A Generate allocates (and touches) memory 8 MiB at a time, up to ``mib`` MiB,
    ticking progress: in a small memory cgroup the kernel's OOM killer ends it."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        hoard: list[bytes] = []
        yield "hoarding "
        for _ in range(int(self.extra.get("mib", 4096)) // 8):
            hoard.append(b"\x01" * (8 << 20))
            ctx.tick()
        yield f"held {len(hoard) * 8} MiB"
        time.sleep(3600)


class ChannelClosingEngine(_Base):
    """A Generate closes the runner's event pipe (as a library closing "every fd
    above 2" would), then keeps working without a word."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        yield "closing "
        os.close(ctx._runner._events_fd)  # type: ignore[attr-defined]
        while True:
            time.sleep(0.05)
            ctx.tick()


class NativeWedgeEngine(_Base):
    """A Generate blocks in a C call (libc ``pause``): the Python stack shows only the
    line that called it; the native stack shows where it is stuck."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        yield "wedging "
        pause = ctypes.CDLL(None).pause
        while True:  # a signal (faulthandler's SIGUSR1) ends one pause, not the wedge
            pause()
