"""sd_notify over a real unix datagram socket, as systemd would listen."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from supervisor import RestartPolicy, run_sd_notify
from supervisor.ops.sdnotify import SdNotifier, notify_address, watchdog_interval
from tests.support.restart_harness import restarting

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["path", "abstract"])
def systemd_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value pointing at it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        value = path
    else:
        name = f"runner-supervisor-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        value = "@" + name
    sock.setblocking(False)
    with sock:
        yield sock, value


class Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[tuple[float, list[str]]] = []
        self.changed = anyio.Event()

    async def collect(self) -> None:
        while True:
            await anyio.wait_readable(self.sock)
            data = self.sock.recv(4096)
            self.messages.append((time.monotonic(), data.decode().split("\n")))
            self.changed.set()
            self.changed = anyio.Event()

    async def wait_for(self, prefix: str, within: float) -> None:
        with anyio.fail_after(within):
            while not self.lines(prefix):
                await self.changed.wait()

    def lines(self, prefix: str) -> list[float]:
        return [t for t, lines in self.messages for line in lines if line.startswith(prefix)]

    def statuses(self) -> list[str]:
        return [line for _, lines in self.messages for line in lines if line.startswith("STATUS=")]


def test_environment_parsing() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abc"}) == "\0abc"
    assert notify_address({"NOTIFY_SOCKET": "relative"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_sending_to_a_missing_socket_does_not_raise(tmp_path: Path) -> None:
    with SdNotifier(str(tmp_path / "absent.sock")) as n:
        assert n.notify("READY=1") is False


async def test_ready_status_watchdog_and_stopping(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, value = systemd_socket
    env = {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    listener = Listener(sock)
    async with (
        restarting(policy=RestartPolicy(backoff_base=0.0)) as r,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.collect)
        async with anyio.create_task_group() as notify_tg:
            notify_tg.start_soon(lambda: run_sd_notify(r.sup, env=env, check_interval=0.05))
            await r.ready()
            await listener.wait_for("READY=1", within=10)
            os.kill(r.sup.pid or 0, signal.SIGKILL)
            await r.ready(count=2)
            await anyio.sleep(1.0)
            notify_tg.cancel_scope.cancel()
        await listener.wait_for("STOPPING=1", within=5)
        tg.cancel_scope.cancel()
    assert len(listener.lines("READY=1")) == 1  # once, even after the restart
    pings = listener.lines("WATCHDOG=1")
    assert len(pings) >= 5
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # systemd kills at WATCHDOG_USEC (0.4 s) without a ping; generous for a busy machine.
    assert max(gaps) < 0.4, gaps
    statuses = listener.statuses()
    assert "STATUS=r1: ready" in statuses
    # With zero backoff the restart itself is instantaneous: the next status seen is
    # the new incarnation starting up, already counting the restart.
    i = statuses.index("STATUS=r1: ready")
    assert any(s.endswith("(restarts 1)") and "ready" not in s for s in statuses[i:])
    assert statuses[-1] == "STATUS=r1: ready (restarts 1)"


async def test_no_notify_socket_means_nothing_to_do() -> None:
    async with restarting() as r:
        with anyio.fail_after(1):
            await run_sd_notify(r.sup, env={})
