"""`RestartGroup`: runners that restart together under one budget (Erlang/OTP strategies).

A model sharded over several runners (tensor or pipeline parallel ranks) is
useless when one rank dies. The members of a group are ordinary
`RestartingSupervisor`s (addressable by runner id, their events keep their
runner ids), except that they ask their group, not their own tracker, what
follows an incarnation. The group decides with one `RestartTracker` for all of
them (restart intensity counted per group) and the strategy names who ends
together (see `supervisor.restart.strategy`):

- The first member end the group hears of opens a *round*: `GroupRestarting` is
  emitted right after that member's `RunnerFailed`, and every other member the
  strategy names is stopped at once (graceful Shutdown, SIGKILL after
  ``config.stop_grace``). Their unfinished host tasks end ``Failed`` with an error
  that names the member that failed (or are re-queued, per the policy).
- Ends of incarnations the round already covers (the stopped siblings, a second
  rank that crashed because the first did) join it: one round, one budget charge.
- No member of a round starts again until every old incarnation of the round has
  ended (a barrier); with ``start="ordered"`` a member also waits for every member
  added before it to be Ready.
- When the budget is spent, every member is stopped and gives up (each its own
  `SupervisorGaveUp`), and the last one to end emits `GroupGaveUp`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loguru import logger

from supervisor.core.statemachine import Notifier
from supervisor.errors import SupervisorError
from supervisor.protocol import BaseEvent
from supervisor.restart.events import GroupGaveUp, GroupRestarting
from supervisor.restart.incarnation import Incarnation
from supervisor.restart.policy import (
    Decision,
    GiveUp,
    Replace,
    Restart,
    RestartPolicy,
    RestartTracker,
    Stop,
)
from supervisor.restart.replace import Replacement
from supervisor.restart.strategy import (
    START_MODES,
    STRATEGIES,
    Round,
    Rounds,
    StartMode,
    Strategy,
    affected,
)

if TYPE_CHECKING:
    from supervisor.restart.restarting_supervisor import RestartingSupervisor


class RestartGroup:
    """Decides restarts for its members under one budget and one strategy."""

    def __init__(
        self,
        group_id: str,
        *,
        strategy: Strategy = "one_for_all",
        start: StartMode = "parallel",
        policy: RestartPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("group_id must be a non-empty string")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        self.group_id = group_id
        self.strategy: Strategy = strategy
        self.start: StartMode = start
        self.policy = policy or RestartPolicy()
        self.tracker = RestartTracker(self.policy, rng)
        #: fires when a member starts, becomes Ready, ends, or the group decides
        self.changed = Notifier()
        self._members: dict[str, RestartingSupervisor] = {}
        self._rounds = Rounds([])
        self._announcements: list[BaseEvent] = []
        self._gave_up: GiveUp | None = None
        self._given_up: set[str] = set()
        self._all_ready = False

    # ---------------------------------------------------------------- members
    def add(self, member: RestartingSupervisor) -> None:
        """Add ``member`` (restarts after the ones added before it under rest_for_one)."""
        if member.runner_id in self._members:
            raise ValueError(f"runner {member.runner_id!r} is already in group {self.group_id}")
        self._members[member.runner_id] = member
        self._rounds.order.append(member.runner_id)

    @property
    def members(self) -> Mapping[str, RestartingSupervisor]:
        """Members by runner id, in the order they were added."""
        return dict(self._members)

    @property
    def restarts(self) -> int:
        """Restart rounds granted so far (the group's one budget)."""
        return self.tracker.restarts

    @property
    def gave_up(self) -> GiveUp | None:
        return self._gave_up

    @property
    def ready(self) -> bool:
        """Every member takes tasks."""
        return bool(self._members) and all(m.ready for m in self._members.values())

    # ------------------------------------------------- decisions (from members)
    def decide(self, member: RestartingSupervisor, inc: Incarnation) -> tuple[Decision, str]:
        """What follows ``member``'s incarnation ``inc`` (ended or failing), and the
        `RunnerRestarting` reason. Called once per incarnation."""
        rid = member.runner_id
        joined = self._rounds.joined(rid, inc.number)
        if joined is not None:
            return joined.decision, ("failure" if rid == joined.cause else "group")
        if self._gave_up is not None:
            return self._gave_up, "group"
        failed = inc.failure is not None
        decision = self.tracker.on_end(
            time.monotonic(), failed=failed, reached_ready=inc.ready_at is not None
        )
        own_reason = "failure" if failed else "exit"
        if isinstance(decision, Stop):
            return decision, own_reason
        reason = _describe(rid, inc)
        if isinstance(decision, GiveUp):
            self._gave_up = decision
            names = tuple(self._rounds.order)
            logger.error("group {}: giving up ({}): {}", self.group_id, reason, decision.reason)
        else:
            names = affected(self.strategy, self._rounds.order, rid)
            logger.warning(
                "group {}: {}; restarting {} in {:.3f}s",
                self.group_id,
                reason,
                ", ".join(names),
                getattr(decision, "delay", 0.0),
            )
        self._open_round(rid, reason, decision, names)
        if isinstance(decision, Restart):
            self._announcements.append(
                GroupRestarting(self.group_id, rid, reason, decision.delay, self.restarts)
            )
        cause = f"group {self.group_id}: {reason}; this runner was stopped with it"
        for name in names:
            other = self._members[name]
            if name != rid:
                other.stop_with_group(cause)
            other.wake()
        self.changed.notify()
        return decision, own_reason

    def _open_round(
        self, cause: str, reason: str, decision: Decision, names: tuple[str, ...]
    ) -> None:
        old = {name: self._members[name].incarnation for name in names}
        self._rounds.open(Round(cause, reason, decision, old, barrier=True))
        self._all_ready = False

    def take_announcements(self) -> list[BaseEvent]:
        """Events the group owes the host (sent by the member that caused them)."""
        out, self._announcements = self._announcements, []
        return out

    def member_changed(self) -> None:
        """A member started, became Ready, stopped or ended an incarnation."""
        if not self._all_ready and self.ready:
            self._all_ready = True
            self.tracker.on_ready(time.monotonic())
        self.changed.notify()

    def member_gave_up(self, member: RestartingSupervisor) -> GroupGaveUp | None:
        """``member`` sent its `SupervisorGaveUp`; the last one gets `GroupGaveUp` to send."""
        self._given_up.add(member.runner_id)
        if self._gave_up is None or not self._given_up.issuperset(self._members):
            return None
        return GroupGaveUp(self.group_id, self._gave_up.reason, self.restarts)

    async def before_start(self, member: RestartingSupervisor) -> None:
        """Hold ``member``'s next incarnation at the round's barrier and, with
        ``start="ordered"``, until every member added before it is Ready."""
        rid = member.runner_id
        await self.changed.wait_until(
            lambda: (
                not member.running
                or self._gave_up is not None
                or self._rounds.may_start(
                    rid,
                    ordered=self.start == "ordered",
                    live=self._live_numbers,
                    ready=self._ready_or_gone,
                )
            )
        )

    def _live_numbers(self, name: str) -> list[int]:
        member = self._members.get(name)
        return [] if member is None else member.live_incarnations()

    def _ready_or_gone(self, name: str) -> bool:
        member = self._members.get(name)
        return member is None or member.ready or member.finished

    # ------------------------------------------------------------ replacing
    async def replace(
        self,
        member: RestartingSupervisor | None = None,
        *,
        drain_timeout: float | None = None,
        reason: str = "replace",
    ) -> None:
        """Replace ``member`` with the members its strategy names (None: every member).

        Without ``policy.prespawn`` no new incarnation starts before every old one has
        drained and stopped (ranks restart together); with it, each member's new
        incarnation starts at once. Outside the group's restart budget."""
        names = tuple(self._rounds.order)
        if member is not None:
            names = affected(self.strategy, names, member.runner_id)
        for name in names:
            self._members[name].check_open()
        started: dict[str, Replacement] = {}
        for name in names:
            repl = self._members[name].begin_replace(reason, drain_timeout)
            if repl is not None:
                started[name] = repl
        if started:
            old = {name: repl.old.number for name, repl in started.items()}
            barrier = not self.policy.prespawn
            self._rounds.open(Round("", reason, Replace(reason), old, barrier=barrier))
            self.changed.notify()
        for name in names:
            repl = started.get(name)
            if repl is not None:
                await repl.wait()
            else:  # it was (re)starting: that start is its replacement
                member_ = self._members[name]
                await member_.wait_ready(member_.policy.ready_wait)

    async def recycle(self, member: RestartingSupervisor) -> None:
        """``member`` is due for recycling: replace it with those its strategy names."""
        try:
            await self.replace(member, reason="recycle")
        except SupervisorError as exc:
            logger.warning(
                "group {}: recycling {} stopped: {}", self.group_id, member.runner_id, exc
            )

    def forget(self, runner_id: str) -> None:
        """``runner_id`` was removed: later decisions no longer name it."""
        self._members.pop(runner_id, None)
        self._rounds.forget(runner_id)
        self.changed.notify()


def _describe(runner_id: str, inc: Incarnation) -> str:
    failure = inc.failure
    if failure is None:
        return f"member {runner_id} exited"
    return f"member {runner_id} failed ({failure.reason}: {failure.error_message})"


__all__ = ["RestartGroup"]
