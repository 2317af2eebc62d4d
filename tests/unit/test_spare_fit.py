"""Whether a runner and its prespawned spare fit (pure), and the config errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli.app import main
from supervisor.restart.policy import RestartPolicy
from supervisor.restart.spares import spare_fit_error

GIB = 2**30


def test_a_loaded_spare_needs_twice_the_memory_limit() -> None:
    fits = spare_fit_error(
        "loaded", memory_limit=4 * GIB, gpu_memory_limit=None, host_total=8 * GIB, gpu_total=None
    )
    assert fits is None
    problem = spare_fit_error(
        "loaded", memory_limit=5 * GIB, gpu_memory_limit=None, host_total=8 * GIB, gpu_total=None
    )
    assert problem is not None
    assert "10.0 GiB" in problem
    assert "8.0 GiB" in problem


def test_a_loaded_spare_needs_twice_the_gpu_memory_limit() -> None:
    problem = spare_fit_error(
        "loaded",
        memory_limit=None,
        gpu_memory_limit=50 * GIB,
        host_total=None,
        gpu_total=80 * GIB,
    )
    assert problem is not None
    assert "GPU" in problem


def test_ranks_share_the_host() -> None:
    kw = dict(memory_limit=3 * GIB, gpu_memory_limit=None, host_total=16 * GIB, gpu_total=None)
    assert spare_fit_error("loaded", world_size=2, **kw) is None  # type: ignore[arg-type]
    assert spare_fit_error("loaded", world_size=3, **kw) is not None  # type: ignore[arg-type]


@pytest.mark.parametrize("stage", ["imported", "prepared"])
def test_spares_without_weights_are_not_sized(stage: str) -> None:
    assert (
        spare_fit_error(
            stage,  # type: ignore[arg-type]
            memory_limit=100 * GIB,
            gpu_memory_limit=100 * GIB,
            host_total=GIB,
            gpu_total=GIB,
        )
        is None
    )


@given(
    limit=st.one_of(st.none(), st.integers(1, 2**42)),
    total=st.one_of(st.none(), st.integers(1, 2**43)),
    ranks=st.integers(1, 8),
)
def test_refused_exactly_when_both_are_known_and_do_not_fit(
    limit: int | None, total: int | None, ranks: int
) -> None:
    problem = spare_fit_error(
        "loaded",
        world_size=ranks,
        memory_limit=limit,
        gpu_memory_limit=None,
        host_total=total,
        gpu_total=None,
    )
    unfit = limit is not None and total is not None and 2 * ranks * limit > total
    assert (problem is not None) == unfit
    gpu = spare_fit_error(
        "loaded",
        world_size=ranks,
        memory_limit=None,
        gpu_memory_limit=limit,
        host_total=None,
        gpu_total=total,
    )
    assert (gpu is not None) == (limit is not None and total is not None and 2 * limit > total)


def test_a_spare_stage_needs_prespawn() -> None:
    with pytest.raises(ValueError, match="needs prespawn"):
        RestartPolicy(spare_stage="loaded")
    with pytest.raises(ValueError, match="spare_stage must be one of"):
        RestartPolicy(prespawn=True, spare_stage="hot")  # type: ignore[arg-type]
    assert RestartPolicy(prespawn=True, spare_stage="prepared").spare_stage == "prepared"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "--spare-stage", "loaded", "x"], "needs prespawn"),
        (
            ["run", "--prespawn", "--spare-stage", "loaded", "--memory-limit", "100000G", "x"],
            "two copies",
        ),
        (["run", "--prespawn", "--spare-stage", "warm", "x"], "invalid choice"),
    ],
)
def test_the_cli_refuses_in_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1]
    assert "Traceback" not in "\n".join(err)
