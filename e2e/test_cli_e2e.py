"""The CLI as a black box: real subprocesses, real signals, JSON events only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import PROMPT_EXIT, Cli, pid_gone, wait_gone

pytestmark = pytest.mark.slow

StartCli = Callable[..., Cli]

#: A generation that runs for minutes unless something stops it.
LONG = ("--token-delay", "0.05", "--max-tokens", "100000", "a long generation")


def _assert_one_failure(c: Cli, reason: str) -> dict[str, Any]:
    failures = c.failures()
    assert len(failures) == 1, failures
    failed = failures[0]
    assert failed["reason"] == reason, failed
    # every task the runner had is answered, the in-flight one with Failed
    assert c.final_statuses()["prompt-1"] == ["Failed"]
    assert c.records[-1]["type"] == "RunFinished"
    assert c.records[-1]["exit_code"] == 1
    return failed


def test_happy_path_json_events_and_exit_0(cli: StartCli) -> None:
    c = cli("--token-delay", "0.001", "--max-tokens", "3", "one two", "three")
    assert c.wait() == 0
    records = c.records
    assert records[0]["type"] == "RunnerStarted"
    assert isinstance(records[0]["pid"], int)
    assert records[0]["runner_id"]
    assert records[-1] == {"type": "RunFinished", "exit_code": 0, "runner_exit_code": 0}
    assert {r["type"] for r in records} == {
        "RunnerStarted",
        "RunnerStatusUpdated",
        "TaskAcknowledged",
        "TaskStatusUpdated",
        "ChunkGenerated",
        "RunFinished",
    }
    assert c.runner_statuses() == [
        "RunnerIdle",
        "RunnerLoading",
        "RunnerLoaded",
        "RunnerWarmingUp",
        "RunnerReady",
        "RunnerRunning",
        "RunnerReady",
        "RunnerRunning",
        "RunnerReady",
        "RunnerShuttingDown",
        "RunnerShutdown",
    ]
    finals = c.final_statuses()
    rid = records[0]["runner_id"]
    for task_id in (f"{rid}:load:1", f"{rid}:warmup:1", "prompt-1", "prompt-2"):
        assert finals[task_id] == ["Complete"]
    chunks = c.of("ChunkGenerated")
    assert [(r["task_id"], r["index"], r["text"]) for r in chunks] == [
        ("prompt-1", 0, "one "),
        ("prompt-1", 1, "two "),
        ("prompt-1", 2, "one "),
        ("prompt-2", 0, "three "),
        ("prompt-2", 1, "three "),
        ("prompt-2", 2, "three "),
    ]
    assert pid_gone(records[0]["pid"])


def test_kill_9_the_runner_is_one_signalled_failure_and_exit_1(cli: StartCli) -> None:
    c = cli(*LONG)
    pid = c.runner_pid
    c.wait_chunk()
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    assert c.wait(PROMPT_EXIT) == 1
    exited_after = time.monotonic() - killed_at
    failed = _assert_one_failure(c, "signalled")
    assert failed["signal"] == 9
    assert failed["exit_code"] is None
    assert "signal=9" in failed["error_message"]
    assert failed["detected_by"] in ("sentinel", "channel", "poll")
    # the kill is seen at once; the CLI then only shuts down its own loop
    assert exited_after < 5.0, exited_after
    assert c.records[-1]["runner_exit_code"] == -9


def test_sigstop_the_runner_is_unresponsive_and_exit_1(cli: StartCli) -> None:
    c = cli(*LONG)
    pid = c.runner_pid
    c.wait_chunk()
    os.kill(pid, signal.SIGSTOP)
    try:
        assert c.wait(PROMPT_EXIT) == 1
    finally:
        if not pid_gone(pid):
            os.kill(pid, signal.SIGCONT)
    failed = _assert_one_failure(c, "unresponsive")
    assert failed["detected_by"] == "heartbeat"
    assert pid_gone(pid)


def test_sigkill_the_cli_takes_the_runner_down_within_1s(cli: StartCli) -> None:
    c = cli(*LONG)
    pid = c.runner_pid
    c.wait_chunk()
    c.note_tree()
    tree = sorted(c.seen)
    killed_at = c.signal(signal.SIGKILL)
    assert wait_gone([pid], 1.0) == [], "runner outlived its CLI by more than 1 s"
    gone_after = time.monotonic() - killed_at
    assert gone_after <= 1.0
    assert wait_gone(tree, 5.0) == []
    assert c.wait() == -signal.SIGKILL


@pytest.mark.parametrize(
    ("trigger", "reason", "extra"),
    [
        ("DIE", "exited", ()),
        ("FAIL", "crashed", ()),
        ("SEGFAULT", "signalled", ()),
        ("FREEZE", "unresponsive", ()),
        ("HANG", "stalled", ("--decode-timeout", "1")),
        ("OOM", "crashed", ("--env", "EXO_RUNNER_OOM_CAP_MB=256")),
    ],
)
def test_each_chaos_trigger(
    cli: StartCli, trigger: str, reason: str, extra: tuple[str, ...]
) -> None:
    c = cli(
        "--chaos",
        "--token-delay",
        "0.01",
        "--max-tokens",
        "100",
        *extra,
        f"go EXO RUNNER MUST {trigger}",
    )
    assert c.wait(PROMPT_EXIT + 10) == 1
    failed = _assert_one_failure(c, reason)
    assert len([r for r in c.of("ChunkGenerated") if r["task_id"] == "prompt-1"]) >= 1
    diagnostics = "\n".join(failed["diagnostics"])
    if trigger == "DIE":
        assert failed["exit_code"] == 1
    elif trigger == "FAIL":
        assert "Traceback (most recent call last):" in failed["diagnostics"]
        assert "ChaosError" in diagnostics
    elif trigger == "SEGFAULT":
        assert failed["signal"] == 11
        assert "Fatal Python error: Segmentation fault" in failed["diagnostics"]
    elif trigger == "FREEZE":
        assert failed["detected_by"] == "heartbeat"
    elif trigger == "HANG":
        assert failed["detected_by"] == "progress"
    elif trigger == "OOM":
        assert "MemoryError" in diagnostics


def test_must_die_env_with_unmodified_traffic(cli: StartCli) -> None:
    c = cli("--chaos", "--max-tokens", "4", "plain", "text", env={"EXO_RUNNER_MUST_DIE": "6"})
    assert c.wait() == 1
    assert c.final_statuses()["prompt-1"] == ["Complete"]
    assert c.final_statuses()["prompt-2"] == ["Failed"]
    assert len([r for r in c.of("ChunkGenerated") if r["task_id"] == "prompt-2"]) == 2
    [failed] = c.failures()
    assert failed["reason"] == "exited"


def test_triggers_are_text_without_chaos(cli: StartCli) -> None:
    c = cli("--max-tokens", "5", "EXO RUNNER MUST DIE")
    assert c.wait() == 0
    assert c.failures() == []
    assert "".join(r["text"] for r in c.of("ChunkGenerated")) == "EXO RUNNER MUST DIE EXO "


def test_stdin_malformed_line_is_named_and_others_complete(cli: StartCli) -> None:
    lines = [
        json.dumps({"type": "Generate", "task_id": "t1", "prompt": "first", "max_tokens": 2}),
        '{"type": "Generate", "prompt": ',
        json.dumps({"type": "Generate", "prompt": 3}),
        json.dumps({"type": "Teleport"}),
        json.dumps({"type": "Generate", "prompt": "last"}),
    ]
    c = cli("--stdin", "--max-tokens", "1", stdin="\n".join(lines).encode() + b"\n")
    assert c.wait() == 2
    rejected = c.of("InputRejected")
    assert [r["line"] for r in rejected] == [2, 3, 4]
    assert "malformed JSON" in rejected[0]["error"]
    assert "Generate.prompt must be a string" in rejected[1]["error"]
    assert "unknown task type 'Teleport'" in rejected[2]["error"]
    finals = c.final_statuses()
    assert finals["t1"] == ["Complete"]
    assert finals["line-5"] == ["Complete"]
    assert [r["text"] for r in c.of("ChunkGenerated")] == ["first ", "first ", "last "]
    assert c.failures() == []
    # the one-line error on stderr names the line (a contract for scripts, not a log line)
    errors = [ln for ln in c.stderr().splitlines() if ln.startswith("runner-supervisor: error:")]
    assert len(errors) == 3
    assert errors[0].startswith("runner-supervisor: error: stdin line 2: malformed JSON")


def test_stdin_runner_failure_wins_over_bad_input(cli: StartCli) -> None:
    lines = [
        "not json",
        json.dumps({"type": "Generate", "prompt": "EXO RUNNER MUST DIE", "max_tokens": 5}),
        json.dumps({"type": "Generate", "prompt": "never served"}),
    ]
    c = cli("--chaos", "--stdin", stdin="\n".join(lines).encode())
    assert c.wait() == 1
    assert [r["line"] for r in c.of("InputRejected")] == [1]
    assert c.final_statuses()["line-2"] == ["Failed"]
    assert "line-3" not in c.final_statuses()
    assert len(c.failures()) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_signal_to_the_cli_shuts_down_cleanly(cli: StartCli, signum: int) -> None:
    c = cli(*LONG)
    pid = c.runner_pid
    c.wait_chunk()
    c.signal(signum)
    assert c.wait() == 128 + signum
    assert c.failures() == []
    assert c.runner_statuses()[-2:] == ["RunnerShuttingDown", "RunnerShutdown"]
    # the in-flight generation is stopped at a token boundary, not failed
    assert c.final_statuses()["prompt-1"] == ["Cancelled"]
    assert c.records[-1] == {
        "type": "RunFinished",
        "exit_code": 128 + signum,
        "runner_exit_code": 0,
    }
    assert pid_gone(pid)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "runner-supervisor"
    assert script.exists(), "pip install -e . should install the runner-supervisor script"
    proc = subprocess.run(
        [str(script), "run", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout
