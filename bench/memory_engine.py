"""An echo engine that holds ``gib`` GiB of touched CPU memory from its load on.

Loaded in the runner as ``bench.memory_engine:HoldMemory`` (bench and tests): what a
real inference runner's weights cost the kernel when it dies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine


class HoldMemory(EchoEngine):
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.gib = float(options.get("gib", 0.0))
        super().__init__({k: v for k, v in options.items() if k != "gib"})
        self.held = b""

    def load(self, ctx: EngineContext) -> None:
        # Filled, not just reserved: every page is resident, as weights are.
        ctx.extend_deadline(60.0)
        self.held = b"\x01" * int(self.gib * 2**30)
        super().load(ctx)
