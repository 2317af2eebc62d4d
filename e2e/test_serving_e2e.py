"""The CLI as a service: restarts, health endpoints, systemd notification (black box)."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.conftest import Cli, wait_gone

pytestmark = pytest.mark.slow

StartCli = Callable[..., Cli]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        body = err.read().decode()
        headers = dict(err.headers)
        err.close()
        return err.code, headers, body


def _wait_status(port: int, path: str, code: int, within: float = 15) -> dict[str, str]:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            got, headers, _ = _get(port, path)
        except OSError as exc:
            last = exc
        else:
            last = got
            if got == code:
                return headers
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered {code}; last: {last}")


def test_restart_after_kill_9_with_health_endpoints(cli: StartCli) -> None:
    port = _free_port()
    c = _serve(cli, port)
    first = c.runner_pid
    _wait_status(port, "/readyz", 200)
    assert _get(port, "/healthz")[0] == 200
    os.kill(first, signal.SIGKILL)
    c.wait_for(lambda rs: sum(r["type"] == "RunnerStarted" for r in rs) >= 2, 15)
    second = int(c.of("RunnerStarted")[1]["pid"])
    assert second != first
    _wait_status(port, "/readyz", 200)
    code, _, body = _get(port, "/metrics")
    assert code == 200
    assert 'runner_supervisor_restarts_total{runner_id="svc"} 1.0' in body
    assert "Traceback" not in body
    assert len(c.failures()) == 1
    assert [r["incarnation"] for r in c.of("RunnerRestarting")] == [2]
    c.signal(signal.SIGTERM)
    assert c.wait(15) == 128 + signal.SIGTERM


def _serve(cli: StartCli, port: int, backoff: str = "0") -> Cli:
    # A service: stdin stays open, so the run ends by SIGTERM, not by end of input.
    return cli(
        "--restart",
        "on-failure",
        "--backoff-base",
        backoff,
        "--token-delay",
        "0.01",
        "--max-tokens",
        "100000",
        "--runner-id",
        "svc",
        "--health-port",
        str(port),
        "--stdin",
        "x",
        stdin=b"",
        hold_stdin=True,
    )


def test_readyz_is_503_with_retry_after_while_the_runner_restarts(cli: StartCli) -> None:
    port = _free_port()
    c = _serve(cli, port, backoff="1")
    pid = c.runner_pid
    _wait_status(port, "/readyz", 200)
    os.kill(pid, signal.SIGKILL)
    headers = _wait_status(port, "/readyz", 503, within=5)
    assert "Retry-After" in headers or "retry-after" in headers
    assert _get(port, "/healthz")[0] == 200  # restarting is alive, not dead
    _wait_status(port, "/readyz", 200)
    c.signal(signal.SIGTERM)
    c.wait(15)


def test_gives_up_after_the_intensity_limit_and_exits_1(cli: StartCli) -> None:
    c = cli(
        "--restart",
        "on-failure",
        "--backoff-base",
        "0",
        "--max-restarts",
        "1",
        "--restart-window",
        "60",
        "--token-delay",
        "0.01",
        "--max-tokens",
        "100000",
        "--stdin",
        "x",
        stdin=b"",
        hold_stdin=True,
    )
    for n in (1, 2):
        c.wait_for(lambda rs, n=n: sum(r["type"] == "RunnerStarted" for r in rs) >= n, 15)
        c.wait_for(
            lambda rs, n=n: (
                sum(
                    r["type"] == "RunnerStatusUpdated" and r["status"]["type"] == "RunnerReady"
                    for r in rs
                )
                >= n
            ),
            15,
        )
        os.kill(int(c.of("RunnerStarted")[n - 1]["pid"]), signal.SIGKILL)
    assert c.wait(15) == 1
    (gave_up,) = c.of("SupervisorGaveUp")
    assert gave_up["restarts"] == 1


def test_systemd_notify_ready_and_watchdog(cli: StartCli) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            sock.settimeout(15)
            c = cli(
                "--token-delay",
                "0.01",
                "--max-tokens",
                "100000",
                "--serve",  # no input at all: stays up until SIGTERM
                env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
            )
            messages: list[str] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (
                any("READY=1" in m for m in messages)
                and sum("WATCHDOG=1" in m for m in messages) >= 2
            ):
                messages.append(sock.recv(4096).decode())
            assert any("READY=1" in m for m in messages), messages
            assert sum("WATCHDOG=1" in m for m in messages) >= 2, messages
            c.signal(signal.SIGTERM)
            assert c.wait(15) == 128 + signal.SIGTERM
        finally:
            sock.close()


def test_health_port_in_use_is_a_usage_error(cli: StartCli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        c = cli("--health-port", str(port), "--serve")
        assert c.wait(15) == 2
    assert "cannot serve health endpoints" in c.stderr()


def test_sighup_in_serve_mode_replaces_the_runner_and_loses_no_task(cli: StartCli) -> None:
    c = cli(
        "--serve",
        "--restart",
        "on-failure",
        "--token-delay",
        "0.01",
        "--max-tokens",
        "200",  # ~2 s of tokens: in flight when the SIGHUP comes
        "--runner-id",
        "svc",
        "x",
    )
    first = c.runner_pid
    c.wait_chunk()
    c.signal(signal.SIGHUP)
    c.wait_for(lambda rs: sum(r["type"] == "RunnerStarted" for r in rs) >= 2, 30)
    second = int(c.of("RunnerStarted")[1]["pid"])
    assert second != first
    # the generation in flight on the old runner finished there
    c.wait_for(lambda rs: "prompt-1" in c.final_statuses(), 30)
    assert c.final_statuses()["prompt-1"] == ["Complete"]
    (restarting,) = c.of("RunnerRestarting")
    assert restarting["reason"] == "replace"
    assert wait_gone([first], 10) == []
    c.signal(signal.SIGTERM)
    assert c.wait(15) == 128 + signal.SIGTERM
    assert c.failures() == []
    assert all(s != ["Failed"] for s in c.final_statuses().values())
