"""``python -m bench --plots``: samples are kept, CDFs are drawn from them, and the
report links the pictures. Without matplotlib the flag is a one-line usage error."""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path

import pytest

from bench import cli, plots
from bench.report import Row, Section, Stats, render_report


def test_stats_keep_every_sample_in_order() -> None:
    values = [0.3, 0.1, 0.2]
    st = Stats.of(values, "s")
    assert st.samples == (0.3, 0.1, 0.2)
    assert st == Stats(n=3, median=0.2, tail=0.3)  # samples do not change equality


@pytest.mark.parametrize("n", [1, 7, plots.MAX_POINTS, plots.MAX_POINTS + 1, 50_000])
def test_ecdf_is_bounded_and_keeps_both_ends(n: int) -> None:
    rng = random.Random(n)
    samples = [rng.expovariate(100.0) for _ in range(n)]
    xs, ys = plots._ecdf(samples)
    assert len(xs) == len(ys) <= plots.MAX_POINTS
    assert xs[0] == min(samples)
    assert xs[-1] == max(samples)
    assert ys[-1] == 1.0
    assert ys[0] == pytest.approx(1 / n)
    assert xs == sorted(xs)
    assert all(a < b for a, b in itertools.pairwise(ys))


def test_plots_without_matplotlib_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    out = tmp_path / "r.md"
    assert cli.main(["--plots", "--only", "death", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "matplotlib" in captured.err
    assert not out.exists()  # nothing ran


@pytest.fixture(scope="module")
def matplotlib_fonts() -> None:
    """matplotlib keeps the font files it has used open for the life of the process (a
    cache, not a leak): open them once, before the per-test leak snapshot."""
    pytest.importorskip("matplotlib")
    with tempfile.TemporaryDirectory() as tmp:
        plots.draw([("warm", _death_section())], Path(tmp))


def _death_section() -> Section:
    rng = random.Random(1)
    s = Section("Death detection")
    bench = "death: SIGKILL -> failure seen"
    ours = [rng.uniform(0.003, 0.006) for _ in range(100)]
    poll = [rng.uniform(0.0, 1.0) for _ in range(100)]
    s.add(Row(bench, "ours", "s", Stats.of(ours, "s")))
    s.add(Row(bench, "baseline: 1 s poll", "s", Stats.of(poll, "s")))
    s.add(Row("rate", "ours", "/s", Stats.of([1.0, 2.0], "/s")))
    s.plot_latencies()
    return s


def test_draws_one_png_per_section_and_the_report_links_it(
    matplotlib_fonts: None, tmp_path: Path
) -> None:
    s = _death_section()
    assert s.plotted == ["death: SIGKILL -> failure seen"]
    untouched = Section("nothing to draw")
    untouched.add(Row("x", "ours", "s", Stats.of([1.0], "s")))

    drawn = plots.draw([("death", s), ("other", untouched)], tmp_path / "plots")
    assert [(title, p.name) for title, p in drawn] == [("Death detection", "death.png")]
    assert drawn[0][1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = render_report([s], [("mode", "quick")], "python -m bench", [(s.title, "p/death.png")])
    assert "## Plots" in report
    assert "![Death detection](p/death.png)" in report
    assert "## Plots" not in render_report([s], [], "python -m bench")
