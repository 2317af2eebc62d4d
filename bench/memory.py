"""Memory: the host's RSS per supervised runner, and no growth over many tasks.

- per runner: host RSS with 1 Ready runner, then with 16; the difference over 15.
  Baseline: 1 then 16 plain `multiprocessing.Process` children with three pipes each
  (the least a supervisor must hold per runner).
- growth: one runner serves many one-token Generate tasks in a row; host RSS and
  Python's allocated blocks after a warm-up tenth and at the end. The supervisor
  remembers the last RECENT_TASK_IDS finished task ids (to refuse duplicates), so its
  bookkeeping grows until that window is full, then stays flat. Baseline (the noise
  floor of the measurement): the same number of request/reply round trips over a raw
  pipe.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from operator import contains
from pathlib import Path

import anyio
import psutil

from bench.common import Mode, fleet, progress, quiet_supervisor_logs, run_async
from bench.report import Row, Section, Stats, ratio
from supervisor.core.runner_supervisor import RECENT_TASK_IDS
from supervisor.protocol import (
    ChunkGenerated,
    Generate,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)

ROOT = Path(__file__).resolve().parent.parent
#: allocated blocks per task once bounded bookkeeping is full (noise is ~+-0.1 here)
BLOCKS_TARGET = 0.25


def host_rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


async def per_runner(big: int) -> dict[str, float]:
    async with fleet() as f:
        first = await f.spawn_ready(1)
        await anyio.sleep(0.5)
        one, blocks_one = host_rss(), sys.getallocatedblocks()
        rest = await f.spawn_ready(big - 1)
        await anyio.sleep(0.5)
        many, blocks_many = host_rss(), sys.getallocatedblocks()
        runner_rss = [float(psutil.Process(w.pid).memory_info().rss) for w in first + rest]
    return {
        "rss": (many - one) / (big - 1),
        "blocks": (blocks_many - blocks_one) / (big - 1),
        "runner_rss": statistics.median(runner_rss),
    }


def plain_per_process(big: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    held: list[tuple[BaseProcess, list[Connection]]] = []

    def add() -> None:
        ends = [end for _ in range(3) for end in ctx.Pipe(duplex=False)]
        p: BaseProcess = ctx.Process(target=time.sleep, args=(1000,))
        p.start()
        held.append((p, ends))

    try:
        add()
        one, blocks_one = host_rss(), sys.getallocatedblocks()
        for _ in range(big - 1):
            add()
        many, blocks_many = host_rss(), sys.getallocatedblocks()
    finally:
        for p, ends in held:
            p.kill()
            p.join(5)
            p.close()
            for end in ends:
                end.close()
    return {"rss": (many - one) / (big - 1), "blocks": (blocks_many - blocks_one) / (big - 1)}


def probe(which: str, big: int, backend: str) -> None:
    """Entry of the fresh process that measures per-runner memory (prints JSON)."""
    quiet_supervisor_logs()
    if which == "ours":
        result = anyio.run(per_runner, big, backend=backend)
    else:
        result = plain_per_process(big)
    print(json.dumps(result))


def in_fresh_process(which: str, big: int, backend: str) -> dict[str, float]:
    """RSS only says something about one runner in a process that has not already
    grown and freed (the allocator reuses freed pages): measure in a new one."""
    code = f"from bench.memory import probe; probe({which!r}, {big}, {backend!r})"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {which} failed: {out.stderr.strip()[-500:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@dataclass
class Growth:
    """(tasks done, host RSS, Python allocated blocks) at a few points of the run."""

    marks: list[tuple[int, int, int]]
    seconds: float

    def between(self, a: int, b: int) -> tuple[int, float]:
        """RSS growth and allocated blocks per task between marks ``a`` and ``b``."""
        (ta, ra, ba), (tb, rb, bb) = self.marks[a], self.marks[b]
        return rb - ra, (bb - ba) / max(1, tb - ta)


def _checkpoints(tasks: int) -> set[int]:
    """After a warm-up tenth; once the duplicate-id window is full (if it fills)."""
    points = {tasks // 10}
    if tasks * 0.8 > RECENT_TASK_IDS + 200:
        points.add(RECENT_TASK_IDS + 200)
    return points


def _mark(marks: list[tuple[int, int, int]], done: int) -> None:
    marks.append((done, host_rss(), sys.getallocatedblocks()))


async def task_growth(tasks: int) -> Growth:
    checkpoints = _checkpoints(tasks)
    marks: list[tuple[int, int, int]] = []
    async with fleet() as f:
        (w,) = await f.spawn_ready(1)
        started = time.monotonic()
        for i in range(tasks):
            if i in checkpoints:
                _mark(marks, i)
            tid = f"task-{i}"
            await w.sup.start_task(Generate(task_id=tid, prompt="x", max_tokens=1))
            await w.wait(partial(contains, w.terminal, tid), within=30)
            # the benchmark's own records must not grow either
            w.terminal.pop(tid)
            w.first_chunk_at.pop(tid, None)
            if i and i % (tasks // 4) == 0:
                progress(f"memory: {i}/{tasks} tasks")
        _mark(marks, tasks)
        seconds = time.monotonic() - started
    return Growth(marks, seconds)


def _echo_child(tasks: Connection, events: Connection) -> None:
    while (task := tasks.recv()) is not None:
        events.send(TaskAcknowledged(task.task_id))
        events.send(ChunkGenerated(task.task_id, 0, "x "))
        events.send(TaskStatusUpdated(task.task_id, TaskStatus.Complete))


def raw_growth(tasks: int) -> Growth:
    ctx = multiprocessing.get_context("spawn")
    t_r, t_w = ctx.Pipe(duplex=False)
    e_r, e_w = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_echo_child, args=(t_r, e_w))
    child.start()
    t_r.close()
    e_w.close()
    checkpoints = _checkpoints(tasks)
    marks: list[tuple[int, int, int]] = []
    started = time.monotonic()
    try:
        for i in range(tasks):
            if i in checkpoints:
                _mark(marks, i)
            t_w.send(Generate(task_id=f"task-{i}", prompt="x", max_tokens=1))
            for _ in range(3):
                e_r.recv()
        _mark(marks, tasks)
        t_w.send(None)
    finally:
        child.join(5)
        if child.exitcode is None:
            child.kill()
            child.join()
        t_w.close()
        e_r.close()
    return Growth(marks, time.monotonic() - started)


def run(mode: Mode) -> Section:
    s = Section("Memory")
    big = 16
    progress(f"memory: host RSS with 1 and {big} runners (fresh processes)")
    mine = in_fresh_process("ours", big, mode.backend)
    plain_result = in_fresh_process("plain", big, mode.backend)
    host, plain = mine["rss"], plain_result["rss"]
    bench = "memory: host RSS per runner"
    s.add(Row(bench, "ours: per supervised runner", "B", Stats.of([host], "B")))
    s.add(
        Row(
            bench,
            "baseline: plain Process + 3 pipes",
            "B",
            Stats.of([plain], "B"),
            ratio(host, plain, "B"),
        )
    )
    rr = Stats.of([mine["runner_rss"]], "B")
    s.add(
        Row(
            bench,
            "for scale: the echo runner process itself",
            "B",
            rr,
            f"ours = {host / rr.median:.1%} of it",
        )
    )

    tasks = mode.pick(6_000, 10_000)
    progress(f"memory: {tasks} tasks on one runner")
    g: Growth = run_async(mode, partial(task_growth, tasks))
    raw = raw_growth(tasks)
    grow, per_task = g.between(0, -1)
    raw_grow, raw_per_task = raw.between(0, -1)
    bench = f"memory: host RSS growth over {tasks:,} tasks"
    s.add(Row(bench, f"ours, from task {g.marks[0][0]:,}", "B", Stats.of([grow], "B")))
    s.add(Row(bench, "baseline: raw pipe round trips", "B", Stats.of([raw_grow], "B")))
    if len(g.marks) == 3:
        start = g.marks[1][0]
        full_grow, full_per_task = g.between(1, 2)
        _, raw_full_per_task = raw.between(1, 2)
        s.add(
            Row(bench, f"ours, from task {start:,} (window full)", "B", Stats.of([full_grow], "B"))
        )
        bench = f"memory: Python objects per task after task {start:,}"
        s.add(
            Row(
                bench,
                "ours: allocated blocks per task",
                "n",
                Stats.of([full_per_task], "n"),
                target=f"|x| <= {BLOCKS_TARGET:g} (flat)",
                met=abs(full_per_task) <= BLOCKS_TARGET,
            )
        )
        s.add(
            Row(
                bench,
                "baseline: raw pipe round trips",
                "n",
                Stats.of([raw_full_per_task], "n"),
            )
        )
    else:
        s.not_measured(
            "memory: Python objects per task",
            "ours",
            "n",
            f"{tasks:,} tasks do not fill the {RECENT_TASK_IDS:,}-id window",
        )
    s.notes += [
        f"Per runner: host RSS (after gc) with {big} Ready runners minus with 1, over "
        f"{big - 1}, each in a fresh process; one measurement each (n = 1). Python allocated "
        f"blocks per runner: ours {mine['blocks']:,.0f}, plain {plain_result['blocks']:,.0f}. "
        f"The runner row is the median RSS of the {big} echo runner processes.",
        f"Growth: {tasks:,} one-token Generate tasks one after another "
        f"({tasks / g.seconds:,.0f} tasks/s), measured from task {g.marks[0][0]:,}. Python "
        f"allocated blocks: {per_task:+.3f} per task (raw pipe: {raw_per_task:+.3f}). The "
        f"supervisor keeps the last {RECENT_TASK_IDS:,} finished task ids to refuse "
        f"duplicates; that window fills during the first {RECENT_TASK_IDS:,} tasks and is "
        "the only bookkeeping meant to grow. Allocated-block counts move by a few hundred "
        "either way from one reading to the next, so short runs show a little noise.",
    ]
    return s
