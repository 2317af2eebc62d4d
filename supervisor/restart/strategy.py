"""Group restart strategies (Erlang/OTP) and restart rounds: pure bookkeeping, no processes.

A *round* is one decision about a group: a member failed (or the group is being
replaced) and the members the strategy names end their current incarnations
together. ``one_for_all``: every member. ``rest_for_one``: the failed member and
those added after it (later ranks depend on earlier ones). ``one_for_one``: the
failed member alone, counted under the group's budget.

A round with a *barrier* holds every member's next incarnation until all of the
round's old incarnations have ended: ranks of a sharded model must not start while
old ranks still hold the device or the rendezvous port.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from supervisor.restart.policy import Decision

Strategy: TypeAlias = Literal["one_for_all", "rest_for_one", "one_for_one"]
STRATEGIES: tuple[Strategy, ...] = ("one_for_all", "rest_for_one", "one_for_one")
StartMode: TypeAlias = Literal["parallel", "ordered"]
START_MODES: tuple[StartMode, ...] = ("parallel", "ordered")


def affected(strategy: Strategy, order: Sequence[str], member: str) -> tuple[str, ...]:
    """The members that end with ``member``'s incarnation, in group order."""
    if member not in order:
        raise ValueError(f"{member!r} is not a member")
    if strategy == "one_for_all":
        return tuple(order)
    if strategy == "rest_for_one":
        return tuple(order[order.index(member) :])
    return (member,)


@dataclass(frozen=True, slots=True)
class Round:
    """One group decision and the incarnations it ends."""

    cause: str  # the member whose end started it ("" for a replacement of the group)
    reason: str
    decision: Decision
    #: member -> the number of its incarnation that ends in this round
    old: dict[str, int]
    barrier: bool

    def joins(self, member: str, number: int) -> bool:
        """``member``'s incarnation ``number`` ends as part of this round."""
        return number <= self.old.get(member, 0)


class Rounds:
    """The latest round each member belongs to, and when a member may start."""

    def __init__(self, order: Sequence[str]) -> None:
        self.order: list[str] = list(order)
        self._latest: dict[str, Round] = {}

    def open(self, rnd: Round) -> None:
        for member in rnd.old:
            self._latest[member] = rnd

    def of(self, member: str) -> Round | None:
        return self._latest.get(member)

    def joined(self, member: str, number: int) -> Round | None:
        """The open round that already decided about ``member``'s incarnation ``number``."""
        rnd = self._latest.get(member)
        return rnd if rnd is not None and rnd.joins(member, number) else None

    def forget(self, member: str) -> None:
        self._latest.pop(member, None)
        if member in self.order:
            self.order.remove(member)

    def may_start(
        self,
        member: str,
        *,
        ordered: bool,
        live: Callable[[str], Collection[int]],
        ready: Callable[[str], bool],
    ) -> bool:
        """Whether ``member``'s next incarnation may start now.

        ``live(m)``: numbers of ``m``'s incarnations still running; ``ready(m)``: ``m``
        takes tasks (or is gone for good, so that nobody waits on it forever).
        """
        rnd = self._latest.get(member)
        if rnd is not None and rnd.barrier:
            for other, number in rnd.old.items():
                if any(n <= number for n in live(other)):
                    return False
        if ordered and member in self.order:
            earlier = self.order[: self.order.index(member)]
            return all(ready(m) for m in earlier)
        return True


__all__ = ["START_MODES", "STRATEGIES", "Round", "Rounds", "StartMode", "Strategy", "affected"]
