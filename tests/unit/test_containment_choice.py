"""Which containment layer a host gets: the pure decision, every branch."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import SupervisorConfig
from supervisor.config import CONTAINMENT_MODES
from supervisor.core.cgroups import Delegation
from supervisor.core.containment import ContainmentUnavailableError, decide

DELEGATED = Delegation(Path("/sys/fs/cgroup/app.service"), "delegated cgroup x")
NONE = Delegation(None, "cgroup v2 is not mounted")


@pytest.mark.parametrize(
    ("requested", "linux", "delegation", "layer"),
    [
        ("auto", True, DELEGATED, "cgroup"),
        ("auto", True, NONE, "keeper"),
        ("auto", False, None, "group"),
        ("cgroup", True, DELEGATED, "cgroup"),
        ("keeper", True, None, "keeper"),
        ("keeper", True, DELEGATED, "keeper"),
        ("group", True, DELEGATED, "group"),
        ("group", False, None, "group"),
    ],
)
def test_decide(requested: str, linux: bool, delegation: Delegation | None, layer: str) -> None:
    choice = decide(requested, linux=linux, delegation=delegation)
    assert choice.layer == layer
    assert choice.reason
    assert (choice.delegation is not None) == (layer == "cgroup")


def test_auto_says_why_there_is_no_cgroup() -> None:
    assert "not mounted" in decide("auto", linux=True, delegation=NONE).reason


@pytest.mark.parametrize(
    ("requested", "linux", "delegation"),
    [
        ("cgroup", True, NONE),
        ("cgroup", True, None),
        ("cgroup", False, None),
        ("keeper", False, None),
    ],
)
def test_an_explicit_layer_that_cannot_be_had_is_an_error(
    requested: str, linux: bool, delegation: Delegation | None
) -> None:
    with pytest.raises(ContainmentUnavailableError):
        decide(requested, linux=linux, delegation=delegation)


def test_config_validates_the_mode() -> None:
    assert SupervisorConfig().containment == "auto"
    assert set(CONTAINMENT_MODES) == {"auto", "cgroup", "keeper", "group"}
    with pytest.raises(ValueError, match="containment"):
        SupervisorConfig(containment="jail")  # type: ignore[arg-type]
