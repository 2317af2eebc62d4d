"""Event forwarding, runner emit -> host receive: throughput and per-event latency.

Three paths carry the same small event (`ChunkGenerated`), measured in one run:
- ours: a RunnerSupervisor over the echo engine (token_delay=0) into the host's
  memory stream; and again with per-runner log files and the default fatal patterns
  on, over an engine that also writes a log line every `PRINT_EVERY` tokens;
- raw pipe: a child sending on a `multiprocessing.Pipe` (pickle) as fast as it can,
  the parent in a plain blocking ``recv`` loop: the practical limit;
- queue: a child putting on a `multiprocessing.Queue`, the parent forwarding each
  event with ``await anyio.to_thread.run_sync(queue.get)`` (exo's supervisor today).

Throughput is counted from the first event received to the last of a burst, so process
start-up is not in it. Latency is measured at one event per millisecond, where queueing
does not dominate: the child stamps ``time.monotonic()`` into the event's text.
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from operator import contains
from typing import Any

import anyio
import anyio.to_thread

from bench import gates
from bench.common import Mode, Watched, fleet, progress, run_async
from bench.report import Row, Section, Stats, ratio
from supervisor import RunnerSpec, SupervisorConfig
from supervisor.logs.files import dropped_lines, flush_log_files, log_path
from supervisor.protocol import BaseEvent, ChunkGenerated, Generate

PACE = 0.001  # seconds between events in the latency runs
PRINT_EVERY = 10  # tokens per stderr line of the engine in the log-files run
_STOP = "stop"


@dataclass(frozen=True, slots=True)
class Params:
    bursts: int
    count: int
    queue_count: int
    paced: int

    @classmethod
    def of(cls, mode: Mode) -> Params:
        return mode.pick(
            cls(bursts=3, count=20_000, queue_count=3_000, paced=800),
            cls(bursts=9, count=100_000, queue_count=20_000, paced=5_000),
        )


@dataclass
class Measured:
    rates: list[float]
    latencies: list[float]


@dataclass
class Logged:
    rates: list[float]
    lines: int  # in the runner's log file
    dropped: int


def _burst(send: Any, count: int, pace: float) -> None:
    monotonic = time.monotonic
    if pace:
        for i in range(count):
            time.sleep(pace)
            send(ChunkGenerated("t", i, repr(monotonic())))
    else:
        for i in range(count):
            send(ChunkGenerated("t", i, "x "))  # the echo engine's token for prompt "x"


def _pipe_child(events: Connection, control: Connection) -> None:
    while (order := control.recv()) is not None:
        _burst(events.send, *order)
        events.send(None)


def _queue_child(queue: Any, control: Connection) -> None:
    while (order := control.recv()) is not None:
        _burst(queue.put, *order)
        queue.put(None)
    queue.put(_STOP)
    queue.close()
    queue.join_thread()


class _Counter:
    """First/last receive time and count of one burst."""

    __slots__ = ("first", "last", "n")

    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0
        self.n = 0

    def reset(self) -> None:
        self.first = self.last = 0.0
        self.n = 0

    def rate(self) -> float:
        return (self.n - 1) / (self.last - self.first)


# ------------------------------------------------------------------ raw pipe
def raw_pipe(p: Params) -> Measured:
    ctx = multiprocessing.get_context("spawn")
    ev_r, ev_w = ctx.Pipe(duplex=False)
    ctl_r, ctl_w = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_pipe_child, args=(ev_w, ctl_r), name="bench-raw-pipe")
    child.start()
    ev_w.close()
    ctl_r.close()
    monotonic = time.monotonic
    rates: list[float] = []
    try:
        for burst in range(p.bursts + 1):  # burst 0 warms up
            ctl_w.send((p.count, 0.0))
            c = _Counter()
            while ev_r.recv() is not None:
                now = monotonic()
                if not c.n:
                    c.first = now
                c.last = now
                c.n += 1
            if burst:
                rates.append(c.rate())
        ctl_w.send((p.paced, PACE))
        latencies: list[float] = []
        while (ev := ev_r.recv()) is not None:
            latencies.append(monotonic() - float(ev.text))
        ctl_w.send(None)
    finally:
        child.join(5)
        if child.exitcode is None:
            child.kill()
            child.join()
        ev_r.close()
        ctl_w.close()
    return Measured(rates, latencies)


# ---------------------------------------------- per-event to_thread(queue.get)
async def queue_forwarder(p: Params) -> Measured:
    ctx = multiprocessing.get_context("spawn")
    queue: Any = ctx.Queue()
    ctl_r, ctl_w = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_queue_child, args=(queue, ctl_r), name="bench-queue")
    child.start()
    ctl_r.close()
    send, recv = anyio.create_memory_object_stream[Any](math.inf)

    async def forward() -> None:
        async with send:
            while (item := await anyio.to_thread.run_sync(queue.get)) != _STOP:
                await send.send(item)

    rates: list[float] = []
    latencies: list[float] = []
    monotonic = time.monotonic
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            async with recv:
                for burst in range(p.bursts + 1):
                    ctl_w.send((p.queue_count, 0.0))
                    c = _Counter()
                    while await recv.receive() is not None:
                        now = monotonic()
                        if not c.n:
                            c.first = now
                        c.last = now
                        c.n += 1
                    if burst:
                        rates.append(c.rate())
                ctl_w.send((p.paced, PACE))
                while (ev := await recv.receive()) is not None:
                    latencies.append(monotonic() - float(ev.text))
                ctl_w.send(None)  # the child puts _STOP: the forwarder ends
    finally:
        await anyio.to_thread.run_sync(child.join, 5)
        if child.exitcode is None:
            child.kill()
            child.join()
        ctl_w.close()
        queue.close()
    return Measured(rates, latencies)


# ----------------------------------------------------------------------- ours
class _Bursts:
    """Counts one runner's chunks; `run` times ``bursts + 1`` bursts (the first warms up)."""

    def __init__(self) -> None:
        self.counter = _Counter()

    def count(self, now: float, event: BaseEvent) -> None:
        if type(event) is ChunkGenerated:
            c = self.counter
            if not c.n:
                c.first = now
            c.last = now
            c.n += 1

    async def run(self, w: Watched, p: Params) -> list[float]:
        rates: list[float] = []
        for burst in range(p.bursts + 1):
            self.counter.reset()
            tid = f"burst-{burst}"
            await w.sup.start_task(Generate(task_id=tid, prompt="x", max_tokens=p.count))
            await w.wait(partial(contains, w.terminal, tid), within=120)
            if self.counter.n != p.count:
                raise RuntimeError(f"host received {self.counter.n} of {p.count} chunks")
            if burst:
                rates.append(self.counter.rate())
        return rates


