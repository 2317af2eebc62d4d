"""Fleet operations: replacing a runner (with and without prespawn) and a one_for_all group.

Replace: an idle, Ready echo runner is replaced with ``RestartingSupervisor.replace()``;
two times per sample: until the new incarnation is Ready (the window in which new tasks
wait), and until ``replace()`` returns (the old process stopped too).

Group: a ``one_for_all`` group of 4 echo runners on a ``RunnerNode``; one member is
SIGKILLed; time until every sibling process has exited (each timed by a pidfd, the
kernel's own notice, independent of the supervisor), and until all four are Ready again.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Callable
from functools import partial

import anyio

from bench.common import Mode, progress, run_async
from bench.report import Row, Section, Stats
from supervisor import RestartingSupervisor, RestartPolicy, RunnerNode, RunnerSpec
from supervisor.protocol import BaseEvent, RunnerReady, RunnerStatusUpdated

#: The issue's bound for a group: every sibling gone within 1 s of a member's death.
SIBLINGS_TARGET = 1.0
POLICY = dict(backoff_base=0.0, jitter=0.0, max_restarts=10**6, restart_window=1.0)


class _Readies:
    """RunnerReady times per runner id, as the host receives them."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.changed = anyio.Event()

    def add(self, event: BaseEvent) -> None:
        if isinstance(event, RunnerStatusUpdated) and isinstance(event.status, RunnerReady):
            self.times.setdefault(event.runner_id, []).append(time.monotonic())
            self.changed.set()
            self.changed = anyio.Event()

    async def wait(self, ok: Callable[[], bool], within: float = 60.0) -> None:
        with anyio.fail_after(within):
            while not ok():
                await self.changed.wait()

    def count(self, runner_id: str) -> int:
        return len(self.times.get(runner_id, ()))


async def replaces(reps: int, prespawn: bool) -> tuple[list[float], list[float]]:
    """(replace start -> new Ready, replace start -> replace() returned) samples."""
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    sup = RestartingSupervisor(
        spec=RunnerSpec(engine="echo"),
        event_sender=send,
        policy=RestartPolicy(prespawn=prespawn, **POLICY),  # type: ignore[arg-type]
        runner_id="r",
    )
    readies = _Readies()
    to_ready: list[float] = []
    total: list[float] = []
    rng = random.Random(6)

    async def pump() -> None:
        async with recv:
            async for event in recv:
                readies.add(event)

    async def supervise() -> None:
        async with send:
            await sup.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        tg.start_soon(supervise)
        await readies.wait(lambda: readies.count("r") >= 1)
        for i in range(reps):
            await anyio.sleep(rng.uniform(0.1, 0.2))  # let the spare (if any) come up
            t0 = time.monotonic()
            await sup.replace()
            total.append(time.monotonic() - t0)
            # (replace() returns once Ready is seen; the host may not have read it yet)
            await readies.wait(lambda i=i: readies.count("r") >= i + 2)
            to_ready.append(readies.times["r"][i + 1] - t0)
        sup.shutdown()
        await sup.wait_finished()
    return to_ready, total


async def _exit_time(fd: int, out: list[float]) -> None:
    try:
        await anyio.wait_readable(fd)
        out.append(time.monotonic())
    finally:
        os.close(fd)


async def group_deaths(reps: int) -> tuple[list[float], list[float]]:
    """(kill -> last sibling exited, kill -> all four Ready again) samples."""
    ids = [f"rank{i}" for i in range(4)]
    stopped: list[float] = []
    back: list[float] = []
    rng = random.Random(7)
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    node = RunnerNode(event_sender=send, policy=RestartPolicy(**POLICY))  # type: ignore[arg-type]
    readies = _Readies()

    async def pump() -> None:
        async with recv:
            async for event in recv:
                readies.add(event)

    async def supervise() -> None:
        async with send:
            await node.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        tg.start_soon(supervise)
        node.add_group("g", dict.fromkeys(ids, RunnerSpec(engine="echo")))
        for i in range(reps):
            await readies.wait(lambda i=i: all(readies.count(r) >= i + 1 for r in ids))
            await anyio.sleep(rng.uniform(0.05, 0.15))
            victim = ids[i % 4]
            sibling_pids = [node[r].pid or 0 for r in ids if r != victim]
            exits: list[float] = []
            fds = [os.pidfd_open(pid) for pid in sibling_pids]  # open before the kill
            async with anyio.create_task_group() as watch:
                for fd in fds:
                    watch.start_soon(_exit_time, fd, exits)
                t0 = time.monotonic()
                os.kill(node[victim].pid or 0, signal.SIGKILL)
            stopped.append(max(exits) - t0)
            await readies.wait(lambda i=i: all(readies.count(r) >= i + 2 for r in ids))
            back.append(max(readies.times[r][i + 1] for r in ids) - t0)
        node.shutdown()
        for runner in node.runners.values():
            await runner.wait_finished()
    return stopped, back


def run(mode: Mode) -> Section:
    reps = mode.pick(8, 30)
    s = Section("Fleet: replace and groups")
    for prespawn in (False, True):
        label = "ours, prespawn" if prespawn else "ours, no prespawn"
        progress(f"fleet: {reps} replacements, {label}")
        to_ready, total = run_async(mode, partial(replaces, reps, prespawn))
        s.add(Row("replace(): start -> new incarnation Ready", label, "s", Stats.of(to_ready, "s")))
        s.add(Row("replace(): start -> returned (old stopped)", label, "s", Stats.of(total, "s")))
    progress(f"fleet: {reps} member deaths in a one_for_all group of 4")
    stopped, back = run_async(mode, partial(group_deaths, reps))
    st = Stats.of(stopped, "s")
    s.add(
        Row(
            "one_for_all group of 4: SIGKILL -> every sibling exited",
            "ours",
            "s",
            st,
            target=f"max <= {SIBLINGS_TARGET:g} s",
            met=max(stopped) <= SIBLINGS_TARGET,
        )
    )
    s.add(
        Row("one_for_all group of 4: SIGKILL -> all four Ready", "ours", "s", Stats.of(back, "s"))
    )
    s.notes.append(
        f"{reps} samples each, echo engine (no load or warm-up time), zero backoff, an idle "
        "runner. Replace without prespawn drains, stops, then starts (new tasks wait the "
        "whole time); with prespawn the spare is adopted at once and the old process stops "
        "meanwhile. Siblings are stopped gracefully (Shutdown) and killed after stop_grace; "
        "an idle echo runner reads its Shutdown at once."
    )
    return s
