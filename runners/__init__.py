"""The runner (child) side: bootstrap, the runner loop, engines and chaos triggers."""

from __future__ import annotations

from runners.chaos import Chaos, chaos_enabled
from runners.engines import EchoEngine, Engine, EngineContext, TaskError, create_engine
from runners.runner import Runner

__all__ = [
    "Chaos",
    "EchoEngine",
    "Engine",
    "EngineContext",
    "Runner",
    "TaskError",
    "chaos_enabled",
    "create_engine",
]
