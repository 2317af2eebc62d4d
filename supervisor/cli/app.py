"""``runner-supervisor``: run one supervised inference worker from the command line.

The parts, so that other front ends can reuse them:
`build_parser` (and `add_run_arguments`) -> `config_from_args` / `spec_from_args`
-> `task_source` -> `supervisor.cli.worker.WorkerRun` (the async run loop).
Every `SupervisorConfig` field gets a flag generated from the dataclass, with its
help text in `CONFIG_HELP`; a field without help fails the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import typing
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from supervisor.cli.inputs import InputError, parse_line, prompt_tasks, read_lines
from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.protocol import BaseTask, Embed
from supervisor.restart.policy import RestartPolicy

PROG = "runner-supervisor"

#: Help for every SupervisorConfig field, shown by ``--help``.
CONFIG_HELP: dict[str, str] = {
    "start_method": "how the runner process is started: spawn (safest) or forkserver "
    "(faster to start); plain fork is never used from a threaded parent",
    "chaos": "enable chaos triggers: a prompt containing EXO RUNNER MUST "
    "DIE/FAIL/SEGFAULT/FREEZE/HANG/OOM makes the runner misbehave, and "
    "EXO_RUNNER_MUST_DIE=N in the environment kills it after N tokens. "
    "Off by default, when triggers are plain text",
    "poll_interval": "seconds between is_alive and RSS/CPU polls (a backstop: death is "
    "seen at once from the process sentinel and pipe EOF); --memory-limit is checked here",
    "heartbeat_interval": "seconds between beats of the runner's heartbeat thread "
    "(must be shorter than --heartbeat-check-interval)",
    "heartbeat_check_interval": "seconds between checks of the heartbeat",
    "heartbeat_stale_checks": "consecutive checks with an unchanged heartbeat (and no CPU "
    "progress, per psutil) before the runner counts as frozen: reason 'unresponsive'",
    "busy_grace": "seconds a runner with a stale heartbeat that still burns CPU (GIL held in "
    "native code, a heavy import) may keep going before it counts as frozen",
    "start_timeout": "seconds the runner may take to start its heartbeat",
    "load_timeout": "progress deadline while loading the model (LoadModel): a main loop "
    "silent this long is reason 'stalled'",
    "warmup_timeout": "progress deadline while warming up (Warmup)",
    "prefill_timeout": "progress deadline from the start of a Generate to its first token",
    "decode_timeout": "progress deadline between two tokens of a Generate",
    "progress_check_interval": "seconds between checks of the progress deadlines",
    "shutdown_grace": "seconds a graceful Shutdown may take before the runner gets SIGTERM",
    "stop_grace": "seconds between SIGTERM and SIGKILL when stopping a runner",
    "dump_stacks": "do not ask a wedged runner for a stack dump (faulthandler on SIGUSR1) "
    "before stopping it",
    "memory_limit": "fail the runner (reason 'memory_limit') when its RSS exceeds this size: "
    "bytes, or a number with K, M, G or T (binary units: 512M is 512 MiB)",
    "max_task_bytes": "largest prompt accepted, in characters; also the longest --stdin line",
    "diagnostics_lines": "most lines of runner output evidence put in RunnerFailed.diagnostics",
    "stderr_tail_lines": "lines of the runner's stdout/stderr kept in memory as evidence",
    "forward_output": "do not log the runner's own stdout/stderr lines (logged at DEBUG: -v)",
    "probe_interval": "seconds between deep health probes (Probe tasks) of an idle runner; "
    "0 disables probing",
    "probe_timeout": "seconds a health probe may take",
    "probe_failures": "consecutive failed health probes before reason 'probe_failed'",
}

#: Flag names that differ from ``--field-name`` (booleans that default to on).
_FLAG_NAMES = {"dump_stacks": "--no-stack-dump", "forward_output": "--no-forward-output"}
_CONFIG_DEST = "cfg_"

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
  130  SIGINT, 143 SIGTERM: the runner was shut down gracefully (a second signal
       kills it at once); 1 instead if the runner failed
  141  stdout was closed (e.g. piped into head): the runner was shut down

--json output: one object per line. First {{"type": "RunnerStarted", "pid", "runner_id"}},
then every event as {{"type": <event class>, <fields>}} (runner statuses as {{"type":
<status class>, ...}}, task status as a string, EmbeddingGenerated.vector as a list of
floats), {{"type": "InputRejected", "line", "error"}} per bad input, and last
{{"type": "RunFinished", "exit_code", "runner_exit_code"}}. Logs always go to stderr.
"""


