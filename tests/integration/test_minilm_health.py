"""MiniLM engine pieces that need no torch: options, device health, input checks.

These run in the core suite (no ``minilm`` extra): the engine imports torch only
in ``load``.
"""

from __future__ import annotations

import struct

import pytest

from runners.engines import TaskError, create_engine
from runners.engines.minilm import DeviceHealth, MiniLMEngine, decode_vector
from supervisor.protocol import Embed, Probe
from tests.support.engines_minilm import CUDA_FAULT


def test_device_health_failure_is_sticky_and_stops_calling_the_device() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError(CUDA_FAULT)

    health = DeviceHealth(flaky)
    assert health() is None
    assert health() == f"RuntimeError: {CUDA_FAULT}"
    for _ in range(5):
        assert health() == f"RuntimeError: {CUDA_FAULT}"
    assert len(calls) == 2  # poisoned context: never touched again
    assert health.failure == f"RuntimeError: {CUDA_FAULT}"


def test_cpu_device_health_costs_nothing() -> None:
    engine = MiniLMEngine({})
    assert engine.device_health() is None
    assert engine.health.calls == 0


def test_injected_failing_device_reports_its_cause_once() -> None:
    engine = create_engine("minilm", {"device_check": "tests.support.engines_minilm:broken_cuda"})
    assert isinstance(engine, MiniLMEngine)
    assert engine.device_health() == f"RuntimeError: {CUDA_FAULT}"
    assert engine.device_health() == f"RuntimeError: {CUDA_FAULT}"
    assert engine.health.calls == 1


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 0},
        {"batch_size": "8"},
        {"max_texts": True},
        {"num_threads": -1},
        {"device": "tpu"},
        {"probe_tolerance": float("nan")},
        {"device_check": "no_colon"},
        {"device_check": "tests.support.engines_minilm:nothing_here"},
        {"bogus": 1},
    ],
)
def test_bad_options_are_refused_at_creation(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="minilm option"):
        MiniLMEngine(options)


def test_task_kinds_and_generate_refused() -> None:
    engine = MiniLMEngine({})
    assert engine.task_kinds == (Embed,)
    with pytest.raises(TaskError, match="embeddings only"):
        engine.generate(None, None)  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="does not support Probe"):
        engine.run_task(Probe(task_id="p"), None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ((), "empty"),
        (("ok", 3), r"texts\[1\] must be a str"),
        ("a string", "must be a tuple"),
        (tuple("x" * 5), "at most 4"),
        (("y" * 101,), "limit is 100"),
    ],
)
def test_bad_embed_input_is_a_task_error(texts: object, match: str) -> None:
    engine = MiniLMEngine({"max_texts": 4, "max_text_chars": 100})
    with pytest.raises(TaskError, match=match):
        engine.run_task(Embed(task_id="e", texts=texts), None)  # type: ignore[arg-type]


def test_decode_vector_round_trip() -> None:
    raw = struct.pack("<3f", 1.0, -0.5, 0.25)
    assert decode_vector(raw) == (1.0, -0.5, 0.25)
    with pytest.raises(ValueError, match="float32"):
        decode_vector(b"abc")
