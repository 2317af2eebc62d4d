"""MiniLM engines and devices that misbehave, loaded in the runner by "module:attr"."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.minilm import MiniLMEngine

#: What a poisoned CUDA context says (the text torch gives for an async kernel fault).
CUDA_FAULT = "CUDA error: an illegal memory access was encountered"


def broken_cuda() -> None:
    """An injected device check: the device died, as `torch.cuda.synchronize` reports it."""
    raise RuntimeError(CUDA_FAULT)


class HangingProbeEngine(MiniLMEngine):
    """Answers ``hang_after`` probes, then hangs in the next one (a wedged device queue)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        self.hang_after = int(opts.pop("hang_after", 1))
        self.probes = 0
        super().__init__(opts)

    def probe(self, ctx: EngineContext) -> None:
        self.probes += 1
        if self.probes > self.hang_after:
            print(f"probe {self.probes}: hanging", flush=True)
            time.sleep(3600)  # releases the GIL: the heartbeat goes on beating
        super().probe(ctx)
