"""Spare stages: MTTR (SIGKILL -> the next incarnation Ready) with a fresh spawn and with
a prespawned spare at each `RestartPolicy.spare_stage`, all in one run.

Echo engine with short, nonzero start-up costs (prepare, load and warm-up each
``STARTUP`` seconds), so that each stage has something to skip; zero backoff. Before
each kill the spare waits at its stage (`RestartingSupervisor.spare_ready`). The
loaded spare's figure is then detection (kill -> RunnerFailed, also shown) plus the
hand-over; the kernel's own limit (the pidfd of the killed runner) is beside it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from functools import partial

import anyio

from bench import gates
from bench.common import Mode, exited_at, fleet, progress, run_async
from bench.report import Row, Section, Stats, fmt, ratio
from supervisor import RestartingSupervisor, RestartPolicy, RunnerSpec, SupervisorConfig
from supervisor.protocol import BaseEvent, RunnerFailed, RunnerReady, RunnerStatusUpdated
from supervisor.restart.policy import SPARE_STAGES, SpareStage

#: the issue's target for a loaded spare with the echo engine, p50
TARGET_LOADED_P50 = 0.015
#: seconds each of prepare, load and warm-up takes in the echo engine here
STARTUP = 0.05


@dataclass
class Samples:
    mttr: list[float] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)
    exit: list[float] = field(default_factory=list)


async def restarts(stage: SpareStage | None, reps: int) -> Samples:
    """``reps`` SIGKILLs of a Ready runner; ``stage`` None: no spare (spawn)."""
    policy = RestartPolicy(
        backoff_base=0.0,
        jitter=0.0,
        max_restarts=10**6,
        restart_window=1.0,
        prespawn=stage is not None,
        spare_stage=stage or "imported",
    )
    opts = {"prepare_time": STARTUP, "load_time": STARTUP, "warmup_time": STARTUP}
    readies: list[float] = []
    failed: list[float] = []
    out = Samples()
    rng = random.Random(7)

    def stamp(now: float, event: BaseEvent) -> None:
        if isinstance(event, RunnerStatusUpdated):
            if isinstance(event.status, RunnerReady):
                readies.append(now)
            elif isinstance(event.status, RunnerFailed):
                failed.append(now)

    async with fleet() as f:
        w = f.host(
            lambda send: RestartingSupervisor(
                spec=RunnerSpec(engine="echo", options=opts),
                event_sender=send,
                config=SupervisorConfig(),
                policy=policy,
            ),
            on_event=stamp,
        )
        sup = w.sup
        assert isinstance(sup, RestartingSupervisor)
        await w.wait(lambda: len(readies) >= 1, within=60)
        for i in range(reps):
            await anyio.sleep(rng.uniform(0.05, 0.1))
            if stage is not None:
                with anyio.fail_after(60):
                    while not sup.spare_ready:  # noqa: ASYNC110 - a spare sends no event
                        await anyio.sleep(0.01)
                if stage == "imported":
                    await anyio.sleep(0.1)  # nothing reports the end of its imports
            exited: list[float] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(exited_at, os.pidfd_open(w.pid), exited)
                await anyio.lowlevel.checkpoint()
                t0 = w.sigkill()
                await w.wait(lambda n=i + 2: len(readies) >= n, within=60)  # type: ignore[misc]
            out.mttr.append(readies[i + 1] - t0)
            out.detect.append(failed[i] - t0)
            out.exit.append(exited[0] - t0)
    return out


def run(mode: Mode) -> Section:
    reps = mode.pick(10, 40)
    s = Section("Spare stages (SIGKILL -> next incarnation Ready)")
    bench = "MTTR by spare stage (echo)"
    results: dict[str, Samples] = {}
    for stage in (None, *SPARE_STAGES):
        label = "spawn (no spare)" if stage is None else f"prespawn, spare_stage={stage}"
        progress(f"spares: {reps} restarts, {label}")
        results[label] = got = run_async(mode, partial(restarts, stage, reps))
        st = Stats.of(got.mttr, "s")
        spawn = Stats.of(results["spawn (no spare)"].mttr, "s")
        loaded = stage == "loaded"
        s.add(
            Row(
                bench,
                f"ours, {label}" if stage is not None else f"baseline: {label}",
                "s",
                st,
                ratio="" if stage is None else ratio(st.median, spawn.median, "s"),
                target=f"p50 <= {TARGET_LOADED_P50 * 1e3:g} ms" if loaded else "",
                met=(st.median <= TARGET_LOADED_P50) if loaded else None,
            )
        )
        if loaded:
            s.figures[gates.SPARES_LOADED_VS_SPAWN] = st.median / spawn.median
        d, e = Stats.of(got.detect, "s"), Stats.of(got.exit, "s")
        s.notes.append(
            f"{label}: median MTTR {fmt(st.median, 's')}, of which detection (kill -> "
            f"RunnerFailed) {fmt(d.median, 's')}; the killed runner's pidfd (the kernel's "
            f"limit) was readable after {fmt(e.median, 's')}."
        )
    s.notes.insert(
        0,
        f"{reps} SIGKILLs of a Ready, idle runner per row, one row after another in one "
        f"event loop each; echo engine with prepare, load and warm-up of {STARTUP * 1e3:g} ms "
        "each; zero backoff. Ratios compare each row with spawn. Before each kill the spare "
        "waited at its stage (an imported one 0.1 s more: nothing reports its imports' end). "
        "Figures from a loaded shared machine.",
    )
    s.plot_latencies()
    return s
