"""What to run (`RunnerSpec`) and how to watch it (`SupervisorConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

StartMethod = Literal["spawn", "forkserver"]
ContainmentMode = Literal["auto", "cgroup", "keeper", "group"]
CONTAINMENT_MODES: tuple[str, ...] = get_args(ContainmentMode)
#: Most rank processes one logical runner may have (one host's worth, with room).
MAX_WORLD_SIZE = 256
#: Unless told otherwise the runner beats every this share of
#: `SupervisorConfig.stale_window` (a beat may then come as late again before a live
#: runner looks frozen)...
HEARTBEAT_SHARE = 0.5
#: ...and at least once every this many heartbeat checks (a stop shorter than the
#: window minus a beat is survived: long windows are not spent on rare beats).
HEARTBEAT_CHECKS = 1.5


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """Which engine the runner process runs, and with what options.

    ``engine`` is a built-in name (``echo``, ``minilm``) or ``"module:attr"`` naming an
    Engine class or factory. ``options`` go to the engine (echo: ``token_delay``,
    ``load_time``, ``warmup_time`` in seconds). ``env`` is applied to the runner's
    environment before the engine is imported. ``world_size`` > 1 makes one logical
    runner of that many rank processes, started with torchrun's environment
    (docs/ranks.md).
    """

    engine: str = "echo"
    options: Mapping[str, Any] = field(default_factory=dict)
    runner_id: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    world_size: int = field(
        default=1,
        metadata={
            "help": "rank processes that make up the runner (tensor or pipeline parallel); "
            "each starts with torchrun's environment (RANK, WORLD_SIZE, MASTER_PORT, ...), "
            "every task goes to every rank, and one rank's failure fails and restarts them all"
        },
    )

    def __post_init__(self) -> None:
        size = self.world_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_WORLD_SIZE:
            raise ValueError(
                f"RunnerSpec.world_size must be an integer from 1 to {MAX_WORLD_SIZE}, got {size!r}"
            )


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Every knob of one supervisor. Defaults are the bounds docs/operations.md explains.

    Times are seconds. The bounds that matter:
    death is event driven (sentinel + pipe EOF) with ``poll_interval`` as a backstop;
    a whole-process freeze is found after ``heartbeat_stale_checks`` unchanged checks
    ``heartbeat_check_interval`` apart (1.5-2 s with defaults); a wedged main loop after
    the per-phase progress deadline.
    """

    start_method: StartMethod = field(
        default="spawn",
        metadata={
            "help": "how the runner process is started: spawn (safest) or forkserver "
            "(faster to start); plain fork is never used from a threaded parent"
        },
    )
    chaos: bool = field(
        default=False,
        metadata={
            "help": "enable chaos triggers: a prompt containing EXO RUNNER MUST "
            "DIE/FAIL/SEGFAULT/FREEZE/HANG/OOM makes the runner misbehave, and "
            "EXO_RUNNER_MUST_DIE=N in its environment kills it after N tokens. "
            "Off by default, when triggers are plain text"
        },
    )
    containment: ContainmentMode = field(
        default="auto",
        metadata={
            "help": "what holds the runner's process tree, so that nothing it started "
            "outlives it: 'cgroup' (a cgroup per runner; needs a delegated cgroup v2 "
            "subtree), 'keeper' (a subreaper process above the runner; Linux), 'group' "
            "(the process group only, which setsid escapes), or 'auto' (the first of "
            "these that this host allows)"
        },
    )

    # death
    poll_interval: float = field(
        default=1.0,
        metadata={
            "help": "seconds between is_alive and RSS/CPU polls (a backstop: death is seen "
            "at once from the process sentinel and pipe EOF); `memory_limit` is checked here"
        },
    )

    # whole-process freeze (heartbeat thread in the runner)
    heartbeat_interval: float | None = field(
        default=None,
        metadata={
            "help": "seconds between beats of the runner's heartbeat thread, shorter than "
            "`heartbeat_stale_checks` x `heartbeat_check_interval` (default: half of that "
            "and at most 1.5 check intervals, 0.75 s: a beat may come as late again before "
            "a live runner could look frozen, and the thread wakes as seldom as that allows)"
        },
    )
    heartbeat_check_interval: float = field(
        default=0.5, metadata={"help": "seconds between checks of the heartbeat"}
    )
    heartbeat_stale_checks: int = field(
        default=3,
        metadata={
            "help": "consecutive checks with an unchanged heartbeat (and no CPU progress, "
            "per psutil) before the runner counts as frozen: reason 'unresponsive'"
        },
    )
    busy_grace: float = field(
        default=30.0,
        metadata={
            "help": "seconds a runner with a stale heartbeat that still burns CPU (GIL held "
            "in native code, a heavy import) may keep going before it counts as frozen"
        },
    )
    start_timeout: float = field(
        default=60.0, metadata={"help": "seconds the runner may take to start its heartbeat"}
    )

    # wedged main loop (progress counter ticked by the runner's main loop)
    load_timeout: float = field(
        default=600.0,
        metadata={
            "help": "progress deadline while loading the model (LoadModel): a main loop "
            "silent this long is reason 'stalled'"
        },
    )
    warmup_timeout: float = field(
        default=300.0, metadata={"help": "progress deadline while warming up (Warmup)"}
    )
    prefill_timeout: float = field(
        default=60.0,
        metadata={"help": "progress deadline from the start of a Generate to its first token"},
    )
    decode_timeout: float = field(
        default=5.0, metadata={"help": "progress deadline between two tokens of a Generate"}
    )
    progress_check_interval: float = field(
        default=0.25, metadata={"help": "seconds between checks of the progress deadlines"}
    )

    # stopping
    shutdown_grace: float = field(
        default=5.0,
        metadata={"help": "seconds a graceful Shutdown may take before the runner gets SIGTERM"},
    )
    stop_grace: float = field(
        default=2.0, metadata={"help": "seconds between SIGTERM and SIGKILL when stopping a runner"}
    )
    dump_stacks: bool = field(
        default=True,
        metadata={
            "help": "ask a wedged runner for a stack dump (faulthandler on SIGUSR1) before "
            "stopping it, and, where py-spy is installed (the 'stacks' extra), dump its "
            "native stacks and its sibling ranks' with 'py-spy dump --native' (at most 1 s)"
        },
    )

    # resources and evidence
    memory_limit: int | None = field(
        default=None,
        metadata={
            "help": "fail the runner (reason 'memory_limit') when its RSS exceeds this many bytes"
        },
    )
    gpu_memory_limit: int | None = field(
        default=None,
        metadata={
            "help": "fail the runner (reason 'memory_limit', detected by 'nvml') when its "
            "process tree holds more than this many bytes of GPU memory, per NVML; needs "
            "the GPU watcher (--watch-gpus, the 'gpu' extra)"
        },
    )
    max_task_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "largest prompt accepted, in characters (and the longest task line the "
            "CLI reads)"
        },
    )
    diagnostics_lines: int = field(
        default=40,
        metadata={"help": "most lines of runner output evidence put in RunnerFailed.diagnostics"},
    )
    stderr_tail_lines: int = field(
        default=200,
        metadata={"help": "lines of the runner's stdout/stderr kept in memory as evidence"},
    )
    forward_output: bool = field(
        default=True, metadata={"help": "log the runner's own stdout/stderr lines (at DEBUG level)"}
    )

    # deep health probe (0 disables)
    probe_interval: float = field(
        default=0.0,
        metadata={
            "help": "seconds between deep health probes (Probe tasks) of an idle runner; 0 disables"
        },
    )
    probe_timeout: float = field(default=10.0, metadata={"help": "seconds a health probe may take"})
    probe_failures: int = field(
        default=3,
        metadata={"help": "consecutive failed health probes before reason 'probe_failed'"},
    )

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
            "heartbeat_interval": self.beat_interval,
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
        if self.beat_interval >= self.stale_window:
            raise ValueError(
                "SupervisorConfig.heartbeat_interval must be shorter than "
                "heartbeat_stale_checks x heartbeat_check_interval, or a live runner "
                "would look frozen between two beats"
            )
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ValueError("SupervisorConfig.memory_limit must be > 0 bytes or None")
        if self.gpu_memory_limit is not None and self.gpu_memory_limit <= 0:
            raise ValueError("SupervisorConfig.gpu_memory_limit must be > 0 bytes or None")
        if self.containment not in CONTAINMENT_MODES:
            raise ValueError(
                f"SupervisorConfig.containment must be one of {', '.join(CONTAINMENT_MODES)}, "
                f"got {self.containment!r}"
            )
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
    def stale_window(self) -> float:
        """Seconds of stale checks in a row that make a runner frozen (the checks
        debounce at least 2): a live runner must beat at least once in any such span."""
        return max(2, self.heartbeat_stale_checks) * self.heartbeat_check_interval

    @property
    def beat_interval(self) -> float:
        """Seconds between the runner's heartbeats: `heartbeat_interval`, or half of
        `stale_window` and at most 1.5 check intervals (0.75 s by default). Each beat
        wakes a thread in every runner, so no more often than that: a beat may then be
        as late again before a live runner could look frozen, and the bound
        (`freeze_bound`) does not depend on it. A check in between that sees no new
        beat is a stale one the debounce absorbs."""
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return min(
            HEARTBEAT_SHARE * self.stale_window, HEARTBEAT_CHECKS * self.heartbeat_check_interval
        )

    @property
    def freeze_bound(self) -> float:
        """Worst-case seconds from a freeze to its detection."""
        return self.heartbeat_check_interval * (self.heartbeat_stale_checks + 1)
