"""The built-in echo engine: deterministic tokens, configurable delays."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runners.engines.base import Engine, EngineContext
from supervisor.protocol import Generate

_OPTIONS = ("token_delay", "prepare_time", "load_time", "warmup_time")


def _sleep_ticking(seconds: float, ctx: EngineContext) -> None:
    """Sleep in short steps that tick progress, like a loader reading shards."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
        ctx.tick()
        if seconds > 0.2:
            ctx.report_progress(min(1.0, 1 - left / seconds))


def echo_tokens(prompt: str, max_tokens: int) -> Iterator[str]:
    """The echo engine's output: the prompt's words, cycled, one per token (lazily:
    ``max_tokens`` may be huge)."""
    words = [f"{w} " for w in prompt.split()] or ["<empty> "]
    n = len(words)
    for i in range(max_tokens):
        yield words[i % n]


class EchoEngine(Engine):
    """Echoes the prompt's words back, one word per token."""

    name = "echo"
    supports_resume = True  # deterministic: token i depends on the prompt and i only

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unknown echo option(s) {unknown}; known: {list(_OPTIONS)}")
        super().__init__(options)
        self.token_delay = self._seconds("token_delay")
        self.prepare_time = self._seconds("prepare_time")
        self.load_time = self._seconds("load_time")
        #: how many times each hook ran in this process (tests read them via the pid)
        self.prepares = 0
        self.warmup_time = self._seconds("warmup_time")

    def _seconds(self, key: str) -> float:
        value = float(self.options.get(key, 0.0))
        if not value >= 0:
            raise ValueError(f"echo option {key} must be >= 0 seconds, got {value!r}")
        return value

    def prepare(self, ctx: EngineContext) -> None:
        self.prepares += 1
        _sleep_ticking(self.prepare_time, ctx)

    def load(self, ctx: EngineContext) -> None:
        _sleep_ticking(self.load_time, ctx)

    def warmup(self, ctx: EngineContext) -> None:
        _sleep_ticking(self.warmup_time, ctx)

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        delay = self.token_delay
        tokens = echo_tokens(task.prompt, task.max_tokens)
        for token in itertools.islice(tokens, len(task.resume_from), None):
            if delay:
                time.sleep(delay)
            yield token

    def probe(self, ctx: EngineContext) -> None:
        # Shallow: the main loop answered, and the token path still works.
        if list(echo_tokens("probe", 1)) != ["probe "]:
            raise RuntimeError("echo engine produced a wrong probe token")
