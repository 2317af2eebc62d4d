"""Health endpoints (h11 over anyio) and Prometheus metrics, with real runners."""

from __future__ import annotations

import os
import signal
import socket
import time

import anyio
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import RestartPolicy, RunnerSpec, SupervisorGaveUp, SupervisorMetrics, serve_health
from supervisor.protocol import (
    Generate,
    RunnerFailed,
    RunnerStatusUpdated,
    TaskStatus,
)
from tests.support.restart_harness import http_request, restarting

pytestmark = pytest.mark.anyio


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_readyz_flips_to_503_when_the_failure_is_emitted_and_back_after_restart() -> None:
    spec = RunnerSpec(engine="echo", options={"load_time": 0.3})
    policy = RestartPolicy(backoff_base=0.5, jitter=0.0)
    metrics = SupervisorMetrics()
    async with restarting(spec, policy=policy, observers=[metrics]) as r:
        metrics.watch_live(r.sup)
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, r.sup, "127.0.0.1", 0, metrics)
            early = await http_request(port, "/readyz")
            assert early.status == 503  # still loading
            assert int(early.headers["retry-after"]) >= 1
            await r.ready()
            ok = await http_request(port, "/readyz")
            assert (ok.status, ok.body) == (200, b"ready\nr1 ready\n")

            # Kill, and probe in the very step the host receives RunnerFailed.
            seen_failure = anyio.Event()
            at_failure: list[int] = []

            async def probe_at_failure() -> None:
                while not r.rec.failures():
                    await r.rec.changed.wait()
                at_failure.append((await http_request(port, "/readyz")).status)
                seen_failure.set()

            tg.start_soon(probe_at_failure)
            await anyio.sleep(0.05)
            os.kill(r.sup.pid or 0, signal.SIGKILL)
            with anyio.fail_after(10):
                await seen_failure.wait()
            assert at_failure == [503]
            during = await http_request(port, "/readyz")
            assert during.status == 503
            assert b"r1 restarting" in during.body
            assert 1 <= int(during.headers["retry-after"]) <= 3  # backoff 0.5 s + margin
            live = await http_request(port, "/healthz")
            assert live.status == 200  # restarting is alive

            await r.ready(count=2)
            back = await http_request(port, "/readyz")
            assert back.status == 200
            tg.cancel_scope.cancel()


async def test_methods_paths_keepalive_and_bad_requests() -> None:
    async with restarting() as r:
        await r.ready()
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, r.sup)
            for path in ("/healthz", "/readyz", "/metrics"):
                get = await http_request(port, path)
                head = await http_request(port, path, method="HEAD")
                assert get.status == head.status == 200, path
                assert head.body == b""
                assert head.headers["content-length"] == get.headers["content-length"] or (
                    path == "/metrics"  # metrics change between two scrapes
                )
                post = await http_request(port, path, method="POST")
                assert post.status == 405
                assert post.headers["allow"] == "GET, HEAD"
            assert (await http_request(port, "/nope")).status == 404
            assert (await http_request(port, "/readyz?verbose=1")).status == 200

            # Two requests on one keep-alive connection, then garbage on another.
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                await s.send(req + req)
                data = b""
                with anyio.fail_after(5):
                    while data.count(b"HTTP/1.1 200") < 2:
                        data += await s.receive()
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(b"\x00\x01 garbage\r\n\r\n")
                with anyio.fail_after(5):
                    reply = await s.receive()
                assert reply.startswith(b"HTTP/1.1 400")
                assert b"Traceback" not in reply
            # The server survived all of that.
            assert (await http_request(port, "/healthz")).status == 200
            tg.cancel_scope.cancel()


async def test_kubernetes_probe_defaults_answer_well_within_one_second() -> None:
    """periodSeconds=10, timeoutSeconds=1, failureThreshold=3: each probe is a new
    connection that must be answered in under 1 s, even while runners stream."""
    async with restarting(RunnerSpec(engine="echo", options={"token_delay": 0.0005})) as r:
        await r.ready()
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, r.sup)
            await r.sup.start_task(Generate(task_id="g", prompt="busy loop", max_tokens=3000))
            worst = 0.0
            for _ in range(20):
                for path in ("/healthz", "/readyz"):
                    t0 = time.monotonic()
                    with anyio.fail_after(1.0):  # the kubelet's timeoutSeconds
                        resp = await http_request(port, path)
                    worst = max(worst, time.monotonic() - t0)
                    assert resp.status == 200
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete], within=30)
    print(f"worst probe round trip while streaming: {worst * 1000:.1f} ms")


