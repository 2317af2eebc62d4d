"""The CLI reference in docs/cli.md, generated from the parsers so that it cannot drift.

``python -m supervisor.cli.reference --write docs/cli.md`` rewrites the part of the
file between the two markers with each subcommand's ``--help``, rendered at a fixed
width; ``--check`` exits 1 when the file is out of date (a test runs it). The prose
around the markers is written by hand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from supervisor.cli.args import EPILOG, PROG, add_run_arguments
from supervisor.cli.exits import EXIT_OK, EXIT_USAGE
from supervisor.cli.logs_command import build_logs_parser

BEGIN = "<!-- BEGIN GENERATED REFERENCE: python -m supervisor.cli.reference --write docs/cli.md -->"
END = "<!-- END GENERATED REFERENCE -->"
#: ``--check``'s exit status when the file needs ``--write``.
OUT_OF_DATE = 1
#: Columns of the rendered help: the same on every machine, whatever its terminal.
WIDTH = 100


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=WIDTH, max_help_position=34)


def run_parser() -> argparse.ArgumentParser:
    """The ``run`` subcommand's parser, as `build_parser` builds it."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} run",
        description="Spawn one runner, load and warm it up, run each PROMPT (and, with\n"
        "--stdin, each JSON line) as a task, stream the output, then shut down cleanly.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    add_run_arguments(parser)
    return parser


def render() -> str:
    """The generated block, markers included."""
    logs = build_logs_parser(f"{PROG} logs")
    logs.formatter_class = _formatter
    parts = [BEGIN, ""]
    for title, parser in (("run", run_parser()), ("logs", logs)):
        parts += [
            f"### `{PROG} {title} --help`",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
    parts.append(END)
    return "\n".join(parts)


def updated(text: str) -> str:
    """``text`` with its generated block replaced; `ValueError` without the markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers are missing: {BEGIN!r} ... {END!r}")
    return text[:start] + render() + text[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.cli.reference", description=__doc__.split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="FILE", help="rewrite the generated block")
    mode.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if it is out of date")
    args = parser.parse_args(argv)
    path: Path = args.write or args.check
    try:
        text = path.read_text()
        new = updated(text)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        if new != text:
            print(f"{path} is out of date: run {parser.prog} --write {path}", file=sys.stderr)
            return OUT_OF_DATE
        return EXIT_OK
    path.write_text(new)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
