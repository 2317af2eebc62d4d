"""Which layer holds a runner's process tree: chosen once per host, and reported.

- ``cgroup``: a cgroup per runner (see `supervisor.core.cgroups`), plus the keeper.
  ``cgroup.kill`` takes everything, even what escaped a killed keeper; memory comes
  from the cgroup's own accounting where the memory controller is ours.
- ``keeper``: a subreaper process above the runner (see `runners.keeper`): every
  orphan of the tree comes back to it, and it kills them all when the runner dies or
  the host does. Linux only, no privileges.
- ``group``: the runner's process group only (what ``setsid`` escapes); the fallback
  where neither exists.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

from loguru import logger

from supervisor.core.cgroups import Delegation, RunnerCgroup, enable_memory, find_delegation
from supervisor.errors import ContainmentUnavailableError

Layer = Literal["cgroup", "keeper", "group"]


@dataclass(frozen=True, slots=True)
class Choice:
    layer: Layer
    reason: str
    delegation: Delegation | None = None


def decide(requested: str, *, linux: bool, delegation: Delegation | None) -> Choice:
    """The layer for ``requested`` (a `SupervisorConfig.containment` value). Pure."""
    if requested == "group":
        return Choice("group", "requested: process group only")
    if not linux:
        if requested == "auto":
            return Choice("group", "not Linux: process group only")
        raise ContainmentUnavailableError(f"containment={requested!r} needs Linux")
    if delegation is not None and delegation.base is not None:
        if requested in ("auto", "cgroup"):
            return Choice("cgroup", delegation.reason, delegation)
    elif requested == "cgroup":
        reason = delegation.reason if delegation is not None else "not probed"
        raise ContainmentUnavailableError(f"containment='cgroup' is unavailable: {reason}")
    if requested == "auto":
        why = delegation.reason if delegation is not None else "not probed"
        return Choice("keeper", f"subreaper keeper (no cgroup: {why})")
    return Choice("keeper", "requested: subreaper keeper")


_chosen: dict[str, Choice] = {}


def choose(requested: str) -> Choice:
    """`decide` against this host, probed and logged once per requested value."""
    choice = _chosen.get(requested)
    if choice is not None:
        return choice
    linux = sys.platform.startswith("linux")
    delegation = None
    if linux and requested in ("auto", "cgroup"):
        delegation = find_delegation()
        if delegation.base is not None:
            delegation = enable_memory(delegation, os.getpid())
    choice = decide(requested, linux=linux, delegation=delegation)
    _chosen[requested] = choice
    logger.info("runner containment: {} ({})", choice.layer, choice.reason)
    return choice


def runner_cgroup(choice: Choice, requested: str, runner_id: str) -> RunnerCgroup | None:
    """A new cgroup for one runner under the cgroup layer; None under the others.

    Under ``auto`` a cgroup that cannot be made costs the runner that layer only
    (the keeper still holds its tree); under an explicit ``cgroup`` it is an error.
    """
    if choice.layer != "cgroup" or choice.delegation is None:
        return None
    _sweep()
    try:
        return RunnerCgroup.create(choice.delegation, runner_id)
    except OSError as exc:
        if requested == "cgroup":
            raise ContainmentUnavailableError(f"cannot create a runner cgroup: {exc}") from exc
        logger.warning("runner {}: no cgroup ({}); the keeper alone holds its tree", runner_id, exc)
        return None


#: Runner cgroups whose last members were still dying when their runner was closed.
_unremoved: list[RunnerCgroup] = []


def remove_later(cgroup: RunnerCgroup) -> None:
    """Remove ``cgroup`` now if it is empty, else at the next spawn or at exit."""
    if not cgroup.remove():
        _unremoved.append(cgroup)


def _sweep() -> None:
    _unremoved[:] = [cg for cg in _unremoved if not cg.remove()]


@atexit.register
def _sweep_at_exit() -> None:
    for _ in range(20):
        _sweep()
        if not _unremoved:
            return
        time.sleep(0.05)
