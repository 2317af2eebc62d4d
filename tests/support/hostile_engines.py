"""Engines that write what the parent cannot decode to the event pipe, loaded in the
runner as ``tests.support.hostile_engines:Name``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine
from supervisor.ipc.wire import HEADER
from supervisor.protocol import Generate


class _ParentCannotLoad:
    """Pickles in the runner; loading it calls ``int("not a number")``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("not a number",))


class UndecodableEngine(EchoEngine):
    """After ``after`` tokens of a Generate, sends an undecodable frame: ``mode``
    "pickle" (a well-framed pickle that fails to load) or "length" (raw bytes with a
    negative frame length, as a torn or corrupt write would leave), then goes on."""

    def __init__(self, options: Any) -> None:
        self.mode = str(options.get("mode", "pickle"))
        self.after = int(options.get("after", 2))
        super().__init__({k: v for k, v in options.items() if k == "token_delay"})

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        for i, token in enumerate(super().generate(task, ctx)):
            if i == self.after:
                if self.mode == "pickle":
                    ctx.emit(_ParentCannotLoad())  # type: ignore[arg-type]
                else:
                    fd = ctx._runner._events_fd  # type: ignore[attr-defined]
                    os.write(fd, HEADER.pack(-5) + b"torn")
            yield token
