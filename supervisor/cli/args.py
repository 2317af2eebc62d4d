"""The ``run`` command's flags, and the objects they ask for.

`SupervisorConfig` and `RestartPolicy` flags are generated from their fields
(`supervisor.cli.fields`): the dataclasses hold every default and help text. The
rest (tasks, engine, health endpoints, output) are the CLI's own.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from supervisor.cli.fields import (
    COUNT,
    NUMBER,
    SIZE,
    FlagSet,
    parse_count,
    parse_finite_seconds,
    parse_port,
)
from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.logs.setup import LOG_FORMATS
from supervisor.restart.policy import RestartPolicy

PROG = "runner-supervisor"

CONFIG_FLAGS = FlagSet(
    SupervisorConfig,
    dest_prefix="cfg_",
    flag_names={"dump_stacks": "--no-stack-dump", "forward_output": "--no-forward-output"},
    value_types={"memory_limit": SIZE, "gpu_memory_limit": SIZE},
)

POLICY_FLAGS = FlagSet(
    RestartPolicy,
    dest_prefix="policy_",
    flag_names={"mode": "--restart", "requeue_unacknowledged": "--requeue"},
    # A CLI run is one worker unless asked to restart it. Its tasks wait for a Ready
    # runner as long as the supervisor's own deadlines and the policy let it live:
    # nothing else would serve them.
    defaults={"mode": "never", "ready_wait": math.inf},
    value_types={
        "backoff_factor": NUMBER,
        "jitter": NUMBER,
        "max_tasks": COUNT,
        "max_rss": SIZE,
    },
)

#: The runner's own fields with flags (engine, options and env have the CLI's own).
SPEC_FLAGS = FlagSet(RunnerSpec, dest_prefix="spec_", only=("world_size",))

EPILOG = f"""\
examples:
  {PROG} run "hello world"                      stream one echo generation
  {PROG} run --json --max-tokens 4 "a b" "c d"  JSON lines, one per event
  {PROG} run --chaos --json "EXO RUNNER MUST DIE"   watch a runner die, exit code 1
  echo '{{"type": "Generate", "prompt": "hi", "max_tokens": 8}}' | {PROG} run --stdin --json
  {PROG} run --engine my_pkg.engines:MyEngine --engine-option model=/models/x --decode-timeout 2
  {PROG} run --serve --restart on-failure --health-port 9100   a service: restarts, probes

exit codes:
  0    every task completed
  1    the runner failed (died, froze, wedged, hit --memory-limit), or could not start;
       tasks failed by that failure count as this, not as 3. With --restart, only
       giving up is 1 (a failure the policy recovered from fails its tasks: 3)
  2    bad usage or input: a bad flag, or (with --stdin) any bad line; the other
       lines are still served. A runner failure (1) takes precedence
  3    the runner stayed healthy but a task ended Failed or Cancelled on its own
       (e.g. a task kind the engine does not support, an engine TaskError)
  129  SIGHUP, 130 SIGINT, 131 SIGQUIT, 143 SIGTERM: the runner was shut down
       gracefully (a second signal kills it at once); 1 instead if the runner failed
  141  stdout was closed (e.g. piped into head): the runner was shut down

