"""A CUDA engine for the GPU checks (torch; cupy for the illegal address).

``bench.gpu.engine:CudaEngine``. torch is imported with the module, as a real engine
does, so a prespawned ``imported`` spare has it imported and nothing more.

- ``prepare``: the CUDA context, cuBLAS and the caching allocator warmed, no weights
  (what a ``prepared`` spare has done, where the restart layer offers that stage);
- ``load``: ``weights_mb`` MiB of "weights" on the device; ``warmup``: one matmul;
- ``generate``: one small matmul per token, unless the prompt names a fault:
  ``device-assert`` (an out-of-range index on the GPU), ``illegal-address`` (a
  kernel writing through a bad pointer), ``oom`` (a CUDA OOM, which a real engine
  turns into a failed task: `TaskError`), ``wedge`` (matmuls launched without end,
  until the host thread blocks in the CUDA launch queue), ``pid`` (the runner's pid
  as the one token).

Errors are printed the way engines log them (to stderr, one line), then raised: the
supervisor's fatal-line matcher sees what an operator's log would show.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from runners.engines.base import Engine, EngineContext, TaskError
from supervisor.protocol import Generate

_OPTIONS = ("weights_mb",)


def _log(exc: BaseException) -> None:
    print(f"engine error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


class CudaEngine(Engine):
    name = "cuda-bench"

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {list(_OPTIONS)}")
        super().__init__(options)
        self.weights_mb = int(options.get("weights_mb", 2048))
        self.weights: Any = None
        self.prepared = False

    def prepare(self, ctx: EngineContext) -> None:
        """CUDA context, cuBLAS handle and allocator warmed; no weights."""
        a = torch.ones(256, 256, device="cuda")
        (a @ a).sum().item()
        self.prepared = True

    def load(self, ctx: EngineContext) -> None:
        if not self.prepared:
            self.prepare(ctx)
        n = self.weights_mb * 2**20 // 4
        self.weights = torch.ones(n, dtype=torch.float32, device="cuda")
        torch.cuda.synchronize()

    def warmup(self, ctx: EngineContext) -> None:
        a = torch.ones(1024, 1024, device="cuda")
        (a @ a).sum().item()

    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        prompt = task.prompt.strip()
        if prompt == "device-assert":
            yield self._device_assert()
        elif prompt == "illegal-address":
            yield self._illegal_address()
        elif prompt == "oom":
            yield self._oom()
        elif prompt == "wedge":
            ctx.extend_deadline(3600.0)  # the check takes its stack dump, then kills it
            yield from self._wedge(ctx)
        elif prompt == "pid":
            yield str(os.getpid())
        else:
            a = torch.ones(64, 64, device="cuda")
            for i in range(task.max_tokens):
                yield f"{float((a @ a)[0, 0].item()) + i:g} "
                ctx.tick()

    def _device_assert(self) -> str:
        try:
            x = torch.zeros(4, device="cuda")
            index = torch.tensor([1 << 20], device="cuda")
            return str(x[index].sum().item())
        except RuntimeError as exc:
            _log(exc)
            raise

    def _illegal_address(self) -> str:
        try:
            import cupy

            kernel = cupy.RawKernel(
                r"""extern "C" __global__ void poke(int* p) {
                    volatile int* bad = (volatile int*)0x10;
                    bad[threadIdx.x] = p[threadIdx.x];
                }""",
                "poke",
            )
            kernel((1,), (32,), (cupy.zeros(32, dtype=cupy.int32),))
            cupy.cuda.runtime.deviceSynchronize()
            return "no error"
        except Exception as exc:
            _log(exc)
            raise

    def _oom(self) -> str:
        try:
            free, _total = torch.cuda.mem_get_info()
            torch.empty(free * 2, dtype=torch.uint8, device="cuda")
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise TaskError(f"CUDA out of memory: {str(exc).splitlines()[0]}") from None
        return "no OOM"

    def _wedge(self, ctx: EngineContext) -> Iterator[str]:
        a = torch.ones(8192, 8192, device="cuda")
        yield "wedging "
        while True:  # never synchronises: the launch queue fills and the launch blocks
            a = a @ a

    def probe(self, ctx: EngineContext) -> None:
        a = torch.ones(8, 8, device="cuda")
        if float((a @ a)[0, 0].item()) != 8.0:
            raise RuntimeError("matmul gave a wrong answer")