async def ours(p: Params) -> Measured:
    latencies: list[float] = []
    bursts = _Bursts()

    def stamp(now: float, event: BaseEvent) -> None:
        if type(event) is ChunkGenerated:
            latencies.append(now - float(event.text))

    async with fleet() as f:
        echo = f.spawn(RunnerSpec(engine="echo"), on_event=bursts.count)
        stamper = f.spawn(
            RunnerSpec(engine="bench.engines:StampEngine", options={"token_delay": PACE}),
            on_event=stamp,
        )
        await echo.ready()
        await stamper.ready()
        rates = await bursts.run(echo, p)
        await stamper.sup.start_task(Generate(task_id="paced", prompt="x", max_tokens=p.paced))
        await stamper.wait(lambda: "paced" in stamper.terminal, within=120)
    return Measured(rates, latencies)


async def _ours_logged(p: Params, log_dir: str) -> tuple[list[float], str]:
    bursts = _Bursts()
    config = SupervisorConfig(log_dir=log_dir)
    spec = RunnerSpec(engine="bench.engines:ChattyEngine", options={"print_every": PRINT_EVERY})
    async with fleet() as f:
        chatty = f.spawn(spec, config, on_event=bursts.count)
        await chatty.ready()
        return await bursts.run(chatty, p), chatty.sup.runner_id


def ours_logged(mode: Mode, p: Params) -> Logged:
    """Ours with log files and the default fatal patterns, over a runner that logs."""
    dropped_before = dropped_lines()
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as log_dir:
        rates, runner_id = run_async(mode, lambda: _ours_logged(p, log_dir))
        flush_log_files(30.0)
        with open(log_path(log_dir, runner_id), "rb") as log:
            lines = sum(block.count(b"\n") for block in iter(lambda: log.read(1 << 20), b""))
    return Logged(rates, lines, dropped_lines() - dropped_before)


