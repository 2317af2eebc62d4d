"""Engines for task recovery tests; load them as ``tests.support.recovery_engines:Name``."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.protocol import Generate
from tests.support.log_engines import ILLEGAL_ACCESS


class FatalOnPromptEngine(EchoEngine):
    """Echo, except that a prompt starting with ``fatal`` writes the CUDA illegal-access
    line after one token and wedges (the log detector ends the runner)."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        if not task.prompt.startswith("fatal"):
            yield from super().generate(task, ctx)
            return
        yield "about to fail "
        print(ILLEGAL_ACCESS, file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


class PoisonEngine(EchoEngine):
    """Echo, except that a prompt starting with ``poison`` kills the runner (SIGKILL of
    itself) two tokens into the stream, on every runner that tries it (when resumed:
    two tokens after where it resumed)."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        for index, token in enumerate(super().generate(task, ctx)):
            if task.prompt.startswith("poison") and index == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            yield token


class CoinEngine(EchoEngine):
    """Each runner process draws its own tokens (sampling with a fresh seed): a replay
    on another runner regenerates different text. No resume support."""

    supports_resume = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self._salt = os.urandom(4).hex()

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        for index, _ in enumerate(super().generate(task, ctx)):
            yield f"{self._salt}-{index} "


class ReplayOnlyEngine(EchoEngine):
    """The echo engine's tokens without resume support: a resumed task is replayed."""

    supports_resume = False
