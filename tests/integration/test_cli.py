"""The CLI's parts: flags -> config, stdin lines -> tasks, events -> JSON, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from supervisor import RunnerSpec, SupervisorConfig
from supervisor.cli.app import (
    build_parser,
    config_from_args,
    main,
    spec_from_args,
)
from supervisor.cli.args import CONFIG_FLAGS, EPILOG, POLICY_FLAGS, policy_from_args
from supervisor.cli.fields import FlagSet, parse_size
from supervisor.cli.inputs import InputError, parse_line, read_lines
from supervisor.cli.output import HumanOutput, JsonOutput, event_json, to_jsonable
from supervisor.cli.worker import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_RUNNER_FAILED,
    EXIT_TASK_FAILED,
    WorkerRun,
)
from supervisor.protocol import (
    BaseTask,
    ChunkGenerated,
    Embed,
    EmbeddingGenerated,
    Generate,
    LoadProgress,
    Probe,
    RunnerFailed,
    RunnerReady,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
)
from supervisor.restart.policy import RestartPolicy


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


# ------------------------------------------------------------------ flags


def _flag_for(f: dataclasses.Field[Any]) -> str:
    flag: str | None = f.metadata.get("flag")
    return flag or {
        "dump_stacks": "--no-stack-dump",
        "forward_output": "--no-forward-output",
    }.get(f.name, "--" + f.name.replace("_", "-"))


def _other_value(f: dataclasses.Field[Any]) -> tuple[list[str], Any]:
    """argv that sets field ``f`` to something other than its default, and that value."""
    flag = _flag_for(f)
    default = f.default
    if isinstance(default, bool):
        return [flag], not default
    if f.name == "start_method":
        return [flag, "forkserver"], "forkserver"
    if f.name == "containment":
        return [flag, "group"], "group"
    if f.name in ("memory_limit", "gpu_memory_limit"):
        return [flag, "2G"], 2 * 2**30
    if f.name == "heartbeat_interval":
        return [flag, "0.2"], 0.2  # below the stale window
    if f.name == "heartbeat_check_interval":
        return [flag, "0.75"], 0.75
    if f.name == "fatal_patterns":
        return [flag, "engine dead", flag, r"tpu \d+ halted"], ("engine dead", r"tpu \d+ halted")
    if f.name == "log_rotation":
        return [flag, "1 day"], "1 day"
    if f.name == "log_compression":
        return [flag, "gz"], "gz"
    if f.name == "log_dir":
        return [flag, "/var/log/runners"], "/var/log/runners"
    if isinstance(default, int):
        return [flag, str(default + 2)], default + 2
    assert isinstance(default, float)
    return [flag, repr(default + 1.5)], default + 1.5


@pytest.mark.parametrize("f", dataclasses.fields(SupervisorConfig), ids=lambda f: f.name)
def test_every_config_field_has_a_documented_flag_that_sets_it(f: dataclasses.Field[Any]) -> None:
    assert f.metadata.get("help"), f"no help for {f.name}"
    argv, value = _other_value(f)
    config = config_from_args(parse(*argv))
    assert getattr(config, f.name) == value
    # ... and nothing else moved
    others = {g.name: getattr(config, g.name) for g in dataclasses.fields(config) if g != f}
    defaults = {g.name: g.default for g in dataclasses.fields(config) if g != f}
    assert others == defaults


def _policy_flag_for(name: str) -> str:
    return {"mode": "--restart", "requeue_unacknowledged": "--requeue"}.get(
        name, "--" + name.replace("_", "-")
    )


#: The CLI's defaults where they differ from RestartPolicy's: one worker, and tasks
#: wait for it as long as it lives.
CLI_POLICY = RestartPolicy(mode="never", ready_wait=math.inf)


def _policy_other_value(f: dataclasses.Field[Any]) -> tuple[list[str], Any]:
    flag = _policy_flag_for(f.name)
    default = getattr(CLI_POLICY, f.name)
    if f.name == "spare_stage":  # a later stage needs a spare at all (checked by the policy)
        return [flag, "loaded", _policy_flag_for("prespawn")], "loaded"
    if isinstance(default, bool):
        return [flag], not default
    if f.name == "mode":
        return [flag, "always"], "always"
    if f.name == "task_recovery":
        return [flag, "resume"], "resume"
    if f.name == "jitter":
        return [flag, "0.25"], 0.25  # a fraction
    if f.name == "max_tasks":
        return [flag, "100"], 100
    if f.name == "max_rss":
        return [flag, "2G"], 2 * 2**30
    if isinstance(default, int):
        return [flag, str(default + 2)], default + 2
    assert isinstance(default, float)
    if default == math.inf:
        return [flag, "7.5"], 7.5
    return [flag, repr(default + 1.5)], default + 1.5


@pytest.mark.parametrize("f", dataclasses.fields(RestartPolicy), ids=lambda f: f.name)
def test_every_restart_policy_field_has_a_documented_flag_that_sets_it(
    f: dataclasses.Field[Any],
) -> None:
    assert f.metadata.get("help"), f"no help for {f.name}"
    argv, value = _policy_other_value(f)
    policy = policy_from_args(parse(*argv))
    assert getattr(policy, f.name) == value
    needed = {"prespawn"} if f.name == "spare_stage" else set()
    untouched = [g.name for g in dataclasses.fields(policy) if g != f and g.name not in needed]
    assert {n: getattr(policy, n) for n in untouched} == {
        n: getattr(CLI_POLICY, n) for n in untouched
    }


@dataclasses.dataclass(frozen=True)
class _Knobs:
    documented: int = dataclasses.field(default=1, metadata={"help": "has help"})
    undocumented: float = 2.0


def test_a_field_without_help_gets_no_flag() -> None:
    flags = FlagSet(_Knobs, dest_prefix="k_")
    with pytest.raises(RuntimeError, match="undocumented"):
        flags.add_to(argparse.ArgumentParser().add_argument_group("knobs"))


def test_help_names_other_fields_by_their_flags() -> None:
    for flags in (CONFIG_FLAGS, POLICY_FLAGS):
        for f in dataclasses.fields(flags.cls):
            assert "`" not in flags.help(f), f.name
    by_name = {f.name: f for f in dataclasses.fields(SupervisorConfig)}
    assert "--heartbeat-check-interval" in CONFIG_FLAGS.help(by_name["heartbeat_interval"])
    by_name = {f.name: f for f in dataclasses.fields(RestartPolicy)}
    assert "--restart-window" in POLICY_FLAGS.help(by_name["max_restarts"])


def test_no_flags_give_the_default_config_and_spec() -> None:
    args = parse()
    assert config_from_args(args) == SupervisorConfig()
    assert policy_from_args(args) == CLI_POLICY
    assert spec_from_args(args) == RunnerSpec(engine="echo", options={}, env={})
    assert args.prompts == []
    assert args.max_tokens == 16
    assert not args.json
    assert not args.stdin


def test_named_flags_from_the_brief() -> None:
    args = parse(
        "--decode-timeout",
        "1.5",
        "--prefill-timeout",
        "7",
        "--memory-limit",
        "512M",
        "--no-stack-dump",
        "--chaos",
        "--probe-interval",
        "3",
        "--no-probe",
        "--start-method",
        "forkserver",
    )
    config = config_from_args(args)
    assert config.decode_timeout == 1.5
    assert config.prefill_timeout == 7.0
    assert config.memory_limit == 512 * 2**20
    assert config.dump_stacks is False
    assert config.chaos is True
    assert config.probe_interval == 0.0  # --no-probe came last
    assert config.start_method == "forkserver"


def test_engine_flags_build_the_spec() -> None:
    args = parse(
        "--engine",
        "tests.support.engines:ExitEngine",
        "--token-delay",
        "0.01",
        "--warmup-time",
        "0.5",
        "--engine-option",
        "layers=4",
        "--engine-option",
        "name=tiny",
        "--engine-option",
        'tags=["a", "b"]',
        "--env",
        "EXO_RUNNER_MUST_DIE=3",
        "--runner-id",
        "r1",
    )
    spec = spec_from_args(args)
    assert spec.engine == "tests.support.engines:ExitEngine"
    assert spec.options == {
        "token_delay": 0.01,
        "warmup_time": 0.5,
        "layers": 4,
        "name": "tiny",
        "tags": ["a", "b"],
    }
    assert spec.env == {"EXO_RUNNER_MUST_DIE": "3"}
    assert spec.runner_id == "r1"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 2**20),
        ("512M", 512 * 2**20),
        ("2G", 2 * 2**30),
        ("1.5g", 3 * 2**29),
        ("64KiB", 64 * 2**10),
        ("1T", 2**40),
        ("100mb", 100 * 2**20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12X", "-5M", "0", "1.2.3G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--decode-timeout", "soon"],
        ["run", "--decode-timeout", "-1"],
        ["run", "--memory-limit", "lots"],
        ["run", "--start-method", "fork"],
        ["run", "--heartbeat-stale-checks", "0"],  # refused by SupervisorConfig
        ["run", "--heartbeat-interval", "2"],  # not below the check interval
        ["run", "--engine-option", "novalue"],
        ["run", "--restart", "sometimes"],
        ["run", "--max-restarts", "-1"],
        ["run", "--jitter", "2"],  # refused by RestartPolicy
        ["run", "--backoff-factor", "nan"],
        ["run", "--fatal-pattern", "(unclosed"],
        ["run", "--fatal-pattern", ".*"],  # would fail every runner
        ["run", "--fatal-pattern", r"(a)\1"],  # RE2: no backreferences
        ["run", "--fatal-pattern", "(?<=x)y"],  # nor lookaround
        ["run", "--log-rotation", "sometimes"],
        ["run", "--log-retention", "0"],
        ["run", "--log-compression", "rar"],
        ["run", "--bogus"],
        [],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert len(err.strip().splitlines()[-1]) > len("error:")


def test_help_documents_every_flag_exit_codes_and_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    assert "examples:" in text
    for code in ("0 ", "1 ", "2 ", "3 ", "129", "141"):
        assert f"\n  {code}" in EPILOG
    flags = [_flag_for(f) for f in dataclasses.fields(SupervisorConfig)]
    flags += ["--no-probe", "--max-tokens", "--token-delay", "--load-time", "--warmup-time"]
    flags += ["--engine-option", "--stdin", "--json", "--log-level", "--verbose", "--env"]
    flags += [_policy_flag_for(f.name) for f in dataclasses.fields(RestartPolicy)]
    flags += ["--serve", "--health-port", "--health-host"]
    for flag in flags:
        assert flag in text, flag


# ------------------------------------------------------------------ stdin lines


def test_parse_line_good() -> None:
    task = parse_line(
        '{"type": "Generate", "task_id": "t1", "prompt": "hi", "max_tokens": 8}',
        line=1,
        max_tokens=16,
    )
    assert task == Generate(task_id="t1", prompt="hi", max_tokens=8)
    assert parse_line('{"type": "Generate", "prompt": "x"}', line=7, max_tokens=3) == Generate(
        task_id="line-7", prompt="x", max_tokens=3
    )
    assert parse_line('{"type": "Embed", "texts": ["a", "b"]}', line=2, max_tokens=3) == Embed(
        task_id="line-2", texts=("a", "b")
    )
    assert parse_line('{"type": "Probe", "task_id": "p"}', line=2, max_tokens=3) == Probe("p")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "malformed JSON"),
        ('{"type": "Generate"', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('"Generate"', "expected a JSON object"),
        ('{"prompt": "hi"}', 'missing "type"'),
        ('{"type": "Shutdown"}', "unknown task type 'Shutdown'"),
        ('{"type": "LoadModel"}', "unknown task type"),
        ('{"type": "Generate", "prompt": 5}', "Generate.prompt must be a string"),
        ('{"type": "Generate", "max_tokens": "8"}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": true}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": 1.5}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": -1}', "max_tokens must be an int >= 0"),
        ('{"type": "Generate", "task_id": 3}', "Generate.task_id must be a string"),
        ('{"type": "Generate", "task_id": ""}', "task_id must be a non-empty string"),
        ('{"type": "Generate", "temperature": 0.1}', "unknown field(s) for Generate: temperature"),
        ('{"type": "Embed", "texts": "abc"}', "Embed.texts must be a list of strings"),
        ("[" * 100000, "malformed JSON"),
    ],
)
def test_parse_line_bad_names_the_line(text: str, needle: str) -> None:
    result = parse_line(text, line=42, max_tokens=16)
    assert isinstance(result, InputError)
    assert needle in result.error
    assert str(result).startswith("stdin line 42: ")
    assert "\n" not in str(result)


pytestmark_anyio = pytest.mark.anyio


async def _collect(fd: int, max_line: int = 100) -> list[tuple[int, str | None]]:
    return [item async for item in read_lines(fd, max_line=max_line)]


@pytestmark_anyio
async def test_read_lines_from_a_pipe() -> None:
    r, w = os.pipe()
    try:
        payload = b"first\n\n  \nthird\n" + b"x" * 250 + b"\nlast-no-newline"

        async def feed() -> None:
            # in pieces, so lines straddle reads
            for i in range(0, len(payload), 7):
                os.write(w, payload[i : i + 7])
                await anyio.sleep(0.001)
            os.close(w)

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            lines = await _collect(r)
    finally:
        os.close(r)
    assert lines == [(1, "first"), (4, "third"), (5, None), (6, "last-no-newline")]


@pytestmark_anyio
async def test_read_lines_from_a_regular_file(tmp_path: Any) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"a\nb\n" + b"y" * 300 + b"\nc\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        lines = await _collect(fd)
    finally:
        os.close(fd)
    assert lines == [(1, "a"), (2, "b"), (3, None), (4, "c")]


@pytestmark_anyio
async def test_read_lines_waits_without_blocking_the_loop() -> None:
    """An idle pipe must not stall other tasks, and the reader must be cancellable."""
    r, w = os.pipe()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    try:
        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await _collect(r)
    finally:
        os.close(r)
        os.close(w)
    assert ticks >= 10


# ------------------------------------------------------------------ JSON


def test_json_rendering_of_events() -> None:
    failed = RunnerFailed(
        reason="signalled",
        error_message="signal=9 (Killed)",
        signal=9,
        detected_by="sentinel",
        diagnostics=("a", "b"),
    )
    assert json.loads(event_json(RunnerStatusUpdated("r1", failed))) == {
        "type": "RunnerStatusUpdated",
        "runner_id": "r1",
        "status": {
            "type": "RunnerFailed",
            "reason": "signalled",
            "error_message": "signal=9 (Killed)",
            "exit_code": None,
            "signal": 9,
            "detected_by": "sentinel",
            "diagnostics": ["a", "b"],
        },
    }
    assert json.loads(event_json(RunnerStatusUpdated("r1", RunnerReady()))) == {
        "type": "RunnerStatusUpdated",
        "runner_id": "r1",
        "status": {"type": "RunnerReady"},
    }
    assert json.loads(event_json(TaskStatusUpdated("t", TaskStatus.Failed, "boom"))) == {
        "type": "TaskStatusUpdated",
        "task_id": "t",
        "status": "Failed",
        "error": "boom",
    }
    assert json.loads(event_json(ChunkGenerated("t", 3, "hé\n"))) == {
        "type": "ChunkGenerated",
        "task_id": "t",
        "index": 3,
        "text": "hé\n",
    }
    vector = struct.pack("<3f", 0.5, -1.0, 2.25)
    assert json.loads(event_json(EmbeddingGenerated("e", 0, 3, vector))) == {
        "type": "EmbeddingGenerated",
        "task_id": "e",
        "index": 0,
        "dim": 3,
        "vector": [0.5, -1.0, 2.25],
    }
    assert json.loads(event_json(LoadProgress("l", 0.5, "shard 1"))) == {
        "type": "LoadProgress",
        "task_id": "l",
        "fraction": 0.5,
        "message": "shard 1",
    }
    assert to_jsonable({"k": (1, b"")}) == {"k": [1, []]}


def test_json_output_lines() -> None:
    buf = io.StringIO()
    out = JsonOutput(buf)
    out.started(123, "r1")
    out.event(ChunkGenerated("t", 0, "x"))
    out.rejected(4, "malformed JSON: oops")
    out.finished(2, 0)
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert records == [
        {"type": "RunnerStarted", "pid": 123, "runner_id": "r1"},
        {"type": "ChunkGenerated", "task_id": "t", "index": 0, "text": "x"},
        {"type": "InputRejected", "line": 4, "error": "malformed JSON: oops"},
        {"type": "RunFinished", "exit_code": 2, "runner_exit_code": 0},
    ]


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError


def test_output_survives_a_closed_stdout() -> None:
    out = JsonOutput(_ClosedPipe())
    out.started(1, "r")
    out.event(ChunkGenerated("t", 0, "x"))
    assert out.broken


def test_human_output_streams_text_and_ends_lines() -> None:
    buf = io.StringIO()
    out = HumanOutput(buf)
    out.event(ChunkGenerated("a", 0, "one "))
    out.event(ChunkGenerated("a", 1, "two "))
    out.event(TaskStatusUpdated("a", TaskStatus.Complete))
    out.event(ChunkGenerated("b", 0, "three "))
    out.event(TaskStatusUpdated("b", TaskStatus.Failed, "x"))
    assert buf.getvalue() == "one two \nthree \n"


# ------------------------------------------------------------- the run loop


async def _tasks(*items: tuple[int | None, Any]) -> AsyncIterator[tuple[int | None, Any]]:
    for item in items:
        yield item


async def _run(*items: tuple[int | None, BaseTask | InputError], **options: Any) -> tuple[int, Any]:
    buf = io.StringIO()
    worker = WorkerRun(
        spec=RunnerSpec(engine="echo", options=options),
        config=SupervisorConfig(),
        source=_tasks(*items),
        output=JsonOutput(buf),
        handle_signals=False,
    )
    code = await worker.run()
    return code, [json.loads(line) for line in buf.getvalue().splitlines()]


def _final_statuses(records: list[dict[str, Any]]) -> dict[str, str]:
    return {
        r["task_id"]: r["status"]
        for r in records
        if r["type"] == "TaskStatusUpdated" and r["status"] != "Running"
    }


@pytestmark_anyio
async def test_worker_happy_path_exit_0() -> None:
    code, records = await _run((None, Generate("g1", "a b", 3)), (None, Generate("g2", "c", 2)))
    assert code == EXIT_OK
    assert records[0]["type"] == "RunnerStarted"
    assert records[-1] == {"type": "RunFinished", "exit_code": 0, "runner_exit_code": 0}
    finals = _final_statuses(records)
    assert finals["g1"] == finals["g2"] == "Complete"
    # the supervisor loads and warms up the runner itself, under ids of its own
    rid = records[0]["runner_id"]
    assert finals[f"{rid}:load:1"] == finals[f"{rid}:warmup:1"] == "Complete"
    text = "".join(r["text"] for r in records if r["type"] == "ChunkGenerated")
    assert text == "a b a c c "


@pytestmark_anyio
async def test_worker_task_failed_on_its_own_is_3_and_bad_input_is_2() -> None:
    code, records = await _run((None, Embed("e", ("x",))), (None, Generate("g", "ok", 1)))
    assert code == EXIT_TASK_FAILED
    assert _final_statuses(records)["e"] == "Failed"
    assert _final_statuses(records)["g"] == "Complete"

    code, records = await _run(
        (2, InputError(2, "malformed JSON: x")),
        (3, Generate("g", "ok", 1)),
        (4, Generate("g", "duplicate", 1)),
    )
    assert code == EXIT_BAD_INPUT
    rejected = [r for r in records if r["type"] == "InputRejected"]
    assert [r["line"] for r in rejected] == [2, 4]
    assert "already in use" in rejected[1]["error"]
    assert _final_statuses(records)["g"] == "Complete"


@pytestmark_anyio
async def test_worker_runner_failure_is_1_even_with_bad_input() -> None:
    code, records = await _run_crashing(
        (1, InputError(1, "bad")), (2, Generate("g", "x", 5)), (3, Generate("never", "y", 1))
    )
    assert code == EXIT_RUNNER_FAILED
    assert len(_failures(records)) == 1
    assert _failures(records)[0]["reason"] == "exited"
    assert _final_statuses(records)["g"] == "Failed"
    assert "never" not in _final_statuses(records)
    # without restarts the RunnerFailed is the last word about the runner
    assert "SupervisorGaveUp" not in {r["type"] for r in records}
    assert records[-1]["exit_code"] == 1


def _failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r["status"]
        for r in records
        if r["type"] == "RunnerStatusUpdated" and r["status"]["type"] == "RunnerFailed"
    ]


async def _run_crashing(
    *items: tuple[int | None, BaseTask | InputError],
    policy: RestartPolicy | None = None,
    output: Any = None,
) -> tuple[int, Any]:
    """A runner that dies after 2 tokens of ordinary traffic (each incarnation)."""
    buf = io.StringIO()
    worker = WorkerRun(
        spec=RunnerSpec(engine="echo", runner_id="r1", env={"EXO_RUNNER_MUST_DIE": "2"}),
        config=SupervisorConfig(chaos=True),
        source=_tasks(*items),
        output=output or JsonOutput(buf),
        handle_signals=False,
        policy=policy or RestartPolicy(mode="never"),
    )
    code = await worker.run()
    return code, [json.loads(line) for line in buf.getvalue().splitlines()]


@pytestmark_anyio
async def test_worker_recovers_by_restart_and_counts_the_failed_task_as_3() -> None:
    policy = RestartPolicy(mode="on-failure", backoff_base=0)
    code, records = await _run_crashing(
        (None, Generate("dies", "x", 5)), (None, Generate("after", "y", 1)), policy=policy
    )
    assert code == EXIT_TASK_FAILED  # a failure the policy recovered from is the task's
    started = [r for r in records if r["type"] == "RunnerStarted"]
    assert len(started) == 2
    assert started[0]["pid"] != started[1]["pid"]
    assert len(_failures(records)) == 1
    assert [r["incarnation"] for r in records if r["type"] == "RunnerRestarting"] == [2]
    # the second runner is announced where its events begin: right after the restart notice
    types = [r["type"] for r in records]
    assert types[types.index("RunnerRestarting") + 1] == "RunnerStarted"
    finals = _final_statuses(records)
    assert finals["dies"] == "Failed"
    assert finals["after"] == finals["r1:load:2"] == finals["r1:warmup:2"] == "Complete"


@pytestmark_anyio
async def test_worker_giving_up_is_1_and_announced() -> None:
    policy = RestartPolicy(mode="on-failure", max_restarts=0)
    code, records = await _run_crashing((None, Generate("dies", "x", 5)), policy=policy)
    assert code == EXIT_RUNNER_FAILED
    (gave_up,) = [r for r in records if r["type"] == "SupervisorGaveUp"]
    assert gave_up["restarts"] == 0
    assert gave_up["last_failure"]["reason"] == "exited"


@pytestmark_anyio
async def test_a_task_that_finds_no_ready_runner_in_time_fails_and_the_run_goes_on() -> None:
    buf = io.StringIO()
    worker = WorkerRun(
        spec=RunnerSpec(engine="echo", options={"load_time": 1.5}),
        config=SupervisorConfig(),
        source=_tasks((None, Generate("early", "x", 1))),
        output=JsonOutput(buf),
        policy=RestartPolicy(mode="never", ready_wait=0.2),
        handle_signals=False,
    )
    assert await worker.run() == EXIT_TASK_FAILED
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    (early,) = [r for r in records if r.get("task_id") == "early"]
    assert early["status"] == "Failed"
    assert early["error"].startswith("not run: ")
    assert _failures(records) == []
    assert records[-1] == {"type": "RunFinished", "exit_code": 3, "runner_exit_code": 0}


@pytestmark_anyio
async def test_human_output_logs_a_runner_failure_once() -> None:
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m).rstrip("\n")), format="{message}")
    try:
        code, _ = await _run_crashing(
            (None, Generate("dies", "x", 5)), output=HumanOutput(io.StringIO())
        )
    finally:
        logger.remove(sink)
    assert code == EXIT_RUNNER_FAILED
    announced = [m for m in messages if re.match(r"runner r1\b.*\bfail", m, re.IGNORECASE)]
    assert len(announced) == 1, messages
    assert "exitcode=1" in announced[0]
    # ... followed by the evidence: the runner's last output
    assert any(m.startswith("  | ") and "chaos triggers are ENABLED" in m for m in messages)


def test_python_dash_m_supervisor_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", "--json", "--max-tokens", "2", "hi there"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0]["type"] == "RunnerStarted"
    assert [r["text"] for r in records if r["type"] == "ChunkGenerated"] == ["hi ", "there "]
    assert records[-1]["type"] == "RunFinished"


def test_embedding_engines_get_one_embed_task_for_the_prompts() -> None:
    from supervisor.cli.app import embeds_only

    assert embeds_only("minilm")  # no torch import needed to know
    assert not embeds_only("echo")
    assert not embeds_only("no.such.module:Engine")
