"""Statistics, table rows and the markdown report (with the machine it ran on)."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import psutil

from bench import gates

#: s = latency (lower is better), /s = rate (higher is better), B = bytes, % = of one
#: core, n = a plain number (e.g. objects per task).
Unit = Literal["s", "/s", "B", "%", "n"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]): always a value that was measured."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Stats:
    """Median and tail of repeated measurements.

    ``tail`` is the p99 of latencies and sizes; for rates (higher is better) it is the
    slow tail, the 1st percentile, so the column always shows the bad end.
    ``samples`` keeps every measurement, in the order taken, for ``--plots``.
    """

    n: int
    median: float
    tail: float
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, values: Sequence[float], unit: Unit) -> Stats:
        values = list(values)
        tail = percentile(values, 0.01 if unit == "/s" else 0.99)
        ordered = sorted(values)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return cls(n=len(values), median=median, tail=tail, samples=tuple(values))


def fmt(value: float, unit: Unit) -> str:
    """Human units: 1.23 ms, 105k/s, 12.4 MiB, 0.42%."""
    if unit == "s":
        a = abs(value)
        if a >= 1:
            return f"{value:.2f} s"
        if a >= 1e-3:
            return f"{value * 1e3:.3g} ms"
        return f"{value * 1e6:.3g} µs"
    if unit == "/s":
        if value >= 1e6:
            return f"{value / 1e6:.3g}M/s"
        if value >= 1e3:
            return f"{value / 1e3:.3g}k/s"
        return f"{value:.3g}/s"
    if unit == "B":
        a = abs(value)
        if a >= 2**30:
            return f"{value / 2**30:.3g} GiB"
        if a >= 2**20:
            return f"{value / 2**20:.3g} MiB"
        if a >= 2**10:
            return f"{value / 2**10:.3g} KiB"
        return f"{value:.0f} B"
    if unit == "n":
        return f"{value:+.3g}"
    return f"{value:.3g}%"


def ratio(ours: float, baseline: float, unit: Unit) -> str:
    """Ours against one baseline (medians), worded for the baseline's row."""
    if baseline == 0 or ours == 0:
        return "n/a"
    if unit == "/s":
        r = ours / baseline
        return f"ours = {r:.0%} of it" if r < 1 else f"ours = {r:.3g}x it"
    r = baseline / ours
    better, worse = ("faster", "slower") if unit == "s" else ("smaller", "larger")
    return f"ours {r:.3g}x {better}" if r >= 1 else f"ours {1 / r:.3g}x {worse}"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: one subject (ours or a baseline) of one benchmark."""

    bench: str
    subject: str
    unit: Unit
    stats: Stats | None = None
    ratio: str = ""
    target: str = ""
    #: True = target met, False = missed, None = no target on this row.
    met: bool | None = None
    #: Why it was not measured (stats is None), or a short qualifier.
    note: str = ""


@dataclass
class Section:
    """What one benchmark module returns: its rows and the notes that explain them."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Benchmarks (``Row.bench``) whose samples are latency distributions worth drawing.
    plotted: list[str] = field(default_factory=list)
    #: Headline figures by name (bench/gates.py): what the regression gates check.
    figures: dict[str, float] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def not_measured(self, bench: str, subject: str, unit: Unit, why: str) -> None:
        self.rows.append(Row(bench, subject, unit, note=f"not measured: {why}"))

    def plot_latencies(self) -> None:
        """Mark every benchmark measured in seconds so far as a distribution to draw."""
        for row in self.rows:
            if row.unit == "s" and row.bench not in self.plotted:
                self.plotted.append(row.bench)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(sections: Iterable[Section]) -> str:
    head = "| benchmark | subject | n | median | p99 | vs baseline | target | result |"
    lines = [head, "|---|---|---:|---:|---:|---|---|---|"]
    for section in sections:
        last_bench = None
        for row in section.rows:
            bench = row.bench if row.bench != last_bench else ""
            last_bench = row.bench
            if row.stats is None:
                n = median = tail = ""
                median = row.note or "not measured"
            else:
                n = str(row.stats.n)
                median = fmt(row.stats.median, row.unit)
                tail = fmt(row.stats.tail, row.unit)
            result = {True: "met", False: "**MISSED**", None: ""}[row.met]
            subject = row.subject + (f" ({row.note})" if row.stats is not None and row.note else "")
            cells = [bench, subject, n, median, tail, row.ratio, row.target, result]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render_notes(sections: Iterable[Section]) -> str:
    out: list[str] = []
    for section in sections:
        if not section.notes:
            continue
        out.append(f"**{section.title}** ({section.seconds:.0f} s)")
        out.extend(f"- {note}" for note in section.notes)
        out.append("")
    return "\n".join(out).rstrip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine_info(mode: str, backend: str) -> list[tuple[str, str]]:
    mem = psutil.virtual_memory().total
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("mode", mode),
        ("cpu", _cpu_model()),
        (
            "cores",
            f"{psutil.cpu_count(logical=True)} logical, "
            f"{psutil.cpu_count(logical=False) or '?'} physical",
        ),
        ("memory", fmt(mem, "B")),
        ("load average at start", load),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("anyio", f"{metadata.version('anyio')} (backend {backend})"),
        ("psutil", metadata.version("psutil")),
        ("commit", _git_commit()),
    ]


def render_plots(plots: Sequence[tuple[str, str]]) -> str:
    """Markdown for the drawn plots: (title, path relative to the report)."""
    lines = [
        "Distributions of every sample behind the latency rows above: empirical CDFs (the",
        "fraction of samples at or below each latency), log scale when they span decades.",
        "",
    ]
    for title, path in plots:
        lines += [f"**{title}**", "", f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip()


def render_report(
    sections: Sequence[Section],
    info: Sequence[tuple[str, str]],
    command: str,
    plots: Sequence[tuple[str, str]] = (),
    verdicts: Sequence[gates.Verdict] = (),
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{command}`. Every figure below was measured in that one run, each",
        "beside its baseline on the same machine at the same time; nothing is copied from",
        "elsewhere. Ratios compare medians. The p99 column is the nearest-rank 99th",
        "percentile (for rates: the slow tail, the 1st percentile); with fewer than 100",
        "samples it is the worst one.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in info),
        "",
        render_table(sections),
        "",
    ]
    if verdicts:
        lines += [
            "Regression gates (bench/gates.py, docs/performance.md): the run fails only",
            "when one of these drifts grossly; the targets are for a quiet machine.",
            "",
            gates.render(verdicts),
            "",
        ]
    lines += [
        "## Notes",
        "",
        render_notes(sections),
        "",
    ]
    if plots:
        lines += ["## Plots", "", render_plots(plots), ""]
    return "\n".join(lines)
