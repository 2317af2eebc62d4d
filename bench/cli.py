"""``python -m bench [--quick|--full] [--out bench/RESULTS.md] [--only NAMES] [--plots]``.

Runs each benchmark in turn (each with its own event loop), prints the markdown table
on stdout and writes the full report (machine info, table, notes) to ``--out``.
Exits 1 if a benchmark broke, so CI notices a benchmark that rotted, or if a
regression gate failed (bench/gates.py: a gross regression only, thresholds far
looser than the targets); a missed target alone does not fail the run (shared CI
machines are noisy), it is marked MISSED in the table. ``--plots`` also draws the
latency distributions as PNGs in a folder beside the report (``RESULTS-plots/`` for
``RESULTS.md``) and links them from it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import gates
from bench.common import SUPERVISOR_LOG, Mode, progress, quiet_supervisor_logs
from bench.report import Section, machine_info, render_report, render_table

#: Benchmark modules in run order (each has ``run(mode) -> Section``).
BENCHMARKS = (
    "forwarding",
    "death",
    "death_memory",
    "freeze",
    "mttr",
    "spares",
    "scale",
    "streaming",
    "memory",
    "containment",
    "embeddings",
    "fleet",
    "loglines",
    "evidence",
    "ranks",
    "recovery",
)
#: Known to ``--only`` but not run by default: they need hardware a CI machine lacks.
OPTIONAL = ("gpu",)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="CI mode: under 2 minutes (default)")
    speed.add_argument("--full", action="store_true", help="more repetitions, for the README")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "RESULTS.md",
        help="where to write the report (default: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}; also {', '.join(OPTIONAL)} "
        "(python -m bench.gpu runs it alone)",
    )
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument(
        "--plots",
        action="store_true",
        help="also draw the latency distributions as PNGs linked from the report "
        "(needs matplotlib: pip install 'runner-supervisor[bench]')",
    )
    return parser.parse_args(argv)


def _plot_folder(out: Path) -> Path:
    return out.with_name(f"{out.stem}-plots")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS) - set(OPTIONAL))
    if unknown:
        known = ", ".join(BENCHMARKS + OPTIONAL)
        print(f"unknown benchmark(s) {unknown}; known: {known}", file=sys.stderr)
        return 2
    if args.plots:
        from bench import plots

        if not plots.available():
            print(
                "python -m bench: --plots needs matplotlib: pip install 'runner-supervisor[bench]'",
                file=sys.stderr,
            )
            return 2
    mode = Mode(quick=not args.full, backend=args.backend)
    quiet_supervisor_logs()
    info = machine_info(mode.name, mode.backend)
    progress(f"{mode.name} mode, backend {mode.backend}: {', '.join(names)}")
    sections: list[Section] = []
    named: list[tuple[str, Section]] = []
    broken = False
    for name in names:
        module = f"bench.{name}.cli" if name in OPTIONAL else f"bench.{name}"
        run: Callable[[Mode], Section] = importlib.import_module(module).run
        started = time.monotonic()
        try:
            section = run(mode)
        except Exception as exc:  # noqa: BLE001 - report the others, then fail the run
            broken = True
            traceback.print_exc()
            for line in SUPERVISOR_LOG:
                print(f"  supervisor log: {line.rstrip()}", file=sys.stderr)
            section = Section(name)
            section.not_measured(name, "all", "s", f"benchmark broke: {type(exc).__name__}: {exc}")
        section.seconds = time.monotonic() - started
        progress(f"{name}: done in {section.seconds:.1f} s")
        sections.append(section)
        named.append((name, section))
    command = "python -m bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    print(render_table(sections))
    figures = {k: v for section in sections for k, v in section.figures.items()}
    verdicts = gates.check(figures)
    failed = gates.failures(verdicts)
    print()
    print(gates.render(verdicts))
    for v in failed:
        progress(f"regression gate failed: {v.gate.what}: see the gates table")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    links: list[tuple[str, str]] = []
    if args.plots:
        from bench import plots

        for title, png in plots.draw(named, _plot_folder(args.out)):
            links.append((title, os.path.relpath(png, args.out.parent)))
            progress(f"plot: {png}")
    args.out.write_text(render_report(sections, info, command.strip(), links, verdicts))
    progress(f"wrote {args.out}")
    return 1 if broken or failed else 0
