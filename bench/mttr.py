"""MTTR: SIGKILL -> a replacement runner Ready (LoadModel + Warmup done), per start method.

Measured directly, without a restart wrapper: on RunnerFailed the host creates a new
RunnerSupervisor and drives LoadModel + Warmup (echo engine, zero load and warm-up
time, zero backoff) until the host receives RunnerReady. The runner being replaced
is Ready and idle when it is killed, as after an OOM kill between requests.
"""

from __future__ import annotations

import random
from functools import partial

import anyio

from bench.common import Mode, fleet, progress, run_async
from bench.report import Row, Section, Stats, fmt, ratio
from supervisor import RunnerSpec, SupervisorConfig
from supervisor.config import StartMethod

TARGET_P50 = 0.150
METHODS: tuple[StartMethod, ...] = ("spawn", "forkserver")


async def restarts(method: StartMethod, reps: int) -> tuple[list[float], list[float]]:
    """MTTR samples and, for each, the detection part (kill -> RunnerFailed)."""
    config = SupervisorConfig(start_method=method)
    spec = RunnerSpec(engine="echo")
    total: list[float] = []
    detect: list[float] = []
    rng = random.Random(4)
    async with fleet() as f:
        current = f.spawn(spec, config)
        await current.ready()  # also starts the forkserver, once, before any sample
        for _ in range(reps):
            await anyio.sleep(rng.uniform(0.02, 0.08))
            t0 = current.sigkill()
            failed = await current.wait_failed(within=10)
            current = f.spawn(spec, config)
            ready = await current.ready(within=30)
            total.append(ready - t0)
            detect.append(failed - t0)
    return total, detect


def run(mode: Mode) -> Section:
    reps = mode.pick(10, 40)
    s = Section("MTTR (death -> replacement Ready)")
    bench = "MTTR: SIGKILL -> replacement Ready"
    medians: dict[str, float] = {}
    for method in METHODS:
        progress(f"mttr: {reps} restarts with start_method={method}")
        total, detect = run_async(mode, partial(restarts, method, reps))
        st = Stats.of(total, "s")
        medians[method] = st.median
        vs = ""
        if method != METHODS[0]:
            vs = "vs spawn: " + ratio(st.median, medians[METHODS[0]], "s").removeprefix("ours ")
        s.add(
            Row(
                bench,
                f"ours, {method}",
                "s",
                st,
                ratio=vs,
                target=f"p50 <= {TARGET_P50 * 1e3:g} ms",
                met=st.median <= TARGET_P50,
            )
        )
        d = Stats.of(detect, "s")
        s.notes.append(
            f"{method}: of the median {fmt(st.median, 's')}, detection (kill -> RunnerFailed) "
            f"took {fmt(d.median, 's')}; the rest is starting the new process, importing the "
            "runner and running LoadModel + Warmup."
        )
    spawn, fork = medians["spawn"], medians["forkserver"]
    s.notes.insert(
        0,
        f"{reps} restarts per start method, one after another in one event loop; the first "
        "runner (and the forkserver) is started before any sample. forkserver is "
        + (f"{spawn / fork:.2f}x faster" if fork < spawn else f"{fork / spawn:.2f}x slower")
        + " than spawn here (medians).",
    )
    return s
