"""``python -m bench --plots``: latency distributions as PNGs, beside the report.

One PNG per benchmark module that marked distributions (``Section.plotted``), one
panel per benchmark, one empirical CDF per subject (ours and each baseline) drawn
from every sample the run kept. CDFs rather than histograms: several subjects whose
medians are decades apart (4 ms against a 1 s poll) still read on one axis, and the
tail is where the line reaches the top. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import Row, Section, fmt

#: Points drawn per CDF at most: a file stays small and a 300,000-sample line
#: looks the same through evenly spaced ranks (the first and last are always kept).
MAX_POINTS = 2000
#: Log scale when the largest sample is this many times the smallest.
LOG_SPAN = 30.0


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def draw(named: Sequence[tuple[str, Section]], folder: Path) -> list[tuple[str, Path]]:
    """Draw each section's marked distributions into ``folder``; (title, png) pairs."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    drawn: list[tuple[str, Path]] = []
    for name, section in named:
        panels = [(bench, _rows(section, bench)) for bench in section.plotted]
        panels = [(bench, rows) for bench, rows in panels if rows]
        if not panels:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.4 * len(panels)), squeeze=False)
        for ax, (bench, rows) in zip(axes[:, 0], panels, strict=True):
            _panel(ax, bench, rows)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(fig)
        drawn.append((section.title, path))
    return drawn


def _rows(section: Section, bench: str) -> list[Row]:
    return [r for r in section.rows if r.bench == bench and r.stats and r.stats.samples]


def _ecdf(samples: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(samples)
    n = len(ordered)
    if n <= MAX_POINTS:
        ranks = list(range(n))
    else:
        step = (n - 1) / (MAX_POINTS - 1)
        ranks = sorted({round(i * step) for i in range(MAX_POINTS)})
    return [ordered[i] for i in ranks], [(i + 1) / n for i in ranks]


def _panel(ax: Any, bench: str, rows: list[Row]) -> None:
    from matplotlib.ticker import FuncFormatter

    lowest = min(min(r.stats.samples) for r in rows if r.stats)
    highest = max(max(r.stats.samples) for r in rows if r.stats)
    for row in rows:
        assert row.stats is not None
        xs, ys = _ecdf(row.stats.samples)
        label = (
            f"{row.subject}: p50 {fmt(row.stats.median, 's')}, "
            f"p99 {fmt(row.stats.tail, 's')} (n={row.stats.n:,})"
        )
        ax.step(xs, ys, where="post", label=label, linewidth=1.4)
    if lowest > 0 and highest / lowest >= LOG_SPAN:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt(x, "s")))
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction of samples <= x")
    ax.set_title(bench, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
