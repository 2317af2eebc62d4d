"""The one phase model: every runner status has a phase, and the phase sets agree."""

from __future__ import annotations

from typing import get_args

import pytest

from supervisor import protocol
from supervisor.ops.phases import (
    ALL_PHASES,
    NO_RETRY_PHASES,
    PERMANENT_PHASES,
    READY_PHASES,
    STATUS_PHASES,
    Phase,
    phase_of,
)
from supervisor.protocol import (
    BUSY_STATUSES,
    FINAL_STATUSES,
    READY_STATUSES,
    BaseRunnerStatus,
    RunnerFailed,
)


def all_status_classes() -> list[type[BaseRunnerStatus]]:
    """Every runner status the protocol defines."""
    return [
        value
        for value in vars(protocol).values()
        if isinstance(value, type)
        and issubclass(value, BaseRunnerStatus)
        and value is not BaseRunnerStatus
    ]


def instance(cls: type[BaseRunnerStatus]) -> BaseRunnerStatus:
    if cls is RunnerFailed:
        return RunnerFailed(reason="exited", error_message="exitcode=1")
    return cls()


def test_the_status_list_is_found() -> None:
    assert set(FINAL_STATUSES) | set(READY_STATUSES) | set(BUSY_STATUSES) < set(
        all_status_classes()
    )


@pytest.mark.parametrize("cls", all_status_classes(), ids=lambda c: c.__name__)
def test_every_runner_status_has_a_phase(cls: type[BaseRunnerStatus]) -> None:
    assert cls in STATUS_PHASES
    assert phase_of(instance(cls)) == STATUS_PHASES[cls]
    assert phase_of(instance(cls)) in ALL_PHASES


def test_all_phases_are_the_phase_type_in_life_order() -> None:
    assert get_args(Phase) == ALL_PHASES
    assert len(set(ALL_PHASES)) == len(ALL_PHASES)
    # Life order: metrics export the series in it, dashboards stack them in it.
    order = [
        "starting",
        "loading",
        "warming_up",
        "ready",
        "running",
        "restarting",
        "shutting_down",
        "stopped",
        "gave_up",
    ]
    assert list(ALL_PHASES) == order
    # A first incarnation's statuses walk the phases forwards.
    first_life = ["RunnerIdle", "RunnerLoading", "RunnerLoaded", "RunnerWarmingUp", "RunnerReady"]
    by_name = {c.__name__: c for c in all_status_classes()}
    walk = [ALL_PHASES.index(STATUS_PHASES[by_name[n]]) for n in first_life]
    assert walk == sorted(walk)


def test_phase_sets_are_phases() -> None:
    for subset in (READY_PHASES, PERMANENT_PHASES, NO_RETRY_PHASES):
        assert subset <= set(ALL_PHASES)


def test_ready_phases_are_exactly_the_ready_statuses() -> None:
    assert {STATUS_PHASES[c] for c in READY_STATUSES} == READY_PHASES
    not_ready = set(STATUS_PHASES) - set(READY_STATUSES)
    assert not {STATUS_PHASES[c] for c in not_ready} & READY_PHASES


def test_a_final_status_means_the_next_incarnation_is_coming() -> None:
    assert {STATUS_PHASES[c] for c in FINAL_STATUSES} == {"restarting"}


def test_busy_statuses_are_live_phases() -> None:
    for cls in BUSY_STATUSES:
        assert STATUS_PHASES[cls] not in NO_RETRY_PHASES | {"restarting"}


def test_permanent_phases_offer_no_retry_and_are_not_ready() -> None:
    assert PERMANENT_PHASES <= NO_RETRY_PHASES
    assert not NO_RETRY_PHASES & READY_PHASES


def test_an_unknown_status_is_starting() -> None:
    class RunnerNew(BaseRunnerStatus):
        pass

    assert phase_of(RunnerNew()) == "starting"
