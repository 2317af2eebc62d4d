"""The benchmarks' regression gates (bench/gates.py): which figures fail a run, and
that the CLI turns a failed gate into exit 1 and a table in the report."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from bench import cli, gates
from bench.common import Mode
from bench.report import Section

ROOT = Path(__file__).resolve().parents[2]


def test_a_rate_gate_fails_below_its_limit_only() -> None:
    g = gates.Gate("x.rate", 0.75, above_fails=False, what="rate", target=">= 1x")
    assert g.passes(0.75)
    assert g.passes(3.0)
    assert not g.passes(0.74)


def test_a_latency_gate_fails_above_its_limit_only() -> None:
    g = gates.Gate("x.lat", 2.5, above_fails=True, what="lat", target="<= 1.25x")
    assert g.passes(2.5)
    assert g.passes(0.1)
    assert not g.passes(2.51)


@pytest.mark.parametrize("above_fails", [True, False])
def test_nan_fails_either_way(above_fails: bool) -> None:
    g = gates.Gate("x", 1.0, above_fails=above_fails, what="x", target="")
    assert not g.passes(math.nan)


def test_unmeasured_figures_are_skipped_not_failed() -> None:
    verdicts = gates.check({})
    assert [v.passed for v in verdicts] == [None] * len(gates.GATES)
    assert gates.failures(verdicts) == []
    assert "skipped" in gates.render(verdicts)


def test_a_gross_regression_fails_and_is_named() -> None:
    figures = {gates.FORWARDING_VS_RAW: 0.5, gates.DEATH_OWN_SHARE_P99: 0.0012}
    verdicts = gates.check(figures)
    failed = gates.failures(verdicts)
    assert [v.gate.figure for v in failed] == [gates.FORWARDING_VS_RAW]
    table = gates.render(verdicts)
    assert "| 0.5x | < 0.75x | >= 1.0x | **FAILED** |" in table
    assert "| 1.2 ms | > 100 ms | <= 1 ms | ok |" in table


def test_every_gate_is_looser_than_its_target() -> None:
    # A gate is the target loosened for a noisy machine, never tighter than it.
    for g in gates.GATES:
        numbers = re.findall(r"[\d.]+", g.target)
        if not numbers:
            continue  # "no worse than today": a ratio to the baseline, no number
        target = float(numbers[0]) * (1e-3 if "ms" in g.target else 1.0)
        assert (g.limit >= target) if g.above_fails else (g.limit <= target), g


def test_figure_names_are_unique_and_recorded_by_a_benchmark() -> None:
    names = [g.figure for g in gates.GATES]
    assert len(set(names)) == len(names)
    sources = "".join(p.read_text() for p in (ROOT / "bench").glob("*.py") if p.stem != "gates")
    constants = {v: k for k, v in vars(gates).items() if isinstance(v, str) and "." in v}
    for name in names:
        assert f"gates.{constants[name]}]" in sources, f"no benchmark records {name}"


def test_the_cli_exits_1_on_a_failed_gate_and_reports_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fake_forwarding(mode: Mode) -> Section:
        s = Section("fake")
        s.figures[gates.FORWARDING_VS_RAW] = 0.4
        return s

    def fake_death(mode: Mode) -> Section:
        s = Section("fake")
        s.figures[gates.DEATH_OWN_SHARE_P99] = 0.001
        return s

    monkeypatch.setattr(cli, "quiet_supervisor_logs", lambda: None)  # loguru is global
    monkeypatch.setattr("bench.forwarding.run", fake_forwarding)
    monkeypatch.setattr("bench.death.run", fake_death)
    out = tmp_path / "r.md"
    assert cli.main(["--quick", "--only", "forwarding,death", "--out", str(out)]) == 1
    assert "**FAILED**" in out.read_text()

    monkeypatch.setattr("bench.forwarding.run", fake_death)  # no forwarding figure: skipped
    assert cli.main(["--quick", "--only", "forwarding,death", "--out", str(out)]) == 0
    assert "**FAILED**" not in out.read_text()
