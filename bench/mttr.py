"""MTTR: SIGKILL -> a replacement runner Ready (LoadModel + Warmup done), per start method.

Measured two ways. Directly: on RunnerFailed the host creates a new RunnerSupervisor
and drives LoadModel + Warmup itself. And through the restart policy
(`RestartingSupervisor`, zero backoff), with and without a prespawned spare runner.
Echo engine, zero load and warm-up time; the runner being replaced is Ready and idle
when it is killed, as after an OOM kill between requests. Time runs from the kill to
the host receiving the replacement's RunnerReady.
"""

from __future__ import annotations

import random
from functools import partial

import anyio

from bench.common import Mode, fleet, progress, run_async
from bench.report import Row, Section, Stats, fmt, ratio
from supervisor import RestartingSupervisor, RestartPolicy, RunnerSpec, SupervisorConfig
from supervisor.config import StartMethod
from supervisor.protocol import BaseEvent, RunnerReady, RunnerStatusUpdated

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


async def policy_restarts(method: StartMethod, reps: int, prespawn: bool) -> list[float]:
    """MTTR samples through RestartingSupervisor (zero backoff, no intensity limit)."""
    policy = RestartPolicy(
        backoff_base=0.0, jitter=0.0, max_restarts=10**6, restart_window=1.0, prespawn=prespawn
    )
    readies: list[float] = []  # receive time of each RunnerReady
    samples: list[float] = []
    rng = random.Random(5)

    def stamp(now: float, event: BaseEvent) -> None:
        if isinstance(event, RunnerStatusUpdated) and isinstance(event.status, RunnerReady):
            readies.append(now)

    async with fleet() as f:
        w = f.host(
            lambda send: RestartingSupervisor(
                spec=RunnerSpec(engine="echo"),
                event_sender=send,
                config=SupervisorConfig(start_method=method),
                policy=policy,
            ),
            on_event=stamp,
        )

        async def ready_count(n: int) -> float:
            await w.wait(lambda: len(readies) >= n, within=30)
            return readies[n - 1]

        await ready_count(1)
        for i in range(reps):
            await anyio.sleep(rng.uniform(0.1, 0.2))  # let the spare (if any) come up
            t0 = w.sigkill()
            samples.append(await ready_count(i + 2) - t0)
    return samples


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
    bench = "MTTR via RestartingSupervisor (zero backoff)"
    for method, prespawn in (("spawn", False), ("forkserver", False), ("spawn", True)):
        label = f"ours, {method}" + (", prespawned spare" if prespawn else "")
        progress(f"mttr: {reps} policy restarts, {label}")
        st = Stats.of(run_async(mode, partial(policy_restarts, method, reps, prespawn)), "s")
        s.add(
            Row(
                bench,
                label,
                "s",
                st,
                target=f"p50 <= {TARGET_P50 * 1e3:g} ms",
                met=st.median <= TARGET_P50,
            )
        )
    spawn, fork = medians["spawn"], medians["forkserver"]
    s.notes.insert(
        0,
        f"{reps} restarts per start method, one after another in one event loop; the first "
        "runner (and the forkserver) is started before any sample. forkserver is "
        + (f"{spawn / fork:.2f}x faster" if fork < spawn else f"{fork / spawn:.2f}x slower")
        + " than spawn here (medians).",
    )
    s.plot_latencies()
    return s
