"""Black-box harness: run ``runner-supervisor`` as a subprocess and read its JSON lines."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from tests.support.leaks import no_leaks, running

__all__ = ["no_leaks"]  # the autouse leak check, shared with tests/

REPO = Path(__file__).resolve().parents[1]

#: Bounds for a 2-core machine shared with other test runs: generous, never tight.
PROMPT_EXIT = 15.0


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting for its reaper)."""
    return not running(pid)


def wait_gone(pids: Sequence[int], within: float) -> list[int]:
    """Wait up to ``within`` s for every pid to be gone; the ones still running."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in pids if not pid_gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # A CI job run under systemd must not turn every CLI into a notifying service.
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra)
    return env


class Cli:
    """One ``python -m supervisor run --json ...`` process and the records it printed."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None,
        env: dict[str, str],
        hold_stdin: bool = False,
    ) -> None:
        self.args = list(args)
        # A file, not a pipe: nobody has to drain it while the test waits. Closed in close().
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run", "--json", *args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO,
            env=_child_env(env),
        )
        self.records: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self.seen: set[int] = set()  # every pid of the CLI's tree we saw (for the tests)
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="e2e-cli-reader", daemon=True)
        self._reader.start()
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            if hold_stdin:  # a service: input never ends, only a signal stops it
                self.proc.stdin.flush()
            else:
                self.proc.stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                try:
                    record = json.loads(line)
                    assert isinstance(record, dict)
                except (ValueError, AssertionError):
                    self.bad_lines.append(line)
                else:
                    self.records.append(record)
                    if record.get("type") == "RunnerStarted":
                        self.seen.add(record["pid"])
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # --------------------------------------------------------------- reading
    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], within: float) -> None:
        deadline = time.monotonic() + within
        with self._cond:
            while not pred(self.records):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"condition not met within {within}s; records: {self.records[-8:]}; "
                        f"stderr: {self.stderr()[-2000:]}"
                    )
                self._cond.wait(min(left, 0.1))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r["type"] == kind]

    @property
    def runner_pid(self) -> int:
        self.wait_for(lambda rs: any(r["type"] == "RunnerStarted" for r in rs), PROMPT_EXIT)
        return int(self.of("RunnerStarted")[0]["pid"])

    def wait_chunk(self, task_id: str = "prompt-1", within: float = PROMPT_EXIT) -> None:
        self.wait_for(
            lambda rs: any(r["type"] == "ChunkGenerated" and r["task_id"] == task_id for r in rs),
            within,
        )

    def failures(self) -> list[dict[str, Any]]:
        return [
            r["status"]
            for r in self.of("RunnerStatusUpdated")
            if r["status"]["type"] == "RunnerFailed"
        ]

    def runner_statuses(self) -> list[str]:
        return [r["status"]["type"] for r in self.of("RunnerStatusUpdated")]

    def final_statuses(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.of("TaskStatusUpdated"):
            if r["status"] != "Running":
                out.setdefault(r["task_id"], []).append(r["status"])
        return out

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def note_tree(self) -> None:
        """Remember the CLI's descendants (runner, multiprocessing helpers)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.seen.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))

    # --------------------------------------------------------------- ending
    def signal(self, signum: int) -> float:
        self.note_tree()
        os.kill(self.proc.pid, signum)
        return time.monotonic()

    def wait(self, within: float = PROMPT_EXIT) -> int:
        """The CLI's exit code, after its output was read to the end."""
        self.note_tree()
        code = self.proc.wait(within)
        self._reader.join(within)
        assert not self._reader.is_alive()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.note_tree()
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._stderr.close()


@pytest.fixture
def cli() -> Iterator[Callable[..., Cli]]:
    """Start CLIs with ``cli(*args, stdin=b"...", env={...})``; all of them are cleaned up."""
    started: list[Cli] = []

    def start(
        *args: str,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        hold_stdin: bool = False,
    ) -> Cli:
        c = Cli(args, stdin=stdin, env=env or {}, hold_stdin=hold_stdin)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()
    # Whatever the CLIs left running (a runner outliving its CLI is re-parented to
    # this process, see tests.support.leaks) is found and killed by `no_leaks`.
    for c in started:
        assert not c.bad_lines, f"non-JSON on stdout in --json mode: {c.bad_lines[:5]}"
