"""Runs a `RestartingSupervisor` in a task group and records its events; an HTTP probe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import h11

from supervisor import RestartingSupervisor, RestartPolicy, RunnerSpec, SupervisorConfig
from tests.support.recorder import Recorder, hosted


@dataclass
class Restarting:
    sup: RestartingSupervisor
    rec: Recorder

    async def ready(self, count: int = 1, within: float = 30.0) -> None:
        """Wait until ``count`` incarnations have reached Ready (RunnerReady events)."""
        await self.rec.wait_for(lambda: self.rec.ready_count() >= count, within=within)


@asynccontextmanager
async def restarting(
    spec: RunnerSpec | None = None,
    policy: RestartPolicy | None = None,
    config: SupervisorConfig | None = None,
    **kwargs: Any,
) -> AsyncIterator[Restarting]:
    """Run a restarting supervisor ("r1") in a task group; on exit, stop it and wait."""
    async with hosted(
        lambda send: RestartingSupervisor(
            spec=spec or RunnerSpec(engine="echo"),
            event_sender=send,
            config=config,
            policy=policy or RestartPolicy(backoff_base=0.0),
            runner_id="r1",
            **kwargs,
        ),
        stop_within=20,
    ) as (sup, rec):
        yield Restarting(sup, rec)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def http_request(
    port: int, target: str, method: str = "GET", host: str = "127.0.0.1"
) -> HttpResponse:
    """One HTTP/1.1 request with h11 as the client, like a kubelet probe (new connection)."""
    async with await anyio.connect_tcp(host, port) as stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method=method, target=target, headers=[("host", "localhost"), ("connection", "close")]
        )
        await stream.send((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    conn.receive_data(b"")
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return HttpResponse(status, headers, body)
