"""runner-supervisor: keeps ML inference worker processes honest.

The public API. Heavy modules (anyio, psutil, loguru) load on first use, so a
runner process that only needs the protocol starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.errors import DuplicateTaskError, RunnerFailedError

if TYPE_CHECKING:
    from supervisor.liveness import ResourceSample
    from supervisor.runner_supervisor import RunnerSupervisor

_LAZY = {
    "RunnerSupervisor": "supervisor.runner_supervisor",
    "ResourceSample": "supervisor.liveness",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DuplicateTaskError",
    "ResourceSample",
    "RunnerFailedError",
    "RunnerSpec",
    "RunnerSupervisor",
    "SupervisorConfig",
]
