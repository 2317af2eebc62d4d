"""Streaming at node scale: 64 runners, each emitting 500 tokens/s, into one host.

- ours: a `RunnerNode` of 64 runners (paced stamp engine: each token's text is the
  ``time.monotonic()`` at which the runner produced it, on a fixed 2 ms schedule),
  all events on the node's one stream, read by one consumer task;
- baseline: 64 plain children sending the same stamped `ChunkGenerated` events at the
  same pace on bare `multiprocessing.Pipe`s, read by 64 tasks of the same kind of
  event loop (wait until readable, then ``recv`` what is there): the least any host
  can do per event with multiprocessing's pickling pipes.

Measured over 1 s windows once every stream has started: the host process's CPU
(CLOCK_PROCESS_CPUTIME_ID, all threads) per 1,000 chunks received, and each chunk's
latency from its stamp to the host's receipt (CLOCK_MONOTONIC is system-wide).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import anyio
import psutil
from anyio.streams.memory import MemoryObjectReceiveStream

from bench import gates
from bench.common import Mode, gather, progress, run_async
from bench.engines import pipe_streamer
from bench.report import Row, Section, Stats, Unit, fmt, ratio
from supervisor import RunnerNode, RunnerSpec, SupervisorConfig
from supervisor.config import StartMethod
from supervisor.protocol import BaseEvent, ChunkGenerated, Generate

RUNNERS = 64
RATE = 500.0  # tokens per second per runner
PERIOD = 1 / RATE
SETTLE = 2.0  # seconds after every stream started (the start is a burst), before measuring
#: Tokens per stream: more than any run needs (the streams are cancelled at the end).
TOKENS = int(RATE * 600)
START_WITHIN = 120.0
#: A side that received less than this share of the asked rate is marked on its rows.
SHORT = 0.9
#: Both sides start their 64 processes from a forkserver: seconds less of set-up on a
#: small machine, and nothing measured depends on how a process was started.
START_METHOD: StartMethod = "forkserver"


@dataclass
class Measured:
    """What one side measured; samples are per window (CPU) and per chunk (latency)."""

    cpu_per_1k: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # chunks/s received, per window
    busy: list[float] = field(default_factory=list)  # host CPU, % of one core, per window
    children_cpu_per_1k: float = 0.0  # the runners' (or children's) own CPU
    startup: float = 0.0


class _Receipts:
    """Counts and stamps chunks as the host receives them; latencies only when armed."""

    def __init__(self) -> None:
        self.chunks = 0
        self.streams: set[str] = set()
        self.armed = False
        self.latencies: list[float] = []
        self.started = anyio.Event()

    def note(self, now: float, event: ChunkGenerated) -> None:
        self.chunks += 1
        if self.armed:
            self.latencies.append(now - float(event.text))
        elif event.index == 0:
            self.streams.add(event.task_id)
            if len(self.streams) == RUNNERS:
                self.started.set()


async def _measure(r: _Receipts, windows: int, pids: list[int], out: Measured) -> None:
    """Wait for every stream to run, settle, then measure ``windows`` 1 s windows."""
    with anyio.fail_after(START_WITHIN):
        await r.started.wait()
    await anyio.sleep(SETTLE)
    children0, first = _cpu(pids), r.chunks
    r.armed = True
    for _ in range(windows):
        cpu0, n, t0 = time.process_time(), r.chunks, time.monotonic()
        await anyio.sleep(1.0)
        got, cpu, wall = r.chunks - n, time.process_time() - cpu0, time.monotonic() - t0
        out.cpu_per_1k.append(1000 * cpu / max(got, 1))
        out.rates.append(got / wall)
        out.busy.append(100 * cpu / wall)
    r.armed = False
    out.latencies = r.latencies
    out.children_cpu_per_1k = 1000 * (_cpu(pids) - children0) / max(r.chunks - first, 1)


def _yield_cpu(pids: list[int]) -> None:
    """Nice 19 for every thread of the streaming processes, on both sides.

    With more busy processes than cores, the scheduler gives the host 1/65 of the
    CPU and the figures would measure the scheduler. On a real node each runner has
    a core (or a GPU) of its own; niced streamers model that: the host gets the CPU
    it asks for, the streamers what is left (the achieved rate is reported).
    """
    for pid in pids:
        try:
            threads = [t.id for t in psutil.Process(pid).threads()]
        except psutil.Error:
            continue
        for tid in threads:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.setpriority(os.PRIO_PROCESS, tid, 19)


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


# ----------------------------------------------------------------------- ours
async def ours(windows: int) -> Measured:
    out = Measured()
    r = _Receipts()
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    node = RunnerNode(event_sender=send, config=SupervisorConfig(start_method=START_METHOD))
    spec = RunnerSpec(engine="bench.engines:PacedStampEngine", options={"token_delay": PERIOD})
    ids = [f"r{i}" for i in range(RUNNERS)]

    async def consume(recv: MemoryObjectReceiveStream[BaseEvent]) -> None:
        monotonic = time.monotonic
        note = r.note
        async with recv:
            async for first in recv:
                # A host drains what is queued in one go (docs/operations.md): one
                # event per event-loop turn cannot keep up with 64 streams.
                event: BaseEvent | None = first
                while event is not None:
                    if type(event) is ChunkGenerated:
                        note(monotonic(), event)
                    try:
                        event = recv.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        event = None

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, recv)
        await tg.start(node.run)
        t0 = time.monotonic()
        for rid in ids:
            node.add_runner(rid, spec)
        # Every runner Ready before any stream: start-up must not compete with streams.
        # (start_task returns once a Ready runner has the task; zero tokens: no chunks.)
        with anyio.fail_after(START_WITHIN):
            await gather(
                [
                    partial(node.start_task, rid, Generate(task_id=f"{rid}-ready", max_tokens=0))
                    for rid in ids
                ]
            )
        out.startup = time.monotonic() - t0
        pids = [pid for rid in ids if (pid := node[rid].pid) is not None]
        _yield_cpu(pids)
        for rid in ids:
            await node.start_task(rid, Generate(task_id=rid, prompt="x", max_tokens=TOKENS))
        await _measure(r, windows, pids, out)
        failed = [rid for rid in ids if node[rid].restarts or node[rid].gave_up]
        for rid in ids:
            node.cancel_task(rid, rid)
        node.shutdown()
        with anyio.fail_after(60):
            for rid in ids:
                await node[rid].wait_finished()
        tg.cancel_scope.cancel()
    if failed:
        raise RuntimeError(f"runners failed while streaming: {failed}")
    return out


# ------------------------------------------------------------------- baseline
async def bare_pipes(windows: int) -> Measured:
    out = Measured()
    r = _Receipts()
    ctx = multiprocessing.get_context(START_METHOD)
    go = ctx.Event()
    hello = _Countdown(RUNNERS)
    children: list[BaseProcess] = []
    readers: list[Connection] = []

    async def read(conn: Connection) -> None:
        monotonic = time.monotonic
        note = r.note
        fd = conn.fileno()
        try:
            while True:
                await anyio.wait_readable(fd)
                while conn.poll():
                    event = conn.recv()
                    if event is None:
                        hello.tick()
                    else:
                        note(monotonic(), event)
        except EOFError:
            return

    t0 = time.monotonic()
    try:
        for i in range(RUNNERS):
            rd, wr = ctx.Pipe(duplex=False)
            child = ctx.Process(
                target=pipe_streamer,
                args=(wr, go, f"p{i}", TOKENS, PERIOD),
                name="bench-pipe-stream",
            )
            child.start()
            wr.close()
            children.append(child)
            readers.append(rd)
        async with anyio.create_task_group() as tg:
            for rd in readers:
                tg.start_soon(read, rd)
            with anyio.fail_after(START_WITHIN):
                await hello.done.wait()
            out.startup = time.monotonic() - t0
            pids = [c.pid for c in children if c.pid is not None]
            _yield_cpu(pids)
            go.set()
            await _measure(r, windows, pids, out)
            tg.cancel_scope.cancel()
    finally:
        go.set()  # children still waiting would never notice the closed pipe
        for rd in readers:
            rd.close()  # the children's next send fails: they exit
        for child in children:
            await anyio.to_thread.run_sync(child.join, 5)
            if child.exitcode is None:
                child.kill()
                child.join()
    return out


class _Countdown:
    def __init__(self, n: int) -> None:
        self.left = n
        self.done = anyio.Event()

    def tick(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


# ----------------------------------------------------------------------- run
def run(mode: Mode) -> Section:
    windows = mode.pick(3, 10)
    s = Section("Streaming at node scale (64 runners x 500 tokens/s)")
    progress(f"streaming: RunnerNode, {RUNNERS} runners x {RATE:g} tokens/s, {windows} s")
    mine: Measured = run_async(mode, partial(ours, windows))
    progress(f"streaming: {RUNNERS} bare Pipe readers (baseline), {windows} s")
    base: Measured = run_async(mode, partial(bare_pipes, windows))

    what = f"{RUNNERS} x {RATE:g} tokens/s"
    asked = RUNNERS * RATE
    got = {side: Stats.of(m.rates, "/s").median for side, m in (("ours", mine), ("base", base))}
    # A side that could not stream at the asked rate is marked on its rows: its
    # figures are for a lower load, and its latency is mostly queueing.
    short = {
        side: f"got {fmt(rate, '/s')} of {fmt(asked, '/s')}" if rate < SHORT * asked else ""
        for side, rate in got.items()
    }
    cpu = f"streaming {what}: host CPU per 1,000 events"
    lat = f"streaming {what}: event latency, emit -> host"
    # CPU is compared in "larger/smaller" words, latency in "faster/slower".
    measures: list[tuple[str, Stats, Stats, Unit]] = [
        (cpu, Stats.of(mine.cpu_per_1k, "s"), Stats.of(base.cpu_per_1k, "s"), "%"),
        (lat, Stats.of(mine.latencies, "s"), Stats.of(base.latencies, "s"), "s"),
    ]
    (_, cpu_ours, cpu_base, _), (_, lat_ours, lat_base, _) = measures
    if cpu_base.median > 0:  # CPU clocks tick coarsely: an idle baseline could read 0
        s.figures[gates.STREAMING_CPU_VS_BARE] = cpu_ours.median / cpu_base.median
    if not short["base"] and lat_base.median > 0:
        # A baseline that could not stream at the asked rate says the machine was
        # overloaded: both latencies are queueing then, and their ratio measures the load.
        s.figures[gates.STREAMING_LATENCY_VS_BARE] = lat_ours.median / lat_base.median
    for bench, ours_stats, base_stats, wording in measures:
        s.add(Row(bench, "ours: RunnerNode", "s", ours_stats, note=short["ours"]))
        vs = ratio(ours_stats.median, base_stats.median, wording)
        s.add(Row(bench, "baseline: bare Pipe readers", "s", base_stats, vs, note=short["base"]))
    s.plotted.append(lat)
    ours_own, base_own = fmt(mine.children_cpu_per_1k, "s"), fmt(base.children_cpu_per_1k, "s")
    s.notes += [
        f"{windows} windows of 1 s per side, after every stream had started and "
        f"{SETTLE:g} s more; n counts windows (CPU) and chunks (latency). Chunks received "
        f"per second, median (asked for: {asked:,.0f}): ours {got['ours']:,.0f}, baseline "
        f"{got['base']:,.0f}. Rows marked 'got' streamed below {SHORT:.0%} of the asked "
        "rate: the machine could not carry the load, so they are not comparable, and "
        "their latency is mostly queueing.",
        "Host CPU is the whole host process, all threads, divided by chunks received; "
        f"the host was busy {fmt(Stats.of(mine.busy, '%').median, '%')} of a core (ours) "
        f"and {fmt(Stats.of(base.busy, '%').median, '%')} (baseline). "
        "Ours includes what the node does besides forwarding (heartbeat, progress and "
        "resource checks of 64 runners, status events); the baseline does nothing else. "
        f"The runners' own CPU per 1,000 chunks, for scale: ours {ours_own} (runner loop, "
        f"heartbeat thread, pickling), bare children {base_own}.",
        f"Every process is started ({START_METHOD}; ours also LoadModel and Warmup) before "
        f"any stream, then all streams start together: start-up took ours "
        f"{fmt(mine.startup, 's')}, baseline {fmt(base.startup, 's')} for {RUNNERS}. "
        "Then every thread of the streaming processes is niced to 19 on both sides, so "
        "that the host gets the CPU it asks for, as on a node with a core per runner; "
        "the streamers get what is left.",
        "Latency is from the stamp the runner put in the token (after its paced sleep) to "
        "the host's receipt: pickling, the pipe, the supervisor's reader and the node's "
        "event stream for ours. A host that falls behind lets each pipe fill (64 KiB: some "
        "1,300 of our 48-byte frames, 700 events pickled by `Connection.send`) and the "
        "streamer block in its write: nothing is lost, and the latency becomes that queue "
        "drained at the streamer's share of the host's rate.",
    ]
    return s