# ------------------------------------------------------------------- value types
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912. Binary units; a bare number is bytes."""
    m = _SIZE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M, 2G, 1048576)")
    number, unit = m.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return size


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


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
def _config_fields() -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(SupervisorConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(SupervisorConfig)]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SupervisorConfig field, generated so flags never drift from it."""
    group = parser.add_argument_group(
        "supervision", "how the runner is watched (defaults follow the design's bounds)"
    )
    for f, hint in _config_fields():
        # Help, flag name and action may live in the field's metadata.
        help_text = CONFIG_HELP.get(f.name) or f.metadata.get("help")
        if help_text is None:
            raise RuntimeError(f"SupervisorConfig.{f.name} has no CLI help; add it to CONFIG_HELP")
        flag = f.metadata.get("flag") or _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        dest = _CONFIG_DEST + f.name
        default = f.default
        kwargs: dict[str, Any] = {"dest": dest, "default": None}
        if hint is bool:
            const = not default
            if flag.startswith("--no-") != (default is True):
                raise RuntimeError(f"flag {flag} does not match the default of {f.name}")
            group.add_argument(flag, action="store_const", const=const, help=help_text, **kwargs)
            continue
        if f.name == "memory_limit":
            group.add_argument(
                flag, type=parse_size, metavar="SIZE", help=help_text + " (default: none)", **kwargs
            )
            continue
        if f.metadata.get("action") == "append":
            group.add_argument(
                flag, action="append", metavar=f.metadata.get("metavar"), help=help_text, **kwargs
            )
            continue
        if typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif hint is float:
            kwargs["type"], kwargs["metavar"] = _seconds, "SECONDS"
        elif hint is int:
            kwargs["type"], kwargs["metavar"] = _count, "N"
        elif hint in (str, str | None):
            kwargs["metavar"] = f.metadata.get("metavar", "TEXT")
        else:
            raise RuntimeError(f"no CLI type for SupervisorConfig.{f.name}: {hint!r}")
        if default is None or "(default:" in help_text:
            group.add_argument(flag, help=help_text, **kwargs)
        else:
            group.add_argument(flag, help=f"{help_text} (default: {default})", **kwargs)
    group.add_argument(
        "--no-probe",
        dest=_CONFIG_DEST + "probe_interval",
        action="store_const",
        const=0.0,
        help="disable deep health probes (same as --probe-interval 0)",
    )


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
        "runner fails for good): a long-running service under systemd or Kubernetes",
    )
    tasks.add_argument(
        "--max-tokens",
        type=_count,
        default=16,
        metavar="N",
        help="tokens per Generate unless its line says otherwise (default: 16)",
    )

    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        default="echo",
        help="engine the runner drives: echo, minilm, or module:Class (default: echo)",
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
            type=_seconds,
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

    add_config_arguments(parser)

    serving = parser.add_argument_group(
        "restarts and health (any of these, or systemd's NOTIFY_SOCKET, makes the CLI keep "
        "the worker up: the runner is re-spawned, reloaded and warmed up after a failure)"
    )
    serving.add_argument(
        "--restart",
        choices=["never", "on-failure", "always"],
        default="never",
        help="restart policy: never (default: one runner, exit 1 when it fails), on-failure, "
        "or always (also after an exit nobody asked for)",
    )
    serving.add_argument(
        "--max-restarts",
        type=_count,
        metavar="N",
        default=5,
        help="give up (exit 1) after this many restarts within --restart-window (default 5)",
    )
    serving.add_argument(
        "--restart-window",
        type=_seconds,
        metavar="SECONDS",
        default=60.0,
        help="the window of the restart intensity limit, seconds (default 60)",
    )
    serving.add_argument(
        "--backoff-base",
        type=_seconds,
        metavar="SECONDS",
        default=0.5,
        help="first restart delay, doubled per restart up to --backoff-cap, with 10%% jitter "
        "(default 0.5 s; 0 restarts at once)",
    )
    serving.add_argument(
        "--backoff-cap",
        type=_seconds,
        metavar="SECONDS",
        default=30.0,
        help="longest restart delay (default 30 s)",
    )
    serving.add_argument(
        "--healthy-after",
        type=_seconds,
        metavar="SECONDS",
        default=30.0,
        help="Ready this long resets the backoff (default 30 s)",
    )
    serving.add_argument(
        "--crash-loop-threshold",
        type=_count,
        metavar="N",
        default=3,
        help="give up early after this many failures in a row during load/warm-up (default 3)",
    )
    serving.add_argument(
        "--requeue",
        action="store_true",
        help="re-send tasks a dead runner never acknowledged to the next one (at-least-once "
        "for those; acknowledged tasks always fail: at-most-once)",
    )
    serving.add_argument(
        "--prespawn",
        action="store_true",
        help="keep a spare idle runner process ready to take over (MTTR in ms, one more process)",
    )
    serving.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        default=None,
        help="serve /healthz, /readyz and /metrics (Prometheus) on this port (0: any free "
        "port, logged); off by default",
    )
    serving.add_argument(
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
    return parser


# ----------------------------------------------------------- args -> objects
def config_from_args(args: argparse.Namespace) -> SupervisorConfig:
    """The SupervisorConfig the flags ask for; `ValueError` if the values conflict."""
    overrides = {
        f.name: getattr(args, _CONFIG_DEST + f.name)
        for f in dataclasses.fields(SupervisorConfig)
        if getattr(args, _CONFIG_DEST + f.name, None) is not None
    }
    return SupervisorConfig(**overrides)


def spec_from_args(args: argparse.Namespace) -> RunnerSpec:
    options: dict[str, Any] = {}
    for name in ("token_delay", "load_time", "warmup_time"):
        value = getattr(args, "echo_" + name)
        if value is not None:
            options[name] = value
    for key, value in args.engine_option:
        options[key] = _option_value(value)
    return RunnerSpec(
        engine=args.engine, options=options, runner_id=args.runner_id, env=dict(args.env)
    )


async def task_source(
    args: argparse.Namespace, config: SupervisorConfig, stdin_fd: int = 0
) -> AsyncIterator[tuple[int | None, BaseTask | InputError]]:
    """Positional prompts first, then (with ``--stdin``) the lines of stdin.

    For an embeddings-only engine (``--engine minilm``) the prompts become one
    ``Embed`` task over all of them instead of one ``Generate`` each.
    """
    if args.prompts and embeds_only(args.engine):
        yield None, Embed(task_id="embed-1", texts=tuple(args.prompts))
    else:
        for task in prompt_tasks(args.prompts, max_tokens=args.max_tokens):
            yield None, task
    if args.stdin:
        async for line, text in read_lines(stdin_fd, max_line=config.max_task_bytes):
            if text is None:
                yield line, InputError(line, f"line longer than {config.max_task_bytes} bytes")
            else:
                yield line, parse_line(text, line=line, max_tokens=args.max_tokens)


def serving_requested(args: argparse.Namespace) -> bool:
    """Restarts, health endpoints or systemd: run over a RestartingSupervisor."""
    import os

    return (
        args.restart != "never"
        or args.health_port is not None
        or bool(os.environ.get("NOTIFY_SOCKET"))
    )


def policy_from_args(args: argparse.Namespace) -> RestartPolicy:
    return RestartPolicy(
        mode=args.restart,
        max_restarts=args.max_restarts,
        restart_window=args.restart_window,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        healthy_after=args.healthy_after,
        crash_loop_threshold=args.crash_loop_threshold,
        requeue_unacknowledged=args.requeue,
        prespawn=args.prespawn,
    )


def embeds_only(engine: str) -> bool:
    """True if ``engine`` serves Embed tasks and does not generate text."""
    from runners.engines import resolve_engine

    try:
        factory = resolve_engine(engine)
    except Exception:  # noqa: BLE001 - the runner will report a bad engine properly
        return False
    kinds = getattr(factory, "task_kinds", ())
    return Embed in kinds and not getattr(factory, "generates_text", True)


def configure_logging(args: argparse.Namespace) -> None:
    from loguru import logger

    logger.remove()
    level = "DEBUG" if args.verbose and args.log_level == "INFO" else args.log_level
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> | {message}",
        backtrace=False,
        diagnose=False,
    )


