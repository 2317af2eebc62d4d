"""Node readiness from health snapshots: groups and min_ready (no processes)."""

from __future__ import annotations

from supervisor.ops.observe import RunnerHealth
from supervisor.ops.phases import Phase
from supervisor.ops.readiness import is_ready, min_ready_of, ready_runners, source_ready


def health(rid: str, phase: Phase, group: str | None = None) -> RunnerHealth:
    return RunnerHealth(rid, phase, 1, 0, None, None, None, 0, 0, group=group)


def test_every_runner_by_default_and_none_is_not_ready() -> None:
    assert not is_ready([])
    assert is_ready([health("a", "ready"), health("b", "running")])
    assert not is_ready([health("a", "ready"), health("b", "loading")])


def test_a_group_counts_only_when_every_member_is_ready() -> None:
    snaps = [
        health("solo", "ready"),
        health("r0", "ready", "g"),
        health("r1", "restarting", "g"),
        health("x0", "ready", "h"),
    ]
    assert [h.runner_id for h in ready_runners(snaps)] == ["solo", "x0"]
    assert is_ready(snaps, min_ready=2)
    assert not is_ready(snaps, min_ready=3)


def test_min_ready_lets_a_node_serve_with_a_runner_that_gave_up() -> None:
    snaps = [health("good", "ready"), health("bad", "gave_up")]
    assert not is_ready(snaps)
    assert is_ready(snaps, min_ready=1)


def test_min_ready_is_read_from_the_source_when_it_has_one() -> None:
    class Node:
        min_ready = 2

    assert min_ready_of(Node()) == 2
    assert min_ready_of(object()) is None


def test_a_source_is_ready_as_readyz_sd_notify_and_metrics_all_ask() -> None:
    class Node:
        def __init__(self, min_ready: int | None) -> None:
            self.min_ready = min_ready

        def health_snapshots(self) -> list[RunnerHealth]:
            return [
                health("good", "ready"),
                health("r0", "ready", "g"),
                health("r1", "loading", "g"),
            ]

        def add_observer(self, observer: object) -> None:
            pass

    assert source_ready(Node(1))  # min_ready honoured
    assert not source_ready(Node(2))  # a half-ready group does not count
    assert not source_ready(Node(None))  # every runner
