"""The dry run's stand-in for `bench.gpu.engine.CudaEngine`: the same prompts, no GPU.

``bench.gpu.standin:StandInEngine`` answers the fault prompts the way CUDA would end
them, in words the fatal patterns know (``device-side assert triggered``, ``an illegal
memory access was encountered``), turns ``oom`` into a failed task and ``wedge`` into
a busy loop, so ``python -m bench.gpu --dry-run`` runs every check's plumbing on a
CPU. Its figures say nothing about GPUs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from runners.engines.base import Engine, EngineContext, TaskError
from supervisor.protocol import Generate


def _crash(message: str) -> None:
    print(f"engine error: RuntimeError: {message}", file=sys.stderr, flush=True)
    raise RuntimeError(message)


class StandInEngine(Engine):
    name = "cuda-stand-in"

    def prepare(self, ctx: EngineContext) -> None:
        """Nothing to warm without a GPU."""

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        prompt = task.prompt.strip()
        if prompt == "device-assert":
            _crash("CUDA error: device-side assert triggered")
        elif prompt == "illegal-address":
            _crash("cudaErrorIllegalAddress: an illegal memory access was encountered")
        elif prompt == "oom":
            raise TaskError("CUDA out of memory (stand-in)")
        elif prompt == "wedge":
            ctx.extend_deadline(3600.0)
            yield "wedging "
            while True:
                pass
        elif prompt == "pid":
            yield str(os.getpid())
        else:
            for i in range(task.max_tokens):
                yield f"{i} "
                ctx.tick()
