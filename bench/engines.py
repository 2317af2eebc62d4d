"""Engines for the benchmarks, loaded in the runner as ``bench.engines:Name``, and the
baselines' child loops: both must import as fast as a runner does."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
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


def _sleep_forever() -> None:
    time.sleep(3600)


class ForkChildEngine(EchoEngine):
    """Load starts a fork-started multiprocessing child, as a tokenizer pool does: it
    inherits every fd of the runner (its pipes, multiprocessing's sentinel), so
    neither pipe EOF nor the sentinel tells the host that the runner died. With
    ``daemon``, also ``sh -c 'setsid sleep 3600 &'``, which leaves the process group.
    ``pid_file`` receives the children's pids, one per line."""

    name = "fork-child"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.daemon = bool(options.get("daemon", False))
        self.pid_file = options.get("pid_file")
        super().__init__({})

    def load(self, ctx: EngineContext) -> None:
        child = multiprocessing.get_context("fork").Process(target=_sleep_forever)
        child.start()
        pids = [child.pid]
        if self.daemon:
            out = subprocess.run(
                ["sh", "-c", "setsid sleep 3600 >/dev/null 2>&1 & echo $!"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            pids.append(int(out.stdout))
        if self.pid_file:
            with open(self.pid_file, "w") as f:
                f.write("".join(f"{p}\n" for p in pids))
        self._child = child


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
