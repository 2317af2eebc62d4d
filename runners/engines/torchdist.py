"""A real tensor-parallel engine on torch.distributed: one ``all_reduce`` per token.

The model is a tiny MLP language model with deterministic seeded weights, split
the way Megatron splits an MLP: rank k holds a slice of the first layer's columns
and the matching rows of the second, computes its partial output, and one
``all_reduce`` (sum) makes the full one. The next token is the argmax of the
reduced output against the (replicated) embeddings, so no rank can produce a
token without every other rank: a missing rank blocks the collective, it cannot
produce output. The tokens are the same for every world size.

It reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``): start it with ``--world-size N`` (docs/ranks.md),
or under torchrun. gloo on CPU, nccl on the rank's GPU when CUDA is present.

torch is imported when the engine is made, not in `load`: a prespawned spare then
holds an imported torch, and adopting it skips the import (seconds) for every rank.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

from runners.engines.base import Engine, EngineContext, TaskError
from supervisor.protocol import Generate

_OPTIONS = ("seed", "hidden", "ffn", "token_delay", "threads", "timeout", "device")

#: The model's vocabulary: every token is one of these words.
_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are "
    "which this be or has had not but first one new their also after two its who "
    "they been more time have all other year into over only most some when would "
    "there up out can about three could these may then world many city people"
)
VOCAB: tuple[str, ...] = tuple(_WORDS.split())

#: Seconds init_process_group and each collective may wait for the other ranks.
#: Long on purpose: the supervisor's progress deadlines find a wedged collective
#: (seconds), torch's own timeout is the backstop.
DEFAULT_TIMEOUT = 600.0


class TorchDistEngine(Engine):
    """Greedy decoding of a seeded MLP split across ``WORLD_SIZE`` ranks."""

    name = "torchdist"
    #: The ranks agree on a cancel inside the step's collective: every rank stops at
    #: the same token. A rank that stopped alone would leave the others blocked in
    #: the next all_reduce.
    cancels_in_step = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unknown torchdist option(s) {unknown}; known: {list(_OPTIONS)}")
        super().__init__(options)
        import torch  # here, not in load(): see the module's docstring

        self._torch = torch
        self.seed = int(options.get("seed", 0))
        self.hidden = int(options.get("hidden", 64))
        self.ffn = int(options.get("ffn", 240))  # divides among 1-6 and 8 ranks
        self.token_delay = float(options.get("token_delay", 0.0))
        self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.ffn % self.world_size:
            raise ValueError(
                f"torchdist option ffn={self.ffn} must divide among {self.world_size} ranks"
            )
        torch.set_num_threads(int(options.get("threads", 1)))
        wanted = options.get("device")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world_size)))
        # nccl wants a GPU of its own per rank: with fewer, every rank stays on gloo.
        enough = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        cuda = enough if wanted is None else str(wanted).startswith("cuda")
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        self.backend = "nccl" if cuda else "gloo"
        self._dist: Any = None
        self._w1: Any = None
        self._w2: Any = None
        self._emb: Any = None

    # ------------------------------------------------------------------ load
    def load(self, ctx: EngineContext) -> None:
        torch = self._torch
        import torch.distributed as dist

        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # Waits for every rank: the deadline is the rendezvous's, not one step's.
        ctx.extend_deadline(self.timeout)
        dist.init_process_group(
            backend=self.backend,
            init_method="env://",
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=self.timeout),
        )
        self._dist = dist
        # The extension is a point in time, not one step: end it, or it would cover
        # every collective of the next `timeout` seconds.
        ctx.extend_deadline(0.0)
        # Every rank draws the full weights from one seed and keeps its slice: the
        # model is the same whatever the world size.
        gen = torch.Generator().manual_seed(self.seed)
        emb = torch.randn(len(VOCAB), self.hidden, generator=gen)
        w1 = torch.randn(self.hidden, self.ffn, generator=gen) / self.hidden**0.5
        w2 = torch.randn(self.ffn, self.hidden, generator=gen) / self.ffn**0.5
        part = self.ffn // self.world_size
        cols = slice(self.rank * part, (self.rank + 1) * part)
        self._emb = emb.to(self.device)
        self._w1 = w1[:, cols].contiguous().to(self.device)
        self._w2 = w2[cols, :].contiguous().to(self.device)
        self._check_peers(ctx)

    def _check_peers(self, ctx: EngineContext) -> None:
        """One collective: every rank holds the same model (a checksum summed)."""
        torch = self._torch
        total = torch.tensor([float(self._w1.sum() + self._w2.sum())], device=self.device)
        self._dist.all_reduce(total)
        ctx.tick()

    def warmup(self, ctx: EngineContext) -> None:
        for _ in self._decode("warmup", 2, ctx):
            pass

    # -------------------------------------------------------------- generate
    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        return self._decode(task.prompt, task.max_tokens, ctx)

    def _decode(self, prompt: str, max_tokens: int, ctx: EngineContext) -> Iterator[str]:
        if self._dist is None:
            raise TaskError("torchdist engine is not loaded")
        torch = self._torch
        words = prompt.split() or ["<empty>"]
        ids = [zlib.crc32(w.encode()) % len(VOCAB) for w in words]
        state = self._emb[ids].mean(dim=0)
        step = torch.empty(self.hidden + 1, device=self.device)
        for _ in range(max_tokens):
            if self.token_delay:
                time.sleep(self.token_delay)
            # This rank's share of the MLP, and its vote to stop, in one collective.
            step[: self.hidden] = torch.relu(state @ self._w1) @ self._w2
            step[self.hidden] = 1.0 if ctx.cancelled() else 0.0
            self._dist.all_reduce(step)
            if step[self.hidden].item() > 0:
                return  # some rank was cancelled: every rank stops here
            token = int(torch.argmax(self._emb @ step[: self.hidden]))
            state = 0.5 * state + 0.5 * self._emb[token]
            yield VOCAB[token] + " "

    def probe(self, ctx: EngineContext) -> None:
        # Local only: ranks are probed one at a time, a collective would wait forever.
        torch = self._torch
        if self._w1 is None:
            return
        out = torch.relu(self._emb[0] @ self._w1) @ self._w2
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("torchdist engine produced non-finite values")

    def close(self) -> None:
        dist, self._dist = self._dist, None
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["VOCAB", "TorchDistEngine"]
