"""Death detection: SIGKILL -> RunnerFailed at the host, against two baselines.

- ours: Ready echo runners, SIGKILLed one at a time from outside (as the OOM killer
  would); latency ends when the host receives ``RunnerStatusUpdated(RunnerFailed)``.
- a 1 s ``is_alive`` poll: plain `multiprocessing.Process` children each polled every
  second by its own task, killed at random moments; real polls, really measured.
- supervisord (a real peer), from ``supervisord.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from multiprocessing.process import BaseProcess

import anyio

from bench import gates, supervisord
from bench.common import Mode, fleet, progress, run_async
from bench.report import Row, Section, Stats, fmt, ratio

BATCH = 10  # runners alive at once: start-up is paid per batch, kills are one by one
TARGET_P99 = 0.020


async def ours(reps: int) -> tuple[list[float], list[float], Counter[str], int]:
    """Kill -> RunnerFailed at the host, and kill -> pidfd readable (the kernel's part)."""
    latencies: list[float] = []
    kernel: list[float] = []
    detectors: Counter[str] = Counter()
    extra_failures = 0
    rng = random.Random(1)
    while len(latencies) < reps:
        batch = min(BATCH, reps - len(latencies))
        async with fleet() as f:
            members = await f.spawn_ready(batch)
            for w in members:
                await anyio.sleep(rng.uniform(0.0, 0.05))  # any phase of the 1 s poll
                seen, exited = await w.kill_and_time()
                latencies.append(seen)
                kernel.append(exited)
                assert w.failure is not None
                detectors[w.failure.detected_by] += 1
            await anyio.sleep(0.05)  # a duplicate report would arrive by now
            extra_failures += sum(w.failures - 1 for w in members)
        progress(f"death: ours {len(latencies)}/{reps}")
    return latencies, kernel, detectors, extra_failures


async def is_alive_poll(reps: int, interval: float = 1.0) -> list[float]:
    """Each plain child polled every ``interval`` by its own task; kills land at random."""
    ctx = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = [
        ctx.Process(target=time.sleep, args=(1000,), name="bench-plain") for _ in range(reps)
    ]
    for child in children:
        child.start()
    latencies: list[float] = []
    rng = random.Random(2)

    async def watch(child: BaseProcess) -> None:
        killed_at: list[float] = []

        async def killer() -> None:
            await anyio.sleep(rng.uniform(0.2, 0.2 + interval))
            assert child.pid is not None
            killed_at.append(time.monotonic())
            os.kill(child.pid, signal.SIGKILL)

        tg.start_soon(killer)
        while True:
            await anyio.sleep(interval)
            if not child.is_alive():  # waitpid(WNOHANG), as exo's poll does
                latencies.append(time.monotonic() - killed_at[0])
                return

    try:
        async with anyio.create_task_group() as tg:
            for child in children:
                tg.start_soon(watch, child)
    finally:
        for child in children:
            if child.exitcode is None:
                child.kill()
            child.join(5)
            child.close()
    return latencies


def run(mode: Mode) -> Section:
    reps = mode.pick(30, 100)
    s = Section("Death detection (SIGKILL -> RunnerFailed)")
    bench = "death: SIGKILL -> failure seen"
    progress(f"death: ours, {reps} kills in batches of {BATCH}")
    mine, kernel, detectors, extra = run_async(mode, lambda: ours(reps))
    st = Stats.of(mine, "s")
    own = Stats.of([m - k for m, k in zip(mine, kernel, strict=True)], "s")
    s.figures[gates.DEATH_OWN_SHARE_MEDIAN] = own.median
    s.figures[gates.DEATH_OWN_SHARE_P99] = own.tail
    s.add(
        Row(
            bench,
            "ours: RunnerFailed at host",
            "s",
            st,
            target=f"p99 <= {TARGET_P99 * 1e3:g} ms",
            met=st.tail <= TARGET_P99 and extra == 0,
        )
    )
    sk = Stats.of(kernel, "s")
    s.add(
        Row(bench, "limit: kernel says exited (pidfd)", "s", sk, ratio(st.median, sk.median, "s"))
    )
    progress(f"death: 1 s is_alive poll baseline, {reps} plain children")
    polled = Stats.of(run_async(mode, lambda: is_alive_poll(reps)), "s")
    s.add(
        Row(bench, "baseline: 1 s is_alive poll", "s", polled, ratio(st.median, polled.median, "s"))
    )

    instances, rounds = mode.pick((15, 2), (20, 5))
    progress(f"death: supervisord, {instances} instances x {rounds} kills (installs on first use)")
    try:
        exe, version = supervisord.ensure_installed(within=mode.pick(90.0, 300.0))
        notified, reaped = supervisord.kill_latencies(exe, instances, rounds)
    except (supervisord.Unavailable, TimeoutError) as exc:
        s.not_measured(bench, "baseline: supervisord", "s", str(exc))
        version = ""
    else:
        sv = Stats.of(notified, "s")
        s.add(
            Row(
                bench,
                f"baseline: supervisord {version}: listener notified",
                "s",
                sv,
                ratio(st.median, sv.median, "s"),
            )
        )
        sr = Stats.of(reaped, "s")
        s.add(
            Row(
                bench,
                f"baseline: supervisord {version}: reaped (its log)",
                "s",
                sr,
                ratio(st.median, sr.median, "s"),
            )
        )
    seen = ", ".join(f"{k} {v}" for k, v in detectors.most_common())
    s.notes += [
        f"Ours: {reps} Ready echo runners, {BATCH} alive at a time in one event loop, each "
        "SIGKILLed from outside; from the kill to the host receiving the RunnerFailed status. "
        f"First detector: {seen}. Extra RunnerFailed reports: {extra} (must be 0).",
        "The kernel's share is measured on the same kills: a pidfd of the runner, awaited "
        "in the same loop, becomes readable when the process has exited (a Python process "
        "takes milliseconds to tear down on a busy machine). The supervisor's own "
        f"share (RunnerFailed received minus pidfd readable): median {fmt(own.median, 's')}, "
        f"p99 {fmt(own.tail, 's')}.",
        f"1 s is_alive poll: {reps} plain spawned children, each polled every second by its "
        "own task and killed at a random moment; expected ~0.5 s on average, up to 1 s.",
        f"supervisord {version or '(not measured)'}: one `sleep 1000` program per supervisord "
        f"({instances} supervisords side by side, {rounds} kills each at random moments), "
        "autorestart on. 'listener notified' is when an event listener subscribed to "
        "PROCESS_STATE received PROCESS_STATE_EXITED (what a peer reacting to deaths sees); "
        "'reaped' is supervisord's own 'exited:' log line, whose timestamps have 1 ms "
        "resolution (truncated, so values are good to about +-1 ms).",
    ]
    s.plot_latencies()
    return s