async def test_metrics_parse_and_count_failures_restarts_latency_and_tasks() -> None:
    metrics = SupervisorMetrics()
    async with restarting(observers=[metrics]) as r:
        metrics.watch_live(r.sup)
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=2))
        await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete])
        await anyio.sleep(1.2)  # one resource poll for RSS
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, r.sup, "127.0.0.1", 0, metrics)
            os.kill(r.sup.pid or 0, signal.SIGKILL)
            await r.ready(count=2)
            await anyio.sleep(1.2)
            resp = await http_request(port, "/metrics")
            tg.cancel_scope.cancel()
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    s = _samples(resp.body.decode())
    rid = (("runner_id", "r1"),)
    failure = r.rec.failures()[0]
    assert (
        s[
            (
                "runner_supervisor_failures_total",
                (
                    ("detected_by", failure.detected_by),
                    ("reason", "signalled"),
                    ("runner_id", "r1"),
                ),
            )
        ]
        == 1.0
    )
    assert s[("runner_supervisor_restarts_total", rid)] == 1.0
    assert s[("runner_supervisor_tasks_total", (("runner_id", "r1"), ("status", "Complete")))] == 1
    latency_count = s[
        (
            "runner_supervisor_detection_latency_seconds_count",
            (("detected_by", failure.detected_by),),
        )
    ]
    latency_sum = s[
        ("runner_supervisor_detection_latency_seconds_sum", (("detected_by", failure.detected_by),))
    ]
    assert latency_count == 1.0
    assert 0 <= latency_sum < 1.0  # event driven: milliseconds, generous on a busy machine
    print(f"detection latency (pidfd exit -> RunnerFailed): {latency_sum * 1000:.2f} ms")
    assert s[("runner_supervisor_ready", rid)] == 1.0
    assert s[("runner_supervisor_incarnation", rid)] == 2.0
    assert s[("runner_supervisor_phase", (("phase", "ready"), ("runner_id", "r1")))] == 1.0
    assert s[("runner_supervisor_rss_bytes", rid)] > 1_000_000
    assert s[("runner_supervisor_descendants", rid)] == 0  # the echo engine starts none
    assert s[("runner_supervisor_containment", (("layer", "keeper"), ("runner_id", "r1")))] == 1
    assert 0 <= s[("runner_supervisor_heartbeat_age_seconds", rid)] < 5
    assert (
        s[("runner_supervisor_tasks_in_flight", (("runner_id", "r1"), ("state", "pending")))] == 0
    )


async def test_healthz_fails_only_once_the_policy_gave_up() -> None:
    policy = RestartPolicy(backoff_base=0.0, max_restarts=0)
    async with restarting(policy=policy) as r:
        await r.ready()
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, r.sup)
            assert (await http_request(port, "/healthz")).status == 200
            os.kill(r.sup.pid or 0, signal.SIGKILL)
            await r.rec.wait_for(lambda: bool(r.rec.of(SupervisorGaveUp)))
            live = await http_request(port, "/healthz")
            ready = await http_request(port, "/readyz")
            tg.cancel_scope.cancel()
    assert live.status == 503
    assert live.body == b"r1 gave up: gave up after 0 restarts in 60 s\n"
    assert ready.status == 503
    assert "retry-after" not in ready.headers  # it will not come back by itself
    for body in (live.body, ready.body):
        assert b"Traceback" not in body
    statuses = [e.status for e in r.rec.of(RunnerStatusUpdated)]
    assert sum(isinstance(s, RunnerFailed) for s in statuses) == 1
    assert r.rec.ready_count() == 1


async def test_binds_loopback_by_default() -> None:
    async with restarting() as r, anyio.create_task_group() as tg:
        port = await tg.start(serve_health, r.sup)
        # Reachable on 127.0.0.1 ...
        assert (await http_request(port, "/healthz")).status == 200
        # ... and not on the machine's other addresses.
        others = {
            a.address
            for addrs in psutil.net_if_addrs().values()
            for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        }
        for addr in others:
            with pytest.raises(OSError, match=r"(?i)connect|refused"):
                await http_request(port, "/healthz", host=addr)
        tg.cancel_scope.cancel()
