"""runner-supervisor: keeps ML inference worker processes honest.

The public API. Heavy modules (anyio, psutil, loguru) load on first use, so a
runner process that only needs the protocol starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.errors import (
    DuplicateTaskError,
    ReservedTaskIdError,
    RunnerFailedError,
    RunnerUnavailableError,
    SupervisorClosedError,
    SupervisorError,
)

if TYPE_CHECKING:
    from supervisor.core.detection.liveness import ResourceSample
    from supervisor.core.runner_supervisor import RunnerSupervisor
    from supervisor.node import RunnerNode, UnknownGroupError, UnknownRunnerError
    from supervisor.ops.health import serve_health
    from supervisor.ops.metrics import SupervisorMetrics
    from supervisor.ops.observe import RunnerHealth
    from supervisor.ops.sdnotify import SdNotifier, run_sd_notify
    from supervisor.restart.events import (
        GroupGaveUp,
        GroupRestarting,
        RunnerRestarting,
        SupervisorGaveUp,
        TaskRecovered,
    )
    from supervisor.restart.group import RestartGroup
    from supervisor.restart.policy import RestartPolicy, RestartTracker
    from supervisor.restart.restarting_supervisor import RestartingSupervisor

_LAZY = {
    "RunnerSupervisor": "supervisor.core.runner_supervisor",
    "ResourceSample": "supervisor.core.detection.liveness",
    "RestartingSupervisor": "supervisor.restart.restarting_supervisor",
    "RestartPolicy": "supervisor.restart.policy",
    "RestartTracker": "supervisor.restart.policy",
    "RunnerRestarting": "supervisor.restart.events",
    "SupervisorGaveUp": "supervisor.restart.events",
    "TaskRecovered": "supervisor.restart.events",
    "GroupRestarting": "supervisor.restart.events",
    "GroupGaveUp": "supervisor.restart.events",
    "RestartGroup": "supervisor.restart.group",
    "RunnerNode": "supervisor.node",
    "UnknownRunnerError": "supervisor.node",
    "UnknownGroupError": "supervisor.node",
    "RunnerHealth": "supervisor.ops.observe",
    # these two need the `health` extra (prometheus-client, h11)
    "SupervisorMetrics": "supervisor.ops.metrics",
    "serve_health": "supervisor.ops.health",
    "SdNotifier": "supervisor.ops.sdnotify",
    "run_sd_notify": "supervisor.ops.sdnotify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DuplicateTaskError",
    "GroupGaveUp",
    "GroupRestarting",
    "ReservedTaskIdError",
    "ResourceSample",
    "RestartGroup",
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
    "SupervisorClosedError",
    "SupervisorConfig",
    "SupervisorError",
    "SupervisorGaveUp",
    "SupervisorMetrics",
    "TaskRecovered",
    "UnknownGroupError",
    "UnknownRunnerError",
    "run_sd_notify",
    "serve_health",
]
