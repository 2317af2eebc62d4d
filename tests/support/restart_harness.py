"""Runs a `RestartingSupervisor` in a task group and records its events; an HTTP probe."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import h11
import psutil

from supervisor import (
    RestartingSupervisor,
    RestartPolicy,
    RunnerNode,
    RunnerRestarting,
    RunnerSpec,
    SupervisorConfig,
)
from supervisor.protocol import BaseEvent
from tests.support.recorder import Recorder, hosted


def ready_count(rec: Recorder, runner_id: str | None = None) -> int:
    return rec.ready_count(runner_id)


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


@asynccontextmanager
async def running_node(**node_kwargs: Any) -> AsyncIterator[tuple[RunnerNode, Recorder]]:
    """A `RunnerNode` run in a task group, its events recorded; shut down on exit."""
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    node_kwargs.setdefault("policy", RestartPolicy(backoff_base=0.0))
    node = RunnerNode(event_sender=send, **node_kwargs)
    rec = Recorder()

    async def run_and_close() -> None:
        async with send:
            await node.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.consume, recv)
        tg.start_soon(run_and_close)
        try:
            yield node, rec
            node.shutdown()
            with anyio.fail_after(60):
                for runner in list(node.runners.values()):
                    await runner.wait_finished()
        finally:
            if any(not r.finished for r in node.runners.values()):
                tg.cancel_scope.cancel()


def served_by(rec: Recorder, task_id: str) -> int:
    """The pid a `PidEngine` runner streamed as ``task_id``'s first token."""
    chunks = rec.chunks(task_id)
    assert chunks, f"no chunks for {task_id}"
    return int(chunks[0].text)


def restarts_of(rec: Recorder, runner_id: str) -> list[RunnerRestarting]:
    return [e for e in rec.of(RunnerRestarting) if e.runner_id == runner_id]


def pid_gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pids: list[int], within: float) -> None:
    """Poll (every 5 ms) until every one of ``pids`` has exited."""
    with anyio.fail_after(within):
        for _ in iter(int, 1):  # until the deadline
            if all(pid_gone(pid) for pid in pids):
                return
            await anyio.sleep(0.005)


async def poll_until(pred: Callable[[], bool], within: float = 10.0) -> None:
    """Poll (every 5 ms) until ``pred()``: for facts no event announces, such as a task
    written to the runner's pipe but not acknowledged (``sup.pending``)."""
    with anyio.fail_after(within):
        for _ in iter(int, 1):  # until the deadline
            if pred():
                return
            await anyio.sleep(0.005)
