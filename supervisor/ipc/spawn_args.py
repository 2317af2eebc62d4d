"""What the runner process is started with.

Kept apart from `supervisor.core.process` so that unpickling it in the runner imports
nothing heavy (no anyio, no psutil): every millisecond here is start-up latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from supervisor.config import RunnerSpec
from supervisor.ipc.shared import SharedState


@dataclass(frozen=True, slots=True)
class BootstrapArgs:
    """Everything the runner needs, pickled to the child by multiprocessing."""

    runner_id: str
    spec: RunnerSpec
    tasks: Connection
    events: Connection
    output: Connection
    shared: SharedState
    chaos: bool
    heartbeat_interval: float
    #: start a keeper process above the runner (see runners.keeper)
    keeper: bool = False
    #: cgroup directory the runner's tree must live in, if the cgroup layer is active
    cgroup: str | None = None
    #: the host's pid, so the keeper can tell whether the host is already gone
    host_pid: int = 0
    #: set in the runner's environment (a rank's torchrun variables); also exported
    #: at exec where the start method allows, so it is in /proc/PID/environ
    env: dict[str, str] = field(default_factory=dict)
