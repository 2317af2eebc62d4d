"""Readiness: the one answer to "does this source take tasks?".

`/readyz`, systemd's READY=1 and the metrics' ready gauges all ask here, so they never
disagree: a runner is ready in a ready phase (`supervisor.ops.phases.READY_PHASES`), a
group member only while its whole group is, and a source when at least its
``min_ready`` runners are (None: all of them, and at least one).
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.ops.observe import HealthSource, RunnerHealth
from supervisor.ops.phases import READY_PHASES


def ready_runners(snaps: Sequence[RunnerHealth]) -> list[RunnerHealth]:
    """The runners that take tasks, counting a group member only while every member
    of its group does (a sharded model serves with all its ranks or not at all)."""
    broken_groups = {h.group for h in snaps if h.group is not None and h.phase not in READY_PHASES}
    return [h for h in snaps if h.phase in READY_PHASES and h.group not in broken_groups]


def is_ready(snaps: Sequence[RunnerHealth], min_ready: int | None = None) -> bool:
    """Readiness of a whole source: at least ``min_ready`` runners ready (None: all of
    them, and at least one), groups counted by `ready_runners`."""
    if not snaps:
        return False
    need = len(snaps) if min_ready is None else min_ready
    return len(ready_runners(snaps)) >= need


def min_ready_of(source: object) -> int | None:
    """The source's ``min_ready``, if it has one (None: every runner must be ready)."""
    value = getattr(source, "min_ready", None)
    return value if isinstance(value, int) else None


def source_ready(source: HealthSource) -> bool:
    """``source`` is ready now: `is_ready` of its snapshots with its ``min_ready``."""
    return is_ready(source.health_snapshots(), min_ready_of(source))


__all__ = ["is_ready", "min_ready_of", "ready_runners", "source_ready"]
