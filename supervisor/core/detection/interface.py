"""What a detector is, and what it reports.

A detector watches one thing about a runner (its exit, its heartbeat, its event
channel, ...) and, when that thing says the runner has ended, calls ``end`` once with
an `EndCause`. The rank supervisor keeps the first cause and cancels the rest, so a
detector needs no stop verb of its own: cancellation stops it.

Most detectors are loops the rank supervisor starts (``run``). A few are hooks called
from a loop that exists anyway (the log's fatal-line matcher runs inside the output
pump; an outside watcher calls ``fail``): they are registered all the same, with
``run=None`` and ``driven_by`` saying who calls them, so that the registry is the one
list of every way an end can be noticed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.protocol import Detector, FailureReason

if TYPE_CHECKING:
    from supervisor.core.detection.prober import Prober
    from supervisor.core.detection.watches import Detectors
    from supervisor.core.relay import Relay


@dataclass(frozen=True, slots=True)
class EndCause:
    """Why the watch ended. ``reason`` is None when the process exited by itself."""

    detected_by: Detector
    reason: FailureReason | None = None
    message: str = ""
    frozen: bool = False
    #: lines put first in the failure's diagnostics (the fatal line that ended it)
    evidence: tuple[str, ...] = ()


#: How a detector reports an end: the first call wins, later ones are ignored.
End = Callable[[EndCause], None]


@dataclass(frozen=True, slots=True)
class Watched:
    """The parts of one rank that detectors' loops run over."""

    #: exit, poll, heartbeat and progress watches over the rank's process
    watches: Detectors
    #: the deep health canary
    prober: Prober
    #: the event channel, its events and the rank's status
    relay: Relay
    #: the early death signal: the runner's sentinels and its /proc state
    early_death: Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One way a runner's end is noticed.

    ``name`` is the ``detected_by`` its failures carry; ``watches`` says what it looks
    at, ``config_fields`` which `SupervisorConfig` fields tune it, ``modules`` the
    modules that hold its logic. ``run`` is the loop the rank supervisor starts for it (it
    returns once it called ``end``, or runs until cancelled); None for a hook, and
    then ``driven_by`` names what calls it.
    """

    name: Detector
    watches: str
    config_fields: tuple[str, ...]
    modules: tuple[str, ...]
    reasons: tuple[FailureReason | None, ...]
    run: Callable[[Watched], Awaitable[None]] | None = None
    driven_by: str = ""

    def __post_init__(self) -> None:
        if (self.run is None) == (not self.driven_by):
            raise ValueError(f"detector {self.name!r}: give either run or driven_by")


__all__ = ["DetectorSpec", "End", "EndCause", "Watched"]
