"""Engines a runner can drive, by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from runners.engines.base import Engine, EngineContext, TaskError
from runners.engines.echo import EchoEngine

EngineFactory = Callable[[Mapping[str, Any]], Engine]

#: Built-in engines; the values are "module:attr" so heavy ones import lazily.
BUILTIN_ENGINES: dict[str, str] = {
    "echo": "runners.engines.echo:EchoEngine",
    "minilm": "runners.engines.minilm:MiniLMEngine",
    "torchdist": "runners.engines.torchdist:TorchDistEngine",
}


def resolve_engine(name: str) -> EngineFactory:
    """An engine factory from a built-in name or a ``"module:attr"`` path."""
    target = BUILTIN_ENGINES.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown engine {name!r}: use one of {sorted(BUILTIN_ENGINES)} or 'module:Class'"
        )
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"engine {name!r}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def engine_supports_resume(name: str) -> bool:
    """Whether engine ``name`` declares ``supports_resume``, read off its factory
    without making an engine (the host asks before it resumes a task there). False
    when the factory cannot be resolved: the runner reports that itself."""
    try:
        factory = resolve_engine(name)
    except Exception:  # noqa: BLE001 - a bad engine fails in its runner, not here
        return False
    return getattr(factory, "supports_resume", False) is True


def create_engine(name: str, options: Mapping[str, Any]) -> Engine:
    engine = resolve_engine(name)(options)
    if not isinstance(engine, Engine):
        raise TypeError(f"engine {name!r} did not produce an Engine, got {type(engine)!r}")
    return engine


__all__ = [
    "BUILTIN_ENGINES",
    "EchoEngine",
    "Engine",
    "engine_supports_resume",
    "EngineContext",
    "TaskError",
    "create_engine",
    "resolve_engine",
]
