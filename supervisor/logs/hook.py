"""What a supervisor does with each line its runner writes: log it, and watch for fatal ones.

`output_hook` builds one per incarnation from the config (None when neither log files
nor fatal patterns are on); its `OutputHook.on_line` is `OutputCapture.on_line`. It runs
in the supervisor's event loop, so nothing here blocks: the file write is queued, and a
fatal line calls ``on_fatal(name, line)`` once, which is expected to end the runner
(``reason="fatal_log"``, ``detected_by="log"``).
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.config import SupervisorConfig
from supervisor.logs.fatal import FatalMatcher, fatal_matcher
from supervisor.logs.files import RunnerLog, open_runner_log

OnFatal = Callable[[str, str], None]


class OutputHook:
    """One incarnation's per-line work: the log file, then the fatal patterns."""

    __slots__ = ("_fired", "_match", "_on_fatal", "log")

    def __init__(
        self, *, matcher: FatalMatcher | None, log: RunnerLog | None, on_fatal: OnFatal
    ) -> None:
        self.log = log
        self._match = matcher.match if matcher else None
        self._on_fatal = on_fatal
        self._fired = False

    def on_line(self, stream: str, line: str) -> None:
        if self.log is not None:
            self.log.write(stream, line)
        if self._match is not None and not self._fired:
            name = self._match(line)
            if name is not None:
                self._fired = True  # the first fatal line ends the runner; once is enough
                self._on_fatal(name, line)

    def close(self) -> None:
        """The runner is gone: its remaining lines are written, its file closed."""
        if self.log is not None:
            self.log.close()


def output_hook(
    config: SupervisorConfig,
    runner_id: str,
    *,
    incarnation: int,
    pid: int | Callable[[], int],
    on_fatal: OnFatal,
) -> OutputHook | None:
    matcher = fatal_matcher(config.fatal_patterns, config.default_fatal_patterns)
    log = None
    if config.log_dir is not None:
        log = open_runner_log(
            config.log_dir,
            runner_id,
            incarnation=incarnation,
            pid=pid,
            rotation=config.log_rotation,
            retention=config.log_retention,
            compression=config.log_compression,
        )
    if not matcher and log is None:
        return None
    return OutputHook(matcher=matcher if matcher else None, log=log, on_fatal=on_fatal)


def fatal_message(name: str, line: str) -> str:
    """`RunnerFailed.error_message` for a fatal output line."""
    return f"fatal line in runner output ({name}): {line[:500]}"
