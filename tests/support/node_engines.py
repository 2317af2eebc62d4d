"""Test engines for the restart and node tests, loaded as ``tests.support.node_engines:Name``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.protocol import Generate


class SlowPrefillEngine(EchoEngine):
    """A Generate whose prompt starts with "slow" sleeps ``prefill_sleep`` s before its
    first token without reading the task pipe, like a long prefill: tasks sent
    meanwhile stay unacknowledged."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.prefill_sleep = float(options.get("prefill_sleep", 30))
        super().__init__({k: v for k, v in options.items() if k != "prefill_sleep"})

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        if task.prompt.startswith("slow"):
            time.sleep(self.prefill_sleep)
        yield from super().generate(task, ctx)


class PidEngine(EchoEngine):
    """Echo whose Generate streams the runner's pid as its first token, then echoes: tells
    which process served a task."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        yield f"{os.getpid()} "
        yield from super().generate(task, ctx)
