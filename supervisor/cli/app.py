"""``runner-supervisor``: run one supervised inference worker from the command line.

The parts, so that other front ends can reuse them:
`build_parser` (and `add_run_arguments`) -> `config_from_args` / `policy_from_args` /
`spec_from_args` (all in `supervisor.cli.args`) -> `task_source` ->
`supervisor.cli.worker.WorkerRun` (the async run loop).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence

from supervisor.cli.args import (
    PROG,
    add_run_arguments,
    build_parser,
    config_from_args,
    policy_from_args,
    spec_from_args,
)
from supervisor.cli.inputs import InputError, parse_line, prompt_tasks, read_lines
from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.protocol import BaseTask, Embed
from supervisor.restart.policy import RestartPolicy
from supervisor.restart.spares import check_spare_fits


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


def check_run_args(args: argparse.Namespace) -> str | None:
    """What the flags ask for that cannot work, found before a runner is spawned."""
    from runners.engines import resolve_engine

    try:
        resolve_engine(args.engine)
    except Exception as exc:  # noqa: BLE001 - any import error is the user's engine path
        return f"--engine {args.engine}: {type(exc).__name__}: {exc}".splitlines()[0]
    containment = getattr(args, "cfg_containment", None)
    if containment is not None:
        from supervisor.core.containment import choose
        from supervisor.errors import ContainmentUnavailableError

        try:
            choose(containment)
        except ContainmentUnavailableError as exc:
            return f"--containment {containment}: {exc}"
    if args.stdin:
        try:
            os.fstat(0)
        except OSError:
            return "--stdin: standard input is closed"
    return None


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
    from supervisor.logs.setup import configure_logging as configure

    level = "DEBUG" if args.verbose and args.log_level == "INFO" else args.log_level
    configure(args.log_format, level, sys.stderr)


# --------------------------------------------------------------------- entry
RunCommand = Callable[[argparse.Namespace, SupervisorConfig, RunnerSpec, RestartPolicy], int]


def run_command(
    args: argparse.Namespace, config: SupervisorConfig, spec: RunnerSpec, policy: RestartPolicy
) -> int:
    import anyio

    from supervisor.cli.output import HumanOutput, JsonOutput
    from supervisor.cli.worker import WorkerRun

    output = JsonOutput() if args.json else HumanOutput()
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

    if config.gpu_memory_limit is not None and not args.watch_gpus:
        print(f"{PROG}: error: --gpu-memory-limit needs --watch-gpus", file=sys.stderr)
        return 2

    async def go() -> int:
        worker = WorkerRun(
            spec=spec,
            config=config,
            source=task_source(args, config),
            output=output,
            policy=policy,
            keep_serving=args.serve,
            health_host=args.health_host,
            health_port=args.health_port,
            watch_gpus=args.watch_gpus,
        )
        return await worker.run()

    return anyio.run(go, backend="asyncio")


COMMANDS: dict[str, RunCommand] = {"run": run_command}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["logs"]:
        from supervisor.cli.logs_command import logs_main

        return logs_main(argv[1:], prog=f"{PROG} logs")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        spec = spec_from_args(args)
        policy = policy_from_args(args)
        check_spare_fits(policy, config, spec)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    problem = check_run_args(args)
    if problem is not None:
        parser.error(problem)
    configure_logging(args)
    return COMMANDS[args.command](args, config, spec, policy)


__all__ = [
    "COMMANDS",
    "add_run_arguments",
    "build_parser",
    "check_run_args",
    "config_from_args",
    "embeds_only",
    "main",
    "policy_from_args",
    "run_command",
    "spec_from_args",
    "task_source",
]

if __name__ == "__main__":
    sys.exit(main())
