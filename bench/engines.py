"""Engines for the benchmarks, loaded in the runner as ``bench.engines:Name``."""

from __future__ import annotations

import time
from collections.abc import Iterator

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.protocol import Generate


class StampEngine(EchoEngine):
    """Each token's text is the ``time.monotonic()`` at which the engine produced it.

    CLOCK_MONOTONIC is system-wide on Linux, so the host can subtract it from its own
    receive time: that is the per-event latency, runner emit -> host receive.
    """

    name = "stamp"

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        delay = self.token_delay
        sleep = time.sleep
        monotonic = time.monotonic
        for _ in range(task.max_tokens):
            if delay:
                sleep(delay)
            yield repr(monotonic())
