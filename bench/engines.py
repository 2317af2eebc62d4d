"""Engines for the benchmarks, loaded in the runner as ``bench.engines:Name``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

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


class ChattyEngine(EchoEngine):
    """Echo that also logs: one stderr line every ``print_every`` tokens, like an engine
    reporting its throughput, so that log files and fatal patterns have lines to see."""

    name = "chatty"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.print_every = int(options.get("print_every", 10))
        super().__init__({k: v for k, v in options.items() if k != "print_every"})

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        every = self.print_every
        for i, token in enumerate(super().generate(task, ctx)):
            if i % every == 0:
                print(f"step {i}: 1 sequence, {i} tokens, kv cache 12.5% used", file=sys.stderr)
            yield token