# --------------------------------------------------------------------- entry
RunCommand = Callable[[argparse.Namespace, SupervisorConfig, RunnerSpec], int]


def run_command(args: argparse.Namespace, config: SupervisorConfig, spec: RunnerSpec) -> int:
    import anyio

    from supervisor.cli.output import HumanOutput, JsonOutput
    from supervisor.cli.worker import WorkerRun

    output = JsonOutput() if args.json else HumanOutput()
    try:
        policy = policy_from_args(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.health_port is not None:
        try:
            import h11  # noqa: F401
            import prometheus_client  # noqa: F401
        except ImportError as exc:
            print(
                f"{PROG}: error: --health-port needs the 'health' extra ({exc.name} is missing): "
                "pip install 'runner-supervisor[health]'",
                file=sys.stderr,
            )
            return 2

    async def go() -> int:
        source = task_source(args, config)
        if serving_requested(args):
            from supervisor.cli.serving import ServingWorkerRun

            worker: WorkerRun = ServingWorkerRun(
                spec=spec,
                config=config,
                source=source,
                output=output,
                keep_serving=args.serve,
                policy=policy,
                health_host=args.health_host,
                health_port=args.health_port,
            )
        else:
            worker = WorkerRun(
                spec=spec, config=config, source=source, output=output, keep_serving=args.serve
            )
        return await worker.run()

    return anyio.run(go, backend="asyncio")


COMMANDS: dict[str, RunCommand] = {"run": run_command}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        spec = spec_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    configure_logging(args)
    return COMMANDS[args.command](args, config, spec)


if __name__ == "__main__":
    sys.exit(main())
