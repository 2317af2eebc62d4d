"""The restarting supervisor's lifecycle table, and what it means before any process starts."""

from __future__ import annotations

import math

import anyio
import pytest

from supervisor import (
    RestartingSupervisor,
    RestartPolicy,
    RunnerSpec,
    RunnerUnavailableError,
    SupervisorClosedError,
)
from supervisor.core.done import DONE
from supervisor.core.statemachine import IllegalTransition, check_table
from supervisor.ops.phases import ALL_PHASES
from supervisor.protocol import BaseEvent, Generate
from supervisor.restart.restart_states import (
    SHOWN_PHASE,
    TRANSITIONS,
    RestartState,
    restart_lifecycle,
)

S = RestartState


def reachable(start: RestartState) -> set[RestartState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_table_is_complete_and_every_state_is_reachable() -> None:
    check_table(TRANSITIONS, RestartState)
    assert reachable(S.CREATED) == set(RestartState)


def test_every_state_can_end_and_only_ended_states_are_final() -> None:
    for state in RestartState:
        assert any(s.ended for s in reachable(state)), state
        assert (TRANSITIONS[state] == frozenset()) == state.ended, state


@pytest.mark.parametrize(
    "path",
    [
        [S.RUNNING, S.STOPPING, S.FINISHED],  # shut down
        [S.CLOSED, S.FINISHED],  # shut down before run(), then run()
        [S.RUNNING, S.GIVING_UP, S.GAVE_UP],  # the policy gave up
        [S.RUNNING, S.FINISHED],  # a clean exit the policy does not restart
    ],
)
def test_the_lives_a_supervisor_can_lead(path: list[RestartState]) -> None:
    life = restart_lifecycle()
    for state in path:
        life.transition(state)
    assert life.state is path[-1]
    assert life.state.ended


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([S.RUNNING, S.GIVING_UP], S.STOPPING),  # a late shutdown does not hide giving up
        ([S.RUNNING, S.STOPPING], S.GIVING_UP),  # a stopped runner is not given up on
        ([S.RUNNING, S.FINISHED], S.RUNNING),  # run() once
        ([S.CLOSED], S.RUNNING),  # shut down before run(): no incarnation ever starts
    ],
)
def test_moves_the_table_forbids(path: list[RestartState], illegal: RestartState) -> None:
    life = restart_lifecycle()
    for state in path:
        life.transition(state)
    assert not life.can(illegal)
    with pytest.raises(IllegalTransition):
        life.transition(illegal)
    assert not life.advance(illegal)
    assert life.state is path[-1]


def test_what_each_state_means() -> None:
    assert set(SHOWN_PHASE) == set(RestartState)
    assert {p for p in SHOWN_PHASE.values() if p is not None} <= set(ALL_PHASES)
    assert {s for s in RestartState if s.takes_tasks} == {S.CREATED, S.RUNNING}
    assert {s for s in RestartState if s.started} == set(RestartState) - {S.CREATED, S.CLOSED}
    for state in RestartState:
        assert state.gave_up == (state.shown_phase == "gave_up"), state
        # only a running supervisor shows its incarnation's own phase
        assert (state.shown_phase is None) == state.takes_tasks, state


def _sup(**kw: object) -> RestartingSupervisor:
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    recv.close()
    return RestartingSupervisor(
        spec=RunnerSpec(engine="echo"),
        event_sender=send,
        runner_id="r",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_shut_down_before_run_refuses_tasks_and_run_ends_at_once() -> None:
    sup = _sup()
    assert sup.shutdown() is DONE
    assert (sup.phase, sup.started, sup.finished) == ("shutting_down", False, False)
    with pytest.raises(SupervisorClosedError, match="shutting_down"):
        await sup.start_task(Generate(task_id="g", prompt="x"))
    with anyio.fail_after(5):
        await sup.run()
        await sup.wait_finished()
    assert (sup.phase, sup.started, sup.finished, sup.incarnation) == ("stopped", True, True, 0)
    with pytest.raises(RuntimeError, match="only be called once"):
        await sup.run()


@pytest.mark.anyio
async def test_a_task_before_run_waits_then_the_runner_is_unavailable() -> None:
    sup = _sup(policy=RestartPolicy(ready_wait=0.05))
    with pytest.raises(RunnerUnavailableError, match=r"not ready within 0\.05s") as exc:
        await sup.start_task(Generate(task_id="g", prompt="x"))
    assert exc.value.last_failure is None
    assert (sup.phase, sup.gave_up, sup.gave_up_reason) == ("starting", False, None)