# ----------------------------------------------------------------------- run
def run(mode: Mode) -> Section:
    p = Params.of(mode)
    s = Section("Event forwarding (runner emit -> host receive)")
    progress(f"forwarding: ours, {p.bursts}+1 bursts of {p.count} events + {p.paced} paced")
    mine: Measured = run_async(mode, lambda: ours(p))
    progress(f"forwarding: ours with log files + fatal patterns, a log line per {PRINT_EVERY}")
    logged = ours_logged(mode, p)
    progress("forwarding: raw multiprocessing.Pipe + pickle loop")
    raw = raw_pipe(p)
    progress(f"forwarding: per-event to_thread(Queue.get), bursts of {p.queue_count}")
    queue: Measured = run_async(mode, lambda: queue_forwarder(p))

    tput = "forwarding throughput"
    ours_rate = Stats.of(mine.rates, "/s")
    raw_rate = Stats.of(raw.rates, "/s")
    share = ours_rate.median / raw_rate.median
    s.add(
        Row(
            tput,
            "ours: RunnerSupervisor, echo engine",
            "/s",
            ours_rate,
            target=">= 1.0x raw pipe",
            met=share >= 1.0,
        )
    )
    logged_rate = Stats.of(logged.rates, "/s")
    logged_share = logged_rate.median / raw_rate.median
    s.add(
        Row(
            tput,
            f"ours + log files + default fatal patterns, a log line per {PRINT_EVERY} events",
            "/s",
            logged_rate,
            target=">= 0.9x raw pipe",
            met=logged_share >= 0.9,
        )
    )
    s.add(
        Row(
            tput,
            "baseline: raw Pipe + pickle",
            "/s",
            raw_rate,
            ratio(ours_rate.median, raw_rate.median, "/s"),
        )
    )
    q_rate = Stats.of(queue.rates, "/s")
    s.add(
        Row(
            tput,
            "baseline: to_thread(Queue.get)",
            "/s",
            q_rate,
            ratio(ours_rate.median, q_rate.median, "/s"),
        )
    )

    lat = "per-event latency @1k/s"
    ours_lat = Stats.of(mine.latencies, "s")
    raw_lat = Stats.of(raw.latencies, "s")
    lat_share = ours_lat.median / raw_lat.median
    s.add(
        Row(
            lat,
            "ours",
            "s",
            ours_lat,
            target="<= 1.25x raw pipe",
            met=lat_share <= 1.25,
        )
    )
    for name, m in (
        ("baseline: raw Pipe + pickle", raw),
        ("baseline: to_thread(Queue.get)", queue),
    ):
        st = Stats.of(m.latencies, "s")
        s.add(Row(lat, name, "s", st, ratio(ours_lat.median, st.median, "s")))
    s.figures[gates.FORWARDING_VS_RAW] = share
    s.figures[gates.FORWARDING_LOGGED_VS_RAW] = logged_share
    s.figures[gates.FORWARDING_LATENCY_VS_RAW] = lat_share
    s.notes += [
        f"Throughput: {p.bursts} bursts (after one warm-up burst) of {p.count:,} events "
        f"({p.queue_count:,} for the queue forwarder, which is slower), first to last event "
        "received; n counts bursts. Events are `ChunkGenerated` with a 2-character text in "
        "all three paths; ours also carries the runner's status and task events.",
        f"Ours is the runner's loop (poll the task pipe, pickle, write, tick progress per "
        f"token) plus the supervisor's non-blocking reader, so it is {share:.0%} of a bare "
        "pipe whose child does nothing but send.",
        f"With log files: the engine also writes one stderr line per {PRINT_EVERY} tokens "
        f"({p.count // PRINT_EVERY:,} per burst); each goes through the default fatal "
        f"patterns and into the runner's log file: {logged.lines:,} lines written, "
        f"{logged.dropped:,} dropped. {logged_share:.0%} of the raw pipe, "
        f"{logged_rate.median / ours_rate.median:.0%} of ours without them (whose engine "
        "writes nothing).",
        f"Latency: {p.paced:,} events at one per {PACE * 1e3:g} ms, stamped with "
        "`time.monotonic()` in the child (CLOCK_MONOTONIC is system-wide) and compared on "
        "receipt by the host.",
    ]
    return s
