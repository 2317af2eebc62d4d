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
    from supervisor.health import serve_health
    from supervisor.liveness import ResourceSample
    from supervisor.metrics import SupervisorMetrics
    from supervisor.node import RunnerNode, UnknownRunnerError
    from supervisor.observe import RunnerHealth
    from supervisor.restart import RestartingSupervisor, RunnerUnavailableError
    from supervisor.restart_events import RunnerRestarting, SupervisorGaveUp
    from supervisor.restart_policy import RestartPolicy, RestartTracker
    from supervisor.runner_supervisor import RunnerSupervisor
    from supervisor.sdnotify import SdNotifier, run_sd_notify

_LAZY = {
    "RunnerSupervisor": "supervisor.runner_supervisor",
    "ResourceSample": "supervisor.liveness",
    "RestartingSupervisor": "supervisor.restart",
    "RunnerUnavailableError": "supervisor.restart",
    "RestartPolicy": "supervisor.restart_policy",
    "RestartTracker": "supervisor.restart_policy",
    "RunnerRestarting": "supervisor.restart_events",
    "SupervisorGaveUp": "supervisor.restart_events",
    "RunnerNode": "supervisor.node",
    "UnknownRunnerError": "supervisor.node",
    "RunnerHealth": "supervisor.observe",
    # these two need the `health` extra (prometheus-client, h11)
    "SupervisorMetrics": "supervisor.metrics",
    "serve_health": "supervisor.health",
    "SdNotifier": "supervisor.sdnotify",
    "run_sd_notify": "supervisor.sdnotify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DuplicateTaskError",
    "ResourceSample",
    "RestartPolicy",
    "RestartTracker",
    "RestartingSupervisor",
    "RunnerFailedError",
    "RunnerHealth",
    "RunnerNode",
    "RunnerRestarting",
    "RunnerSpec",
    "RunnerSupervisor",
    "RunnerUnavailableError",
    "SdNotifier",
    "SupervisorConfig",
    "SupervisorGaveUp",
    "SupervisorMetrics",
    "UnknownRunnerError",
    "run_sd_notify",
    "serve_health",
]
