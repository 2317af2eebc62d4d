"""Lifecycles as tables: transitions, illegal moves, racing advances, and the Notifier."""

from __future__ import annotations

import enum

import anyio
import pytest

from supervisor.core.statemachine import IllegalTransition, Notifier, StateMachine, check_table


class Door(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    LOCKED = "locked"
    GONE = "gone"


TABLE: dict[Door, frozenset[Door]] = {
    Door.OPEN: frozenset({Door.CLOSED, Door.GONE}),
    Door.CLOSED: frozenset({Door.OPEN, Door.LOCKED, Door.GONE}),
    Door.LOCKED: frozenset({Door.CLOSED, Door.GONE}),
    Door.GONE: frozenset(),
}


def test_the_example_table_is_complete() -> None:
    check_table(TABLE, Door)


def test_legal_transitions_move_and_illegal_ones_raise_without_moving() -> None:
    door = StateMachine(Door.OPEN, TABLE)
    door.transition(Door.CLOSED)
    door.transition(Door.LOCKED)
    assert door.state is Door.LOCKED
    with pytest.raises(IllegalTransition, match="LOCKED -> OPEN is not allowed"):
        door.transition(Door.OPEN)
    assert door.state is Door.LOCKED


def test_a_final_state_has_no_way_out() -> None:
    door = StateMachine(Door.OPEN, TABLE)
    door.transition(Door.GONE)
    for target in Door:
        assert not door.can(target)
        with pytest.raises(IllegalTransition):
            door.transition(target)


def test_a_state_does_not_move_to_itself_unless_the_table_says_so() -> None:
    door = StateMachine(Door.OPEN, TABLE)
    with pytest.raises(IllegalTransition):
        door.transition(Door.OPEN)


def test_can_and_advance_follow_the_table_exactly() -> None:
    for start in Door:
        for target in Door:
            door = StateMachine(start, TABLE)
            assert door.can(target) == (target in TABLE[start])
            assert door.advance(target) == (target in TABLE[start])
            assert door.state is (target if target in TABLE[start] else start)


def test_advance_lets_the_first_of_racing_paths_win() -> None:
    door = StateMachine(Door.CLOSED, TABLE)
    assert door.advance(Door.GONE)
    assert not door.advance(Door.OPEN)
    assert not door.advance(Door.GONE)
    assert door.state is Door.GONE


def test_check_table_finds_a_missing_row_and_an_unknown_target() -> None:
    missing: dict[Door, frozenset[Door]] = {k: v for k, v in TABLE.items() if k is not Door.LOCKED}
    with pytest.raises(ValueError, match="no row for \\['LOCKED'\\]"):
        check_table(missing, Door)

    class Other(enum.Enum):
        X = 1

    bad: dict[Door, frozenset[Door]] = {**TABLE, Door.GONE: frozenset({Other.X})}  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown target"):
        check_table(bad, Door)


def test_a_notifier_needs_no_event_loop_until_someone_waits() -> None:
    n = Notifier()
    n.notify()  # nobody waits: nothing to do, and no loop needed
    StateMachine(Door.OPEN, TABLE).transition(Door.CLOSED)


@pytest.mark.anyio
async def test_wait_until_returns_at_once_when_the_condition_holds() -> None:
    n = Notifier()
    with anyio.fail_after(1):
        await n.wait_until(lambda: True)


@pytest.mark.anyio
async def test_wait_until_rechecks_after_each_notify_and_wakes_every_waiter() -> None:
    n = Notifier()
    value = [0]
    woke: list[str] = []

    async def waiter(name: str, target: int) -> None:
        await n.wait_until(lambda: value[0] >= target)
        woke.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "a", 1)
            tg.start_soon(waiter, "b", 1)
            tg.start_soon(waiter, "c", 3)
            await anyio.wait_all_tasks_blocked()
            n.notify()  # no change yet: everyone re-checks and waits again
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            value[0] = 1
            n.notify()
            await anyio.wait_all_tasks_blocked()
            assert sorted(woke) == ["a", "b"]
            value[0] = 3
            n.notify()
    assert sorted(woke) == ["a", "b", "c"]


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_notifier_usable() -> None:
    n = Notifier()
    with anyio.move_on_after(0.01):
        await n.wait()
    flag = [False]

    async def later() -> None:
        await anyio.wait_all_tasks_blocked()
        flag[0] = True
        n.notify()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            await n.wait_until(lambda: flag[0])


@pytest.mark.anyio
async def test_state_machine_wait_for_wakes_on_the_transition() -> None:
    door = StateMachine(Door.OPEN, TABLE)
    seen: list[Door] = []

    async def watch() -> None:
        await door.wait_for(Door.LOCKED, Door.GONE)
        seen.append(door.state)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.wait_all_tasks_blocked()
            door.transition(Door.CLOSED)
            await anyio.wait_all_tasks_blocked()
            assert seen == []
            door.transition(Door.LOCKED)
    assert seen == [Door.LOCKED]
