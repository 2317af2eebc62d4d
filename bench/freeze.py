"""Freeze (SIGSTOP) and wedge (main loop blocked) detection against the configured bounds.

- freeze: Ready runners SIGSTOPped at random moments; the heartbeat goes stale and
  psutil confirms the stop. Bound: ``config.freeze_bound`` (+ one poll).
- wedge: the chaos HANG trigger blocks the runner's main loop after the first chunk
  while its heartbeat thread keeps beating; only the decode deadline can catch it.
  Latency runs from the host receiving that first chunk (the last progress tick) to
  RunnerFailed. Half the runners have ``dump_stacks=False``: with the default, the
  supervisor asks the runner for a stack dump (SIGUSR1) and reads its output for up
  to 0.15 s before reporting, so the report is later than the detection.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from functools import partial

import anyio

from bench.common import Mode, Watched, fleet, gather, progress, run_async
from bench.report import Row, Section, Stats
from runners.chaos import HANG
from supervisor import RunnerSpec, SupervisorConfig
from supervisor.protocol import Generate

FREEZE_CONFIG = SupervisorConfig()
DECODE_TIMEOUT = 1.0
STACK_DRAIN = 0.15  # supervisor.core.runner_supervisor: output.drain(0.15) after SIGUSR1
#: The runner stamps each progress tick, so the supervisor wakes at the deadline itself;
#: what is left is the event loop's wake-up and the report.
WAKE_SLACK = 0.05


async def frozen(reps: int) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    how: Counter[str] = Counter()
    rng = random.Random(3)
    async with fleet() as f:
        members = await f.spawn_ready(reps, config=FREEZE_CONFIG)

        async def freeze(w: Watched) -> None:
            # any phase of the heartbeat checks
            await anyio.sleep(rng.uniform(0, 2 * FREEZE_CONFIG.heartbeat_check_interval))
            t0 = time.monotonic()
            os.kill(w.pid, signal.SIGSTOP)
            latencies.append(await w.wait_failed(within=30) - t0)
            assert w.failure is not None
            how[f"{w.failure.reason} by {w.failure.detected_by}"] += 1

        await gather([partial(freeze, w) for w in members])
    return latencies, how


async def wedged(reps: int) -> tuple[list[float], list[float], Counter[str]]:
    plain: list[float] = []
    dumped: list[float] = []
    how: Counter[str] = Counter()
    async with fleet() as f:
        configs = [
            SupervisorConfig(chaos=True, decode_timeout=DECODE_TIMEOUT, dump_stacks=i % 2 == 1)
            for i in range(reps)
        ]
        members = [f.spawn(RunnerSpec(engine="echo"), config=c) for c in configs]
        await gather([w.ready for w in members])

        async def wedge(w: Watched, out: list[float]) -> None:
            await w.sup.start_task(Generate(task_id="hang", prompt=HANG, max_tokens=8))
            failed = await w.wait_failed(within=DECODE_TIMEOUT + 30)
            out.append(failed - w.first_chunk_at["hang"])
            assert w.failure is not None
            how[f"{w.failure.reason} by {w.failure.detected_by}"] += 1

        await gather(
            [
                partial(wedge, w, dumped if c.dump_stacks else plain)
                for w, c in zip(members, configs, strict=True)
            ]
        )
    return plain, dumped, how


def run(mode: Mode) -> Section:
    s = Section("Freeze and wedge detection")
    reps = mode.pick(10, 40)
    cfg = FREEZE_CONFIG
    bound = cfg.freeze_bound
    progress(f"freeze: SIGSTOP {reps} Ready runners (bound {bound:g} s)")
    lat, how = run_async(mode, lambda: frozen(reps))
    st = Stats.of(lat, "s")
    limit = bound + cfg.poll_interval
    s.add(
        Row(
            "freeze: SIGSTOP -> RunnerFailed",
            "ours (defaults)",
            "s",
            st,
            ratio=f"p99 = {st.tail / bound:.2f}x freeze_bound",
            target=f"p99 <= freeze_bound {bound:g} s + poll {cfg.poll_interval:g} s",
            met=st.tail <= limit,
        )
    )
    wreps = mode.pick(10, 40)
    progress(
        f"freeze: wedge {wreps} runners with the HANG trigger (decode_timeout {DECODE_TIMEOUT:g} s)"
    )
    plain, dumped, whow = run_async(mode, lambda: wedged(wreps))
    check = WAKE_SLACK
    bench = "wedge: main loop blocked -> RunnerFailed"
    sp = Stats.of(plain, "s")
    s.add(
        Row(
            bench,
            "ours, dump_stacks=False",
            "s",
            sp,
            ratio=f"p99 = {sp.tail / DECODE_TIMEOUT:.2f}x decode_timeout",
            target=f"p99 <= decode_timeout {DECODE_TIMEOUT:g} s + wake {check:g} s",
            met=sp.tail <= DECODE_TIMEOUT + check,
        )
    )
    sd = Stats.of(dumped, "s")
    s.add(
        Row(
            bench,
            "ours, default (stack dump first)",
            "s",
            sd,
            ratio=f"p99 = {sd.tail / DECODE_TIMEOUT:.2f}x decode_timeout",
            target=f"p99 <= {DECODE_TIMEOUT:g} s + {check:g} s + {STACK_DRAIN:g} s dump",
            met=sd.tail <= DECODE_TIMEOUT + check + STACK_DRAIN,
        )
    )
    s.notes += [
        f"Freeze: {reps} Ready echo runners, default SupervisorConfig (heartbeat checked every "
        f"{cfg.heartbeat_check_interval:g} s, stale after {cfg.heartbeat_stale_checks} checks: "
        f"freeze_bound {bound:g} s), each SIGSTOPped at a random moment. Verdicts: "
        + ", ".join(f"{k} x{v}" for k, v in how.most_common())
        + ". A 1 s is_alive poll never sees a stopped process: it is alive.",
        f"Wedge: {wreps} runners with chaos=True, decode_timeout={DECODE_TIMEOUT:g} s, "
        f"progress checked every {check:g} s; the HANG trigger sleeps in the main loop after "
        "the first chunk while the heartbeat thread keeps beating. From the host receiving "
        "that chunk to RunnerFailed. Verdicts: "
        + ", ".join(f"{k} x{v}" for k, v in whow.most_common())
        + f". With dump_stacks (the default) the report waits up to {STACK_DRAIN:g} s for "
        "the runner's faulthandler dump, which then appears in RunnerFailed.diagnostics.",
    ]
    s.plot_latencies()
    return s
