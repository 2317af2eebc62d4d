"""What to run (`RunnerSpec`) and how to watch it (`SupervisorConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

StartMethod = Literal["spawn", "forkserver"]


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """Which engine the runner process runs, and with what options.

    ``engine`` is a built-in name (``echo``, ``minilm``) or ``"module:attr"`` naming an
    Engine class or factory. ``options`` go to the engine (echo: ``token_delay``,
    ``load_time``, ``warmup_time`` in seconds). ``env`` is applied to the runner's
    environment before the engine is imported.
    """

    engine: str = "echo"
    options: Mapping[str, Any] = field(default_factory=dict)
    runner_id: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Every knob of one supervisor. Defaults follow DESIGN.md s.5.

    Times are seconds. The bounds that matter:
    death is event driven (sentinel + pipe EOF) with ``poll_interval`` as a backstop;
    a whole-process freeze is found after ``heartbeat_stale_checks`` unchanged checks
    ``heartbeat_check_interval`` apart (1.5-2 s with defaults); a wedged main loop after
    the per-phase progress deadline.
    """

    start_method: StartMethod = "spawn"
    chaos: bool = False

    # death
    poll_interval: float = 1.0

    # whole-process freeze (heartbeat thread in the runner)
    heartbeat_interval: float = 0.1
    heartbeat_check_interval: float = 0.5
    heartbeat_stale_checks: int = 3
    busy_grace: float = 30.0
    start_timeout: float = 60.0

    # wedged main loop (progress counter ticked by the runner's main loop)
    load_timeout: float = 600.0
    warmup_timeout: float = 300.0
    prefill_timeout: float = 60.0
    decode_timeout: float = 5.0
    progress_check_interval: float = 0.25

    # stopping
    shutdown_grace: float = 5.0
    stop_grace: float = 2.0
    dump_stacks: bool = True

    # resources and evidence
    memory_limit: int | None = None
    max_task_bytes: int = 64 * 1024 * 1024
    diagnostics_lines: int = 40
    stderr_tail_lines: int = 200
    forward_output: bool = True

    # deep health probe (0 disables)
    probe_interval: float = 0.0
    probe_timeout: float = 10.0
    probe_failures: int = 3

    # runner log files and fatal output lines (docs/logs.md)
    log_dir: str | None = field(
        default=None,
        metadata={
            "help": "write each runner's output, and the supervisor's lines about it, to "
            "DIR/<runner id>.log, stamped with time, stream, incarnation and pid and appended "
            "across restarts (default: no log files)",
            "metavar": "DIR",
        },
    )
    log_rotation: str = field(
        default="50 MB",
        metadata={
            "help": "start a new log file at this size ('50 MB'), after this interval "
            "('1 day') or at this time of day ('00:00'), as loguru reads it",
            "metavar": "WHEN",
        },
    )
    log_retention: int = field(
        default=5,
        metadata={
            "help": "log files kept per runner, the one being written included; older "
            "ones are deleted at rotation"
        },
    )
    log_compression: str | None = field(
        default=None,
        metadata={
            "help": "compress rotated log files: gz, bz2, xz, zip, tar.gz, ... "
            "(default: not compressed)",
            "metavar": "FORMAT",
        },
    )
    fatal_patterns: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "a regular expression searched for in every runner output line: a "
            "match fails the runner at once (reason 'fatal_log'); repeatable, in addition "
            "to the defaults",
            "flag": "--fatal-pattern",
            "action": "append",
            "metavar": "REGEX",
        },
    )
    default_fatal_patterns: bool = field(
        default=True,
        metadata={
            "help": "do not fail runners on the built-in fatal lines (illegal memory access, "
            "device-side assert, fatal NCCL errors, uncorrectable ECC, ...: docs/logs.md)",
            "flag": "--no-default-fatal-patterns",
        },
    )

    def __post_init__(self) -> None:
        positive = {
            "poll_interval": self.poll_interval,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_check_interval": self.heartbeat_check_interval,
            "load_timeout": self.load_timeout,
            "warmup_timeout": self.warmup_timeout,
            "prefill_timeout": self.prefill_timeout,
            "decode_timeout": self.decode_timeout,
            "progress_check_interval": self.progress_check_interval,
            "probe_timeout": self.probe_timeout,
            "start_timeout": self.start_timeout,
        }
        for name, value in positive.items():
            if not ((value > 0 and math.isfinite(value)) or value == math.inf):
                raise ValueError(f"SupervisorConfig.{name} must be > 0, got {value!r}")
        non_negative = {
            "busy_grace": self.busy_grace,
            "shutdown_grace": self.shutdown_grace,
            "stop_grace": self.stop_grace,
            "probe_interval": self.probe_interval,
        }
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"SupervisorConfig.{name} must be >= 0, got {value!r}")
        if self.heartbeat_stale_checks < 1:
            raise ValueError("SupervisorConfig.heartbeat_stale_checks must be >= 1")
        if self.probe_failures < 1:
            raise ValueError("SupervisorConfig.probe_failures must be >= 1")
        if self.heartbeat_interval >= self.heartbeat_check_interval:
            raise ValueError(
                "SupervisorConfig.heartbeat_interval must be shorter than "
                "heartbeat_check_interval, or every check would look stale"
            )
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ValueError("SupervisorConfig.memory_limit must be > 0 bytes or None")
        self._check_logs()
        if self.start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver' (never plain fork), "
                f"got {self.start_method!r}"
            )

    def _check_logs(self) -> None:
        from supervisor.logs.fatal import fatal_matcher
        from supervisor.logs.files import check_file_options

        if self.log_dir is not None and (not isinstance(self.log_dir, str) or not self.log_dir):
            raise ValueError("SupervisorConfig.log_dir must be a non-empty path or None")
        if self.log_retention < 1:
            raise ValueError("SupervisorConfig.log_retention must be >= 1")
        check_file_options(self.log_rotation, self.log_compression)
        if not isinstance(self.fatal_patterns, tuple):
            if isinstance(self.fatal_patterns, str):
                raise ValueError("SupervisorConfig.fatal_patterns must be a tuple of regexes")
            object.__setattr__(self, "fatal_patterns", tuple(self.fatal_patterns))
        fatal_matcher(self.fatal_patterns, self.default_fatal_patterns)

    @property
    def freeze_bound(self) -> float:
        """Worst-case seconds from a freeze to its detection."""
        return self.heartbeat_check_interval * (self.heartbeat_stale_checks + 1)
