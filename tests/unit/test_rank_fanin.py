"""The rank group's fan-in: what the host hears of N ranks' events (pure, no processes)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.rank_fanin import RankFanIn
from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    Generate,
    RunnerFailed,
    RunnerLoaded,
    RunnerReady,
    RunnerShutdown,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)


def _fanin(world_size: int = 3, *tasks: str) -> RankFanIn:
    fanin = RankFanIn("r1", world_size)
    for tid in tasks:
        fanin.started(Generate(task_id=tid))
    return fanin


def _terminals(events: list[BaseEvent]) -> list[TaskStatusUpdated]:
    return [e for e in events if isinstance(e, TaskStatusUpdated) and e.status.terminal]


def test_rank_zero_speaks_once_for_the_group() -> None:
    fanin = _fanin(3, "g")
    for rank in range(3):
        out = fanin.on_event(rank, ChunkGenerated("g", 0, "a "))
        assert out == ([ChunkGenerated("g", 0, "a ")] if rank == 0 else [])
    assert fanin.on_event(1, TaskAcknowledged("g")) == []
    assert fanin.on_event(0, TaskAcknowledged("g")) == [TaskAcknowledged("g")]
    assert list(fanin.in_progress) == ["g"]


def test_a_task_completes_when_every_rank_completed_it() -> None:
    fanin = _fanin(3, "g")
    done = TaskStatusUpdated("g", TaskStatus.Complete)
    assert fanin.on_event(0, done) == []
    assert fanin.on_event(2, done) == []
    assert fanin.on_event(1, done) == [done]
    assert not fanin.is_open("g")


def test_a_task_fails_if_any_rank_fails_it_and_names_the_rank() -> None:
    fanin = _fanin(2, "g")
    fanin.on_event(0, TaskStatusUpdated("g", TaskStatus.Complete))
    (out,) = fanin.on_event(1, TaskStatusUpdated("g", TaskStatus.Failed, "bad shard"))
    assert isinstance(out, TaskStatusUpdated)
    assert (out.status, out.error) == (TaskStatus.Failed, "rank 1: bad shard")


def test_ready_is_held_until_every_rank_is_ready() -> None:
    fanin = _fanin(2)
    ready = RunnerStatusUpdated("r1", RunnerReady())
    assert fanin.on_event(0, RunnerStatusUpdated("r1", RunnerLoaded())) == [
        RunnerStatusUpdated("r1", RunnerLoaded())
    ]
    assert fanin.on_event(0, ready) == []
    assert fanin.on_event(1, ready) == [ready]
    assert isinstance(fanin.status, RunnerReady)


def test_one_rank_failure_is_the_groups_one_failure() -> None:
    fanin = _fanin(3, "g1", "g2")
    assert fanin.rank_ending(2) is True
    assert fanin.rank_ending(0) is False  # stopped because rank 2 ended
    died = RunnerFailed(reason="signalled", error_message="signal=9 (Killed)", signal=9)
    # The stopped ranks' words are not news, before or after the report.
    assert fanin.on_event(0, ChunkGenerated("g1", 3, "x ")) == []
    out = fanin.on_event(2, RunnerStatusUpdated("r1", died))
    failure = out[0]
    assert isinstance(failure, RunnerStatusUpdated)
    assert isinstance(failure.status, RunnerFailed)
    assert failure.status.error_message.startswith("rank 2: ")
    assert failure.status.signal == 9
    assert any("rank 2 of 3" in line for line in failure.status.diagnostics)
    assert [(e.task_id, e.status) for e in _terminals(out)] == [
        ("g1", TaskStatus.Failed),
        ("g2", TaskStatus.Failed),
    ]
    other = RunnerFailed(reason="crashed", error_message="peer gone")
    assert fanin.on_event(1, RunnerStatusUpdated("r1", other)) == []
    assert fanin.on_event(0, RunnerStatusUpdated("r1", RunnerShutdown())) == []
    assert fanin.fail(1, other) == []


def test_a_rank_that_stops_on_its_own_fails_the_group() -> None:
    fanin = _fanin(2)
    assert fanin.rank_ending(1)
    (out,) = fanin.on_event(1, RunnerStatusUpdated("r1", RunnerShutdown()))
    assert isinstance(out, RunnerStatusUpdated)
    assert isinstance(out.status, RunnerFailed)
    assert "rank 1" in out.status.error_message


def test_a_stop_the_group_asked_for_is_no_failure() -> None:
    fanin = _fanin(2)
    fanin.stopping = True
    assert fanin.rank_ending(1) is False
    assert fanin.on_event(1, RunnerStatusUpdated("r1", RunnerShutdown())) == []
    shut = RunnerStatusUpdated("r1", RunnerShutdown())
    assert fanin.on_event(0, shut) == [shut]
    assert fanin.failure is None


_END = st.sampled_from([TaskStatus.Complete, TaskStatus.Failed, TaskStatus.Cancelled])


@given(
    world_size=st.integers(1, 4),
    ends=st.lists(_END, min_size=4, max_size=4),
    order=st.permutations(range(4)),
)
def test_exactly_one_terminal_status_whatever_the_order(
    world_size: int, ends: list[TaskStatus], order: list[int]
) -> None:
    fanin = _fanin(world_size, "t")
    out: list[BaseEvent] = []
    for rank in [r for r in order if r < world_size]:
        out += fanin.on_event(rank, TaskStatusUpdated("t", ends[rank], "why"))
        out += fanin.on_event(rank, TaskStatusUpdated("t", ends[rank], "again"))
    (final,) = _terminals(out)
    mine = ends[:world_size]
    if all(end is TaskStatus.Complete for end in mine):
        assert final.status is TaskStatus.Complete
    else:
        first = next(r for r, end in enumerate(mine) if end is not TaskStatus.Complete)
        assert (final.status, final.error) == (mine[first], f"rank {first}: why")


@given(world_size=st.integers(2, 4), dead=st.integers(0, 3), acked=st.booleans())
def test_a_failure_ends_every_open_task_once(world_size: int, dead: int, acked: bool) -> None:
    dead %= world_size
    fanin = _fanin(world_size, "a", "b")
    if acked:
        fanin.on_event(0, TaskAcknowledged("a"))
    fanin.on_event(0, TaskStatusUpdated("b", TaskStatus.Complete))
    out = fanin.fail(dead, RunnerFailed(reason="exited", error_message="exitcode=1"))
    assert sorted(e.task_id for e in _terminals(out)) == ["a", "b"]
    assert fanin.failure is not None
    assert f"rank {dead}" in fanin.failure.error_message
    assert not fanin.pending
    assert not fanin.in_progress
    for rank in range(world_size):
        assert fanin.on_event(rank, TaskStatusUpdated("a", TaskStatus.Complete)) == []
