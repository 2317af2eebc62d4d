"""When to restart a runner, how long to wait first, and when to give up.

Pure arithmetic over timestamps, apart from the event loop, so that backoff growth,
backoff reset, restart intensity and crash-loop detection can be tested directly.
`RestartingSupervisor` feeds it the moments a runner became Ready and ended.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from supervisor.protocol import Recovery

RECOVERY_MODES: tuple[Recovery, ...] = ("fail", "replay", "resume")
RestartMode: TypeAlias = Literal["never", "on-failure", "always"]
RESTART_MODES: tuple[RestartMode, ...] = ("never", "on-failure", "always")
SpareStage: TypeAlias = Literal["imported", "prepared", "loaded"]
SPARE_STAGES: tuple[SpareStage, ...] = ("imported", "prepared", "loaded")
#: RSS must read above ``max_rss`` this many poll samples in a row before a recycle,
#: so that one allocation spike (a large batch) does not replace a healthy runner.
RSS_RECYCLE_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a `RestartingSupervisor` reacts when an incarnation ends.

    ``mode``: ``never`` (one incarnation), ``on-failure`` (restart after a
    `RunnerFailed`), ``always`` (also after a clean exit the supervisor did not ask
    for, like systemd's ``Restart=always``). A stop requested through
    ``shutdown()`` is never restarted.

    Backoff before restart *k* (k consecutive failures so far) is
    ``min(backoff_cap, backoff_base * backoff_factor**k)``, scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` (clipped to the cap). ``backoff_base=0``
    restarts at once. An incarnation that stayed Ready for ``healthy_after``
    seconds resets k to 0.

    Intensity (Erlang/OTP): at most ``max_restarts`` restarts within any
    ``restart_window`` seconds; the failure that would need one more gives up.
    A crash loop gives up earlier: ``crash_loop_threshold`` consecutive failures
    before an incarnation ever reached Ready (load or warm-up) means restarting
    will not help.

    ``requeue_unacknowledged``: tasks handed to an incarnation that died before
    acknowledging them are sent again to the next one (opt-in: at-least-once for
    those). ``task_recovery``: what becomes of acknowledged tasks in flight when their
    runner dies: ``fail`` (at-most-once, the default), ``replay`` or ``resume``
    (docs/recovery.md); ``max_task_attempts`` bounds how many runners one task may
    be running on when they die before it is quarantined.
    ``ready_wait``: how long ``start_task`` waits for a Ready incarnation.
    ``prespawn``: once an incarnation is Ready, start the next runner process and
    keep it Idle, so that a restart skips interpreter start-up and imports (most
    of the MTTR with a small model); costs one idle process per runner.
    ``spare_stage``: how far that spare gets before it waits (docs/spares.md):
    ``imported`` (engine module imported), ``prepared`` (the engine's ``prepare``
    hook ran: device context and kernels, no weights) or ``loaded`` (LoadModel and
    Warmup ran: it waits Ready, and adopting it skips start-up; a second copy of the
    weights, on the device too).
    """

    mode: RestartMode = field(
        default="on-failure",
        metadata={
            "help": "when to start a new runner process: never (one runner; its failure is "
            "final), on-failure (after a runner failure), or always (also after an exit "
            "nobody asked for)"
        },
    )
    backoff_base: float = field(
        default=0.5,
        metadata={
            "help": "seconds before the first restart, multiplied by `backoff_factor` per "
            "restart in a row up to `backoff_cap`; 0 restarts at once"
        },
    )
    backoff_cap: float = field(default=30.0, metadata={"help": "longest restart delay, seconds"})
    backoff_factor: float = field(
        default=2.0, metadata={"help": "growth of the restart delay per restart in a row (>= 1)"}
    )
    jitter: float = field(
        default=0.1,
        metadata={"help": "random spread of each restart delay, a fraction of it (0 to 1)"},
    )
    healthy_after: float = field(
        default=30.0,
        metadata={"help": "seconds a runner must stay Ready to reset the restart delay"},
    )
    max_restarts: int = field(
        default=5,
        metadata={"help": "give up after this many restarts within `restart_window`"},
    )
    restart_window: float = field(
        default=60.0, metadata={"help": "the window of the restart limit, seconds"}
    )
    crash_loop_threshold: int = field(
        default=3,
        metadata={"help": "give up early after this many failures in a row during load/warm-up"},
    )
    requeue_unacknowledged: bool = field(
        default=False,
        metadata={
            "help": "re-send tasks a dead runner never acknowledged to the next one "
            "(at-least-once for those; acknowledged tasks always fail: at-most-once)"
        },
    )
    ready_wait: float = field(
        default=120.0,
        metadata={"help": "seconds a new task waits for a Ready runner before it is refused"},
    )
    prespawn: bool = field(
        default=False,
        metadata={
            "help": "keep a spare idle runner process ready to take over (restarts in "
            "milliseconds, for one more process)"
        },
    )
    spare_stage: SpareStage = field(
        default="imported",
        metadata={
            "help": "how far the prespawned spare gets before it waits: imported (engine "
            "module imported), prepared (engine prepare hook run: device context, no "
            "weights) or loaded (weights loaded and warmed up: a restart skips start-up, "
            "for a second copy of the weights in memory); needs `prespawn`"
        },
    )
    max_tasks: int | None = field(
        default=None,
        metadata={
            "help": "replace the runner gracefully (no task fails) once it has finished "
            "this many tasks; unset: never"
        },
    )
    max_tasks_jitter: int = field(
        default=0,
        metadata={
            "help": "add a random 0..N to `max_tasks` per runner process, so that runners "
            "started together are not recycled together"
        },
    )
    max_rss: int | None = field(
        default=None,
        metadata={
            "help": "replace the runner gracefully once its RSS stays above this for "
            f"{RSS_RECYCLE_SAMPLES} poll samples in a row; unset: never"
        },
    )
    drain_timeout: float = field(
        default=30.0,
        metadata={
            "help": "seconds a replaced or recycled runner gets to finish its tasks in "
            "flight; then they fail and it is stopped"
        },
    )
    task_recovery: Recovery = field(
        default="fail",
        metadata={
            "help": "what becomes of a task in flight when its runner dies: fail "
            "(at-most-once), replay (run it again on the next runner; what the client "
            "already got is checked, not sent twice) or resume (the next runner continues "
            "where the client's stream stopped); a task's own recovery field wins"
        },
    )
    max_task_attempts: int = field(
        default=3,
        metadata={
            "help": "a task that was running on this many runners that all died is "
            "quarantined (fails) instead of being recovered again"
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise ValueError(
                f"RestartPolicy.mode must be one of {RESTART_MODES}, got {self.mode!r}"
            )
        for name in ("backoff_base", "backoff_cap", "healthy_after"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(
                    f"RestartPolicy.{name} must be a finite number >= 0, got {value!r}"
                )
        if not (self.restart_window > 0):
            raise ValueError(
                f"RestartPolicy.restart_window must be > 0, got {self.restart_window!r}"
            )
        if not (self.ready_wait > 0):
            raise ValueError(f"RestartPolicy.ready_wait must be > 0, got {self.ready_wait!r}")
        if not (self.backoff_factor >= 1 and math.isfinite(self.backoff_factor)):
            raise ValueError("RestartPolicy.backoff_factor must be >= 1")
        if not (0 <= self.jitter <= 1):
            raise ValueError("RestartPolicy.jitter must be a fraction in [0, 1]")
        if self.max_restarts < 0:
            raise ValueError("RestartPolicy.max_restarts must be >= 0")
        if self.crash_loop_threshold < 1:
            raise ValueError("RestartPolicy.crash_loop_threshold must be >= 1")
        if self.spare_stage not in SPARE_STAGES:
            raise ValueError(
                f"RestartPolicy.spare_stage must be one of {SPARE_STAGES}, got {self.spare_stage!r}"
            )
        if self.spare_stage != "imported" and not self.prespawn:
            raise ValueError(
                f"RestartPolicy.spare_stage={self.spare_stage!r} needs prespawn "
                "(there is no spare without it)"
            )
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError("RestartPolicy.max_tasks must be >= 1 or None")
        if self.max_tasks_jitter < 0:
            raise ValueError("RestartPolicy.max_tasks_jitter must be >= 0")
        if self.max_rss is not None and self.max_rss <= 0:
            raise ValueError("RestartPolicy.max_rss must be > 0 bytes or None")
        if not (self.drain_timeout >= 0 and math.isfinite(self.drain_timeout)):
            raise ValueError("RestartPolicy.drain_timeout must be a finite number >= 0")
        if self.task_recovery not in RECOVERY_MODES:
            raise ValueError(
                f"RestartPolicy.task_recovery must be one of {RECOVERY_MODES}, "
                f"got {self.task_recovery!r}"
            )
        if self.max_task_attempts < 1:
            raise ValueError("RestartPolicy.max_task_attempts must be >= 1")


@dataclass(frozen=True, slots=True)
class Restart:
    """Start a new incarnation after ``delay`` seconds; it will be restart number ``attempt``."""

    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop for good: restarting is not allowed or will not help."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The incarnation ended cleanly and the policy does not restart clean exits."""


@dataclass(frozen=True, slots=True)
class Replace:
    """The incarnation is being replaced on purpose (``reason``: ``"replace"``,
    ``"recycle"``): a new one follows at once, outside the restart budget."""

    reason: str


Decision: TypeAlias = Restart | GiveUp | Stop | Replace


class RestartTracker:
    """The restart state of one supervised runner: backoff exponent, window, crash loop."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        #: failures since the last healthy period: the backoff exponent
        self.consecutive = 0
        #: consecutive failures before reaching Ready: the crash-loop counter
        self.startup_failures = 0
        #: restarts granted so far, in total
        self.restarts = 0
        self._window: deque[float] = deque()
        self._ready_at: float | None = None

    def backoff(self, exponent: int) -> float:
        """The un-jittered delay before a restart after ``exponent`` consecutive failures."""
        p = self.policy
        if p.backoff_base == 0:
            return 0.0
        # Compare in log space: base * factor**k overflows long before the cap matters.
        if exponent * math.log(p.backoff_factor) > math.log(
            max(p.backoff_cap, 1e-300) / p.backoff_base
        ):
            return p.backoff_cap
        return min(p.backoff_cap, p.backoff_base * p.backoff_factor**exponent)

    def next_backoff(self) -> float:
        """The longest delay the next restart may wait (jitter included), before the
        incarnation's end is decided: what Retry-After promises while a failed runner
        is still being torn down."""
        longest = self.backoff(self.consecutive) * (1 + self.policy.jitter)
        return min(self.policy.backoff_cap, longest)

    def jittered(self, delay: float) -> float:
        j = self.policy.jitter
        if delay == 0 or j == 0:
            return delay
        return min(self.policy.backoff_cap, max(0.0, delay * (1 + self._rng.uniform(-j, j))))

    def on_ready(self, now: float) -> None:
        """The current incarnation reached Ready (load and warm-up done)."""
        if self._ready_at is None:
            self._ready_at = now
        self.startup_failures = 0

    def restarts_in_window(self, now: float) -> int:
        horizon = now - self.policy.restart_window
        while self._window and self._window[0] <= horizon:
            self._window.popleft()
        return len(self._window)

    def on_end(self, now: float, *, failed: bool, reached_ready: bool) -> Decision:
        """The current incarnation ended at ``now``; decide what happens next."""
        p = self.policy
        ready_at, self._ready_at = self._ready_at, None
        if ready_at is not None and now - ready_at >= p.healthy_after:
            self.consecutive = 0
        if not failed and p.mode != "always":
            return Stop()
        if failed and p.mode == "never":
            return GiveUp("restart policy is 'never'")
        if failed and not reached_ready:
            self.startup_failures += 1
            if self.startup_failures >= p.crash_loop_threshold:
                return GiveUp(
                    f"crash loop: {self.startup_failures} consecutive failures during load/warm-up"
                )
        in_window = self.restarts_in_window(now)
        if in_window >= p.max_restarts:
            return GiveUp(f"gave up after {in_window} restarts in {p.restart_window:g} s")
        delay = self.jittered(self.backoff(self.consecutive))
        if failed:
            self.consecutive += 1
        self._window.append(now)
        self.restarts += 1
        return Restart(delay=delay, attempt=self.restarts)


__all__ = [
    "RESTART_MODES",
    "Decision",
    "RSS_RECYCLE_SAMPLES",
    "GiveUp",
    "Replace",
    "Restart",
    "RestartMode",
    "RestartPolicy",
    "RestartTracker",
    "SPARE_STAGES",
    "SpareStage",
    "Stop",
]