--json output: one object per line. First {{"type": "RunnerStarted", "pid", "runner_id"}},
then every event as {{"type": <event class>, <fields>}} (runner statuses as {{"type":
<status class>, ...}}, task status as a string, EmbeddingGenerated.vector as a list of
floats), {{"type": "InputRejected", "line", "error"}} per bad input, and last
{{"type": "RunFinished", "exit_code", "runner_exit_code"}}. Logs always go to stderr.
"""


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _option_value(text: str) -> Any:
    """Engine option values are JSON when they parse as JSON (numbers, true, lists)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ------------------------------------------------------------------- the parser
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` subcommand's flags (front ends may add their own groups)."""
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument("prompts", nargs="*", metavar="PROMPT", help="run each PROMPT as a Generate")
    tasks.add_argument(
        "--stdin",
        action="store_true",
        help="then read tasks from stdin, one JSON object per line, e.g. "
        '{"type": "Generate", "task_id": "t1", "prompt": "hi", "max_tokens": 8} '
        "(types: Generate, Embed, Probe; task_id optional, line-N if absent)",
    )
    tasks.add_argument(
        "--serve",
        action="store_true",
        help="keep the worker up after the tasks are done, until SIGTERM/SIGINT (or the "
        "runner fails for good): a long-running service under systemd or Kubernetes. "
        "SIGHUP then replaces the runner without losing a task",
    )
    tasks.add_argument(
        "--max-tokens",
        type=parse_count,
        default=16,
        metavar="N",
        help="tokens per Generate unless its line says otherwise (default: 16)",
    )

    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        default="echo",
        help="engine the runner drives: echo, minilm, torchdist, or module:Class (default: echo)",
    )
    engine.add_argument(
        "--engine-option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="an engine option (VALUE parsed as JSON if it can be, else a string); repeatable",
    )
    for name, what in (
        ("token_delay", "seconds per token"),
        ("load_time", "seconds LoadModel takes"),
        ("warmup_time", "seconds Warmup takes"),
    ):
        engine.add_argument(
            "--" + name.replace("_", "-"),
            dest="echo_" + name,
            type=parse_finite_seconds,
            metavar="SECONDS",
            help=f"echo engine: {what} (default: 0)",
        )
    engine.add_argument(
        "--env",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable in the runner only (e.g. EXO_RUNNER_MUST_DIE=5); "
        "repeatable",
    )
    engine.add_argument("--runner-id", help="runner id in events and logs (default: random)")
    SPEC_FLAGS.add_to(engine)

    supervision = parser.add_argument_group(
        "supervision", "how the runner is watched (defaults follow the design's bounds)"
    )
    CONFIG_FLAGS.add_to(supervision)
    supervision.add_argument(
        "--no-probe",
        dest=CONFIG_FLAGS.dest("probe_interval"),
        action="store_const",
        const=0.0,
        help="disable deep health probes (same as --probe-interval 0)",
    )

    restarts = parser.add_argument_group(
        "restarts and health",
        "with --restart on-failure or always, a failed runner is re-spawned, reloaded and\n"
        "warmed up; giving up is exit 1",
    )
    POLICY_FLAGS.add_to(restarts)
    restarts.add_argument(
        "--health-port",
        type=parse_port,
        metavar="PORT",
        default=None,
        help="serve /healthz, /readyz and /metrics (Prometheus) on this port (0: any free "
        "port, logged); off by default",
    )
    restarts.add_argument(
        "--watch-gpus",
        action="store_true",
        help="watch this node's GPUs through NVML (the 'gpu' extra): a runner on a GPU "
        "with an Xid critical error fails (gpu_fault), --gpu-memory-limit applies, and "
        "health shows GPU memory, ECC and retired pages (docs/gpu.md); without a GPU or "
        "nvidia-ml-py it logs one line and stays off",
    )
    restarts.add_argument(
        "--health-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for the health endpoints (default 127.0.0.1; use 0.0.0.0 in a pod so "
        "the kubelet can probe it)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        help="machine output: one JSON object per event per line on stdout, nothing else",
    )
    out.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"],
        help="stderr log level (default: INFO)",
    )
    out.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="the supervisor's own log lines on stderr: text for people, or json (one object "
        "per line, with runner_id, incarnation and pid as fields) for machines (default: text)",
    )
    out.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at DEBUG, including the runner's own output lines",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run and watch ML inference worker processes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run one supervised worker: load, warm up, serve the tasks, shut down",
        description="Spawn one runner, load and warm it up, run each PROMPT (and, with\n"
        "--stdin, each JSON line) as a task, stream the output, then shut down cleanly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(run)
    # Parsed by `supervisor.cli.logs_command.logs_main`; listed here so --help shows it.
    logs = commands.add_parser(
        "logs",
        help="print (and with -f follow) a runner's log file written with --log-dir",
        add_help=False,
    )
    logs.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


# ----------------------------------------------------------- args -> objects
def config_from_args(args: argparse.Namespace) -> SupervisorConfig:
    """The SupervisorConfig the flags ask for; `ValueError` if the values conflict."""
    return CONFIG_FLAGS.from_args(args)


def policy_from_args(args: argparse.Namespace) -> RestartPolicy:
    """The RestartPolicy the flags ask for; `ValueError` if the values conflict."""
    return POLICY_FLAGS.from_args(args)


def spec_from_args(args: argparse.Namespace) -> RunnerSpec:
    options: dict[str, Any] = {}
    for name in ("token_delay", "load_time", "warmup_time"):
        value = getattr(args, "echo_" + name)
        if value is not None:
            options[name] = value
    for key, value in args.engine_option:
        options[key] = _option_value(value)
    return RunnerSpec(
        engine=args.engine,
        options=options,
        runner_id=args.runner_id,
        env=dict(args.env),
        **SPEC_FLAGS.values(args),
    )


__all__ = [
    "CONFIG_FLAGS",
    "EPILOG",
    "POLICY_FLAGS",
    "PROG",
    "SPEC_FLAGS",
    "add_run_arguments",
    "build_parser",
    "config_from_args",
    "policy_from_args",
    "spec_from_args",
]
