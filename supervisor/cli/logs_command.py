"""``runner-supervisor logs RUNNER_ID``: the command line of `supervisor.logs.tail`.

Its exit statuses and its count parser are the ``run`` command's
(`supervisor.cli.exits`, `supervisor.cli.fields.parse_count`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from supervisor.cli.exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from supervisor.cli.fields import parse_count
from supervisor.logs.tail import NoLogError, tail


def build_logs_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print a runner's log file (see run --log-dir), and with -f follow it "
        "across rotations until Ctrl-C.",
        epilog="exit codes: 0 done, 2 bad usage or no such log, 130 Ctrl-C while following, "
        "141 stdout closed (e.g. piped into head)",
    )
    parser.add_argument("runner_id", metavar="RUNNER_ID", help="the runner's id (--runner-id)")
    parser.add_argument(
        "--log-dir",
        default=".",
        metavar="DIR",
        help="the directory given to run --log-dir (default: the current directory)",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing lines as they are written"
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=parse_count,
        metavar="N",
        help="start with the last N lines (default: the whole current file)",
    )
    return parser


def logs_main(argv: Sequence[str] | None = None, prog: str = "runner-supervisor logs") -> int:
    """The ``logs`` subcommand: exit 0, 2 (bad usage, no such log), 130 (Ctrl-C while
    following) or 141 (stdout closed, e.g. piped into head)."""
    args = build_logs_parser(prog).parse_args(argv)
    try:
        tail(args.runner_id, args.log_dir, args.follow, sys.stdout, lines=args.lines)
    except NoLogError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python would complain again at exit, flushing the closed stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_OK


__all__ = ["build_logs_parser", "logs_main"]
