"""One runner incarnation's lifecycle table, the StateMachine and Notifier (no processes)."""

from __future__ import annotations

import anyio
import pytest

from supervisor.core.statemachine import (
    LIFE_TABLE,
    IllegalTransition,
    Life,
    Notifier,
    StateMachine,
    Stop,
    check_table,
)


def reachable(start: Life) -> set[Life]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in LIFE_TABLE[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_table_is_complete() -> None:
    check_table(LIFE_TABLE, Life)


def test_every_state_is_reachable_and_every_life_can_finish() -> None:
    assert reachable(Life.CREATED) == set(Life)
    for state in Life:
        assert Life.FINISHED in reachable(state), state
    assert LIFE_TABLE[Life.FINISHED] == frozenset()


def test_no_way_back_to_created_or_running() -> None:
    # run() may only be called once: nothing leads back to where it is allowed.
    for state, row in LIFE_TABLE.items():
        assert Life.CREATED not in row, state
        if state is not Life.CREATED:
            assert Life.RUNNING not in row, state


def test_ending_is_reported_before_finishing_unless_run_is_cancelled() -> None:
    # The only way past ENDING is FINISHED; a cancelled run may skip ENDING.
    assert LIFE_TABLE[Life.ENDING] == frozenset({Life.FINISHED})
    assert LIFE_TABLE[Life.RUNNING] == frozenset({Life.ENDING, Life.FINISHED})
    assert Life.ENDING not in LIFE_TABLE[Life.CREATED]  # no detector runs before run()


def test_run_twice_is_an_illegal_transition() -> None:
    life = StateMachine(Life.CREATED, LIFE_TABLE)
    life.transition(Life.RUNNING)
    with pytest.raises(IllegalTransition, match="RUNNING -> RUNNING"):
        life.transition(Life.RUNNING)
    assert not life.can(Life.RUNNING)
    assert life.state is Life.RUNNING


def test_first_end_wins() -> None:
    life = StateMachine(Life.CREATED, LIFE_TABLE)
    assert not life.advance(Life.ENDING)  # not watched yet: nothing can end it
    life.transition(Life.RUNNING)
    assert life.advance(Life.ENDING)
    assert not life.advance(Life.ENDING)  # a second detector loses
    assert life.state is Life.ENDING
    life.transition(Life.FINISHED)
    assert not life.advance(Life.ENDING)
    with pytest.raises(IllegalTransition):
        life.transition(Life.ENDING)


def test_stop_is_a_rising_level() -> None:
    assert Stop.NONE < Stop.ASKED < Stop.FORCED
    assert not Stop.NONE
    assert max(Stop.FORCED, Stop.ASKED) is Stop.FORCED


def test_check_table_finds_missing_rows_and_unknown_targets() -> None:
    with pytest.raises(ValueError, match="no row"):
        check_table({Life.CREATED: frozenset({Life.RUNNING})}, Life)
    bad = {**LIFE_TABLE, Life.FINISHED: frozenset({Stop.ASKED})}
    with pytest.raises(ValueError, match="unknown target"):
        check_table(bad, Life)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_wait_for_wakes_on_the_transition() -> None:
    life = StateMachine(Life.CREATED, LIFE_TABLE)
    woke: list[Life] = []

    async def waiter() -> None:
        await life.wait_for(Life.FINISHED)
        woke.append(life.state)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        life.transition(Life.RUNNING)
        await anyio.sleep(0.01)
        assert woke == []  # woken by RUNNING, re-checked, still waiting
        life.transition(Life.ENDING)
        life.transition(Life.FINISHED)
    assert woke == [Life.FINISHED]


@pytest.mark.anyio
async def test_wait_for_a_state_already_reached_returns_at_once() -> None:
    life = StateMachine(Life.CREATED, LIFE_TABLE)
    with anyio.fail_after(1):
        await life.wait_for(Life.CREATED)


@pytest.mark.anyio
async def test_notifier_wakes_every_waiter_and_only_current_ones() -> None:
    notifier = Notifier()
    notifier.notify()  # nobody waits: a no-op, and not remembered
    woken = 0

    async def waiter() -> None:
        nonlocal woken
        await notifier.wait()
        woken += 1

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
        await anyio.sleep(0.01)
        assert woken == 0
        notifier.notify()
    assert woken == 3
    with anyio.move_on_after(0.05) as scope:
        await notifier.wait()  # the earlier notify is spent
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_wait_until_rechecks_after_each_notify() -> None:
    notifier = Notifier()
    value = 0

    async def bump() -> None:
        nonlocal value
        for _ in range(3):
            await anyio.sleep(0.01)
            value += 1
            notifier.notify()

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bump)
            await notifier.wait_until(lambda: value >= 3)
    assert value == 3
