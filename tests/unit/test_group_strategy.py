"""Group strategies, restart rounds and the start gate: pure bookkeeping (no processes)."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from supervisor.restart.policy import Restart
from supervisor.restart.strategy import Round, Rounds, affected

ORDER = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        ("one_for_all", "c", ("a", "b", "c", "d")),
        ("rest_for_one", "b", ("b", "c", "d")),
        ("rest_for_one", "d", ("d",)),
        ("rest_for_one", "a", ("a", "b", "c", "d")),
        ("one_for_one", "b", ("b",)),
    ],
)
def test_who_ends_with_a_failed_member(
    strategy: str, failed: str, expected: tuple[str, ...]
) -> None:
    assert affected(strategy, ORDER, failed) == expected  # type: ignore[arg-type]


def test_an_unknown_member_is_refused() -> None:
    with pytest.raises(ValueError, match="not a member"):
        affected("one_for_all", ORDER, "z")


def round_of(old: dict[str, int], barrier: bool = True) -> Round:
    return Round("a", "member a failed", Restart(delay=0.0, attempt=1), old, barrier)


def test_ends_the_round_covers_join_it_and_later_ones_do_not() -> None:
    rounds = Rounds(ORDER)
    rounds.open(round_of({"a": 2, "b": 1}))
    assert rounds.joined("b", 1) is not None  # the sibling it stopped
    assert rounds.joined("a", 2) is not None
    assert rounds.joined("a", 3) is None  # the next incarnation's end is news
    assert rounds.joined("c", 1) is None  # not in the round


def test_barrier_holds_every_member_until_all_old_incarnations_ended() -> None:
    rounds = Rounds(ORDER)
    rounds.open(round_of({"a": 2, "b": 1}))
    live: dict[str, Collection[int]] = {"a": [], "b": [1]}

    def may(member: str, *, ordered: bool = False) -> bool:
        return rounds.may_start(
            member, ordered=ordered, live=lambda m: live.get(m, []), ready=lambda m: False
        )

    assert not may("a")  # b's old incarnation still runs
    live["b"] = [2]  # only a newer one of b: the old one ended
    assert may("a")
    rounds.open(round_of({"a": 3}, barrier=False))
    live["a"] = [3]
    assert may("a")  # no barrier: a replacement that overlaps


def test_ordered_start_waits_for_every_earlier_member() -> None:
    rounds = Rounds(ORDER)
    ready = {"a": True, "b": False}

    def may(member: str) -> bool:
        return rounds.may_start(
            member, ordered=True, live=lambda m: [], ready=lambda m: ready.get(m, False)
        )

    assert may("a")
    assert may("b")
    assert not may("c")
    ready["b"] = True
    assert may("c")
    rounds.forget("b")
    assert rounds.order == ["a", "c", "d"]
