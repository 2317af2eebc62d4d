"""Engines for the benchmarks, loaded in the runner as ``bench.engines:Name``, and the
baselines' child loops: both must import as fast as a runner does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.protocol import ChunkGenerated, Generate


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


def paced_stamps(count: int, period: float) -> Iterator[str]:
    """``count`` monotonic stamps, one per ``period`` seconds.

    Paced against a schedule, so the time it takes to send a token does not slow the
    rate down; but a token that comes late (the process waited for a CPU) moves the
    schedule instead of making the next ones early: like a model's decode loop, a
    stalled stream does not burst to catch up.
    """
    sleep = time.sleep
    monotonic = time.monotonic
    due = monotonic()
    for _ in range(count):
        due += period
        left = due - monotonic()
        if left > 0:
            sleep(left)
        elif left < -period:
            due -= left
        yield repr(monotonic())


class PacedStampEngine(EchoEngine):
    """`StampEngine` at a steady rate: one stamped token per ``token_delay`` seconds."""

    name = "paced-stamp"

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        return paced_stamps(task.max_tokens, self.token_delay)


def pipe_streamer(events: Connection, go: Any, task_id: str, count: int, period: float) -> None:
    """The baseline's child: the same stamped `ChunkGenerated` events at the same pace,
    sent on a bare `multiprocessing.Pipe` once ``go`` (an Event) is set; says ``None``
    first, when it is up. Ends when done or when the host hangs up."""
    send = events.send
    try:
        send(None)
        go.wait()
        for index, stamp in enumerate(paced_stamps(count, period)):
            send(ChunkGenerated(task_id, index, stamp))
    except OSError:  # BrokenPipeError: the host closed its end
        pass
    finally:
        events.close()
