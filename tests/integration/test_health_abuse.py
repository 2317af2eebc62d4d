"""The health server under hostile clients: idle floods, slowloris, clients that never
read, and runner ids with control bytes. Real sockets on 127.0.0.1; every attacker is
a bounded loop that ends by itself."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client.parser import text_string_to_metric_families

from supervisor import serve_health
from supervisor.ops.escape import printable
from supervisor.ops.health import HealthApp, HealthServer
from supervisor.ops.metrics import SupervisorMetrics
from supervisor.ops.observe import Phase, RunnerHealth, SupervisorObserver
from supervisor.protocol import RunnerFailed, TaskStatus
from tests.support.http_attack import Attack
from tests.support.restart_harness import http_request, restarting

pytestmark = pytest.mark.anyio

#: What a client sees when the server closes on it.
_DROPPED = (anyio.EndOfStream, anyio.BrokenResourceError)

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_IDS = ["\x1b[31m\r\nX", "a\ud800b", 'q"uo\\te\nr2 ready']


@dataclass
class StaticSource:
    """A `HealthSource` that reports fixed snapshots (the HTTP side is under test)."""

    snaps: Sequence[RunnerHealth]

    def health_snapshots(self) -> Sequence[RunnerHealth]:
        return self.snaps

    def add_observer(self, observer: SupervisorObserver) -> None:
        pass


def _health(runner_id: str, phase: Phase = "ready", reason: str | None = None) -> RunnerHealth:
    return RunnerHealth(
        runner_id=runner_id,
        phase=phase,
        incarnation=1,
        restarts=0,
        pid=123,
        heartbeat_age=0.1,
        rss=1 << 20,
        pending=0,
        in_progress=0,
        gave_up_reason=reason,
    )


async def eventually(pred: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while True:
            if pred():
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def health_server(
    source: StaticSource, metrics: SupervisorMetrics | None = None, **limits: float
) -> AsyncIterator[tuple[int, HealthServer]]:
    server = HealthServer(HealthApp(source, metrics), **limits)  # type: ignore[arg-type]
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        port = listener.listeners[0].extra(SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, listener)
            try:
                yield port, server
            finally:
                tg.cancel_scope.cancel()


async def _probe_rounds(port: int, rounds: int, gap: float) -> float:
    """Kubelet-style probes (a new connection each): every one answered 200 within 1 s."""
    worst = 0.0
    for _ in range(rounds):
        for path in ("/healthz", "/readyz"):
            t0 = time.monotonic()
            with anyio.fail_after(1.0):  # the kubelet's timeoutSeconds
                resp = await http_request(port, path)
            worst = max(worst, time.monotonic() - t0)
            assert resp.status == 200, (path, resp)
        await anyio.sleep(gap)
    return worst


@asynccontextmanager
async def attack_process(port: int, idle: int, slow: int, pause: float) -> AsyncIterator[Attack]:
    """Hostile clients in a process of their own, as they would come; yields their
    counts once they have stopped (the Attack is filled in on the way out)."""
    root = ROOT
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "tests.support.http_attack", str(port), str(idle), str(slow)]
    counts = Attack(until=0.0)
    async with await anyio.open_process(
        [*argv, str(pause)], cwd=root, env=env, stderr=None
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        out = BufferedByteReceiveStream(proc.stdout)
        try:
            with anyio.fail_after(30):
                assert await out.receive_until(b"\n", 1024) == b"connected"
            yield counts
        finally:
            await proc.stdin.aclose()  # the attacker stops and reports
            with anyio.fail_after(15):
                line = await out.receive_until(b"\n", 4096)
                await proc.wait()
        report = json.loads(line)
        counts.connects, counts.dropped, counts.answered = (
            report["connects"],
            report["dropped"],
            report["answered"],
        )


async def test_probes_answered_within_1s_under_200_idle_and_50_slowloris() -> None:
    async with restarting() as r:
        await r.ready()
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, r.sup)
            # Each client comes back 1 s after it is dropped: the pressure lasts.
            async with attack_process(port, idle=200, slow=50, pause=1.0) as attack:
                # 20 rounds over ~4 s: longer than the request timeout, so dropped
                # slowloris clients come back while the probes go on.
                worst = await _probe_rounds(port, rounds=20, gap=0.2)
            tg.cancel_scope.cancel()
    print(
        f"worst probe {worst * 1000:.0f} ms; attackers connected {attack.connects} times, "
        f"dropped by the server {attack.dropped} times"
    )
    assert attack.connects >= 250
    assert attack.dropped >= 250 - 64  # the server shed what it could not hold
    assert attack.answered == 0  # nobody got an answer to a request never sent


async def _dribble_until_dropped(stream: anyio.abc.SocketStream, gap: float) -> int:
    """Sends one byte of a never-ending header every ``gap`` s; the bytes sent when
    the server hung up."""
    sent = 0
    try:
        while True:
            with anyio.move_on_after(gap) as waited:
                await stream.receive()
            if not waited.cancelled_caught:
                raise AssertionError("answered a request that never finished")
            await stream.send(b"a")
            sent += 1
    except _DROPPED:
        return sent


async def test_a_slowloris_client_is_dropped_at_the_request_timeout() -> None:
    source = StaticSource([_health("r1")])
    async with health_server(source, request_timeout=0.5) as (port, server):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            t0 = time.monotonic()
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            with anyio.fail_after(10):
                sent = await _dribble_until_dropped(stream, gap=0.05)
            elapsed = time.monotonic() - t0
        # Bytes kept coming every 50 ms: the deadline is for the whole request.
        assert 0.4 <= elapsed <= 3.0, elapsed
        assert sent >= 5
        await eventually(lambda: server.connections == 0)


async def test_at_the_limit_the_longest_waiting_connection_is_evicted() -> None:
    source = StaticSource([_health("r1")])
    async with health_server(source, max_connections=3, request_timeout=30) as (port, server):
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
        try:
            await eventually(lambda: server.connections == 3)
            # A probe beyond the limit is answered; the oldest idle one paid for it.
            resp = await http_request(port, "/healthz")
            assert resp.status == 200
            with anyio.fail_after(5), pytest.raises(_DROPPED):
                await idle[0].receive()
            # Full again: the next probe takes the next oldest; the newer ones stay.
            idle.append(await anyio.connect_tcp("127.0.0.1", port))
            await eventually(lambda: server.connections == 3)
            assert (await http_request(port, "/readyz")).status == 200
            with anyio.fail_after(5), pytest.raises(_DROPPED):
                await idle[1].receive()
            for newer in idle[2:]:
                with anyio.move_on_after(0.3) as still_open:
                    await newer.receive()
                assert still_open.cancelled_caught
            assert (server.evicted, server.refused) == (2, 0)
        finally:
            for stream in idle:
                await stream.aclose()


async def test_a_client_that_never_reads_is_dropped_and_does_not_block_others() -> None:
    # Enough pipelined /metrics requests that the answers overflow both socket buffers.
    source = StaticSource([_health(f"runner-{i}") for i in range(40)])
    async with health_server(source, send_timeout=0.5) as (port, server):
        hog = await anyio.connect_tcp("127.0.0.1", port)
        async with hog:
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

            async def flood() -> None:
                with anyio.move_on_after(5):  # the server stops reading once it is stuck
                    for _ in range(400):
                        await hog.send(request * 50)

            async with anyio.create_task_group() as tg:
                tg.start_soon(flood)
                worst = await _probe_rounds(port, rounds=5, gap=0.1)
                await eventually(lambda: server.connections == 0, within=15)
                tg.cancel_scope.cancel()
        print(f"worst probe beside a client that never reads: {worst * 1000:.0f} ms")


async def test_hostile_runner_ids_are_escaped_in_every_body_and_label() -> None:
    metrics = SupervisorMetrics()
    ready = StaticSource([_health(rid) for rid in HOSTILE_IDS])
    metrics.watch_live(ready)
    for rid in HOSTILE_IDS:
        metrics.on_failure(rid, RunnerFailed(reason="crashed", error_message="x"), 0.01)
        metrics.on_restart(rid, 2, 0.5)
        metrics.on_task_finished(rid, TaskStatus.Complete)
        metrics.on_gave_up(rid, "too many failures")
    async with health_server(ready, metrics) as (port, _):
        readyz = await http_request(port, "/readyz")
        assert readyz.status == 200
        lines = readyz.body.decode("utf-8").split("\n")
        assert lines == ["ready", *(f"{printable(rid)} ready" for rid in HOSTILE_IDS), ""]
        assert b"\x1b" not in readyz.body
        assert b"\r" not in readyz.body

        scrape = await http_request(port, "/metrics")
        assert scrape.status == 200
        text = scrape.body.decode("utf-8")
        assert "\x1b" not in text
        assert "\r" not in text
        seen: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if "runner_id" in sample.labels:
                    seen.setdefault(family.name, set()).add(sample.labels["runner_id"])
        expected = {printable(rid) for rid in HOSTILE_IDS}
        for name in ("phase", "ready", "failures", "restarts", "gave_up", "tasks"):
            assert seen[f"runner_supervisor_{name}"] == expected, name

    reasons = ["gave up after \x1b[2J5 failures\r\nr9 ready", "lone \udc80 byte", "5 failures"]
    gone = StaticSource(
        [_health(rid, "gave_up", why) for rid, why in zip(HOSTILE_IDS, reasons, strict=True)]
    )
    async with health_server(gone) as (port, _):
        healthz = await http_request(port, "/healthz")
        assert healthz.status == 503
        assert healthz.body.decode("utf-8").split("\n") == [
            f"{printable(rid)} gave up: {printable(why)}"
            for rid, why in zip(HOSTILE_IDS, reasons, strict=True)
        ] + [""]
