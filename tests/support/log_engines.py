"""Engines that write GPU error lines; load them as ``tests.support.log_engines:Name``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runners.engines.base import EngineContext, TaskError
from runners.engines.echo import EchoEngine
from supervisor.protocol import Generate

ILLEGAL_ACCESS = "RuntimeError: CUDA error: an illegal memory access was encountered"
OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
    "total capacity of 79.15 GiB of which 1.06 GiB is free."
)


class _Chatty(EchoEngine):
    """Says who it is on load, so that log files show each incarnation's pid."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__({k: v for k, v in options.items() if k == "token_delay"})

    def load(self, ctx: EngineContext) -> None:
        print(f"engine loaded in pid {os.getpid()}", flush=True)


class ChattyEngine(_Chatty):
    """Echo that says its pid on load."""


class FatalEngine(_Chatty):
    """On Generate: the CUDA illegal-access error on stderr, then a wedge.

    The main loop sleeps for good without ticking progress while the heartbeat thread
    beats on: only the prefill deadline (60 s by default) would catch it, or the line.
    """

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        yield "about to fail "
        print(ILLEGAL_ACCESS, file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


class OomOnceEngine(_Chatty):
    """The first Generate runs out of GPU memory (the task fails), later ones work."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self._failed_once = False

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        if not self._failed_once:
            self._failed_once = True
            print(OOM, file=sys.stderr, flush=True)
            raise TaskError("CUDA out of memory (request too large); try fewer tokens")
        yield from super().generate(task, ctx)


#: 27 ``a`` and a ``!``: Python's re takes seconds to fail ``(a+)+$`` on it.
BACKTRACK_BAIT = "a" * 27 + "!"


class BacktrackBaitEngine(_Chatty):
    """On load: many lines that make a backtracking regex engine take seconds each."""

    def load(self, ctx: EngineContext) -> None:
        super().load(ctx)
        for _ in range(200):
            print(BACKTRACK_BAIT, flush=True)
        print("bait done", flush=True)
