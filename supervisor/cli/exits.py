"""The exit statuses of every ``runner-supervisor`` subcommand: one meaning, one number.

``run`` uses them all (its ``--help`` explains each); ``logs`` exits 0, 2, 130 or 141.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
#: the runner failed (or, with a restart policy, the supervisor gave up)
EXIT_RUNNER_FAILED = 1
#: bad usage or input: a bad flag, a bad stdin line, a log that does not exist
EXIT_USAGE = 2
#: a task ended Failed or Cancelled on its own, the runner healthy
EXIT_TASK_FAILED = 3
#: stdout was closed (e.g. piped into head)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
#: Ctrl-C
EXIT_INTERRUPTED = 128 + signal.SIGINT


def signal_exit(signum: int) -> int:
    """The status of a graceful stop on signal ``signum`` (the shell's convention)."""
    return 128 + signum


__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNNER_FAILED",
    "EXIT_TASK_FAILED",
    "EXIT_USAGE",
    "signal_exit",
]
