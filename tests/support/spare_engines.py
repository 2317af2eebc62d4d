"""An echo engine that notes each hook it runs (``prepare``, ``load``, ``warmup``) with
its pid and the system-wide monotonic time, one line per call, in the file named by
option ``journal``: tests see which process ran what, and when."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from runners.engines.base import EngineContext, TaskError
from runners.engines.echo import EchoEngine


class JournalingEngine(EchoEngine):
    name = "journaling-echo"

    def __init__(self, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        self.journal = str(opts.pop("journal"))
        #: load fails (a task error) while this file exists
        self.fail_load_if = opts.pop("fail_load_if", None)
        super().__init__(opts)

    def _note(self, hook: str) -> None:
        with open(self.journal, "a") as f:
            f.write(f"{hook} {os.getpid()} {time.monotonic()}\n")

    def prepare(self, ctx: EngineContext) -> None:
        super().prepare(ctx)
        self._note("prepare")

    def load(self, ctx: EngineContext) -> None:
        super().load(ctx)
        if self.fail_load_if is not None and os.path.exists(self.fail_load_if):
            self._note("load-failed")
            raise TaskError("no weights today")
        self._note("load")

    def warmup(self, ctx: EngineContext) -> None:
        super().warmup(ctx)
        self._note("warmup")


def read_journal(path: str) -> list[tuple[str, int, float]]:
    """The journal's lines: (hook, pid, when)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        hook, pid, when = line.split()
        out.append((hook, int(pid), float(when)))
    return out
