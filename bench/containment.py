"""Containment: what the keeper buys and what it costs, measured in one run.

- runner SIGKILL while a fork child holds its fds -> RunnerFailed at the host, against
  the kernel's floor (a pidfd of the runner, readable once it has exited);
- host SIGKILL -> the last process of its runner's tree gone (keeper, runner, a fork
  child and a ``setsid`` daemon), seen through pidfds of each;
- spawn -> Ready with the keeper against ``containment="group"``, interleaved;
- the keeper's own memory: USS (pages only it maps) and PSS, from ``smaps_rollup``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
import psutil

from bench.common import Mode, exited_at, fleet, progress, run_async
from bench.report import Row, Section, Stats, fmt, ratio
from supervisor import RunnerSpec, SupervisorConfig
from supervisor.config import ContainmentMode
from supervisor.core.procfs import uss

ROOT = Path(__file__).resolve().parent.parent
BATCH = 5
TARGET_P99 = 0.020  # as death detection without children: the children change nothing
FORK_CHILD = RunnerSpec(engine="bench.engines:ForkChildEngine")

_HOST = """\
import json, math, sys, anyio
from supervisor import RunnerSpec, RunnerSupervisor, SupervisorConfig
from supervisor.protocol import LoadModel, TaskStatusUpdated

async def main():
    send, recv = anyio.create_memory_object_stream(math.inf)
    spec = RunnerSpec(engine="bench.engines:ForkChildEngine",
                      options={"daemon": True, "pid_file": sys.argv[1]})
    sup = RunnerSupervisor.create(spec=spec, event_sender=send,
                                  config=SupervisorConfig(containment=sys.argv[2]))
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        await sup.start_task(LoadModel(task_id="load"))
        async for event in recv:
            if isinstance(event, TaskStatusUpdated) and event.status.terminal:
                break
        print(sup.pid, flush=True)
        await anyio.sleep(600)

if __name__ == "__main__":
    anyio.run(main)
"""


async def kills(
    reps: int, containment: ContainmentMode
) -> tuple[list[float], list[float], list[float], Counter[str]]:
    """Kill -> RunnerFailed; kill -> the runner's pidfd readable; kill -> the tree gone
    (the pidfd of the process multiprocessing started: the keeper, or the runner)."""
    config = SupervisorConfig(containment=containment)
    seen: list[float] = []
    floor: list[float] = []
    tree: list[float] = []
    detectors: Counter[str] = Counter()
    while len(seen) < reps:
        async with fleet() as f:
            members = await f.spawn_ready(min(BATCH, reps - len(seen)), FORK_CHILD, config)
            for w in members:
                top = w.pid if containment == "group" else psutil.Process(w.pid).ppid()
                gone: list[float] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(exited_at, os.pidfd_open(top), gone)
                    failed, exited = await w.kill_and_time()
                seen.append(failed)
                floor.append(exited)
                tree.append(gone[0] - (w.failed_at or 0.0) + failed)
                assert w.failure is not None
                detectors[w.failure.detected_by] += 1
        progress(f"containment: {containment} kills {len(seen)}/{reps}")
    return seen, floor, tree, detectors


def host_kill(tmp: Path, containment: str) -> tuple[float, int]:
    """SIGKILL a host; seconds until the last of its runner's tree exited, and its size."""
    pid_file = tmp / "children"
    script = tmp / "host.py"
    script.write_text(_HOST)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOGURU_LEVEL": "WARNING"}
    host = subprocess.Popen(
        [sys.executable, str(script), str(pid_file), containment],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    pids: list[int] = []
    fds: list[int] = []
    try:
        assert host.stdout is not None
        runner = int(host.stdout.readline())
        pids = [int(p) for p in pid_file.read_text().split()]
        pids += [runner, psutil.Process(runner).ppid()]
        fds = [os.pidfd_open(p) for p in pids]
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        t0 = time.monotonic()
        host.kill()
        pending = set(fds)
        while pending and time.monotonic() - t0 < 10:
            for fd, _ in poller.poll(100):
                pending.discard(fd)
                poller.unregister(fd)
        took = time.monotonic() - t0
        if pending:
            raise RuntimeError(f"{len(pending)} of the runner's tree outlived its host by 10 s")
        return took, len(pids)
    finally:
        host.kill()
        host.wait()
        # The keeper cleans up after a dead host; kill it last, or its tree is orphaned.
        deadline = time.monotonic() + 5
        while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        for pid in pids:  # children, runner, keeper: in that order
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
        for fd in fds:
            os.close(fd)
        if host.stdout is not None:
            host.stdout.close()


def _keeper_memory(runner: int) -> tuple[float, float] | None:
    keeper = psutil.Process(runner).ppid()
    private = uss(keeper)
    try:
        with open(f"/proc/{keeper}/smaps_rollup") as f:
            pss = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:"))
    except (OSError, StopIteration):
        return None
    return (float(private), float(pss)) if private is not None else None


async def ready_times(reps: int) -> tuple[dict[str, list[float]], list[tuple[float, float]]]:
    """Spawn -> RunnerReady at the host, keeper and group interleaved; keeper memory."""
    times: dict[str, list[float]] = {"keeper": [], "group": []}
    memory: list[tuple[float, float]] = []
    for i in range(reps):
        order: tuple[ContainmentMode, ...] = ("keeper", "group") if i % 2 else ("group", "keeper")
        for layer in order:
            async with fleet() as f:
                t0 = time.monotonic()
                w = f.spawn(config=SupervisorConfig(containment=layer))
                ready = await w.ready()
                times[layer].append(ready - t0)
                if layer == "keeper":
                    mem = _keeper_memory(w.pid)
                    if mem is not None:
                        memory.append(mem)
    return times, memory


def run(mode: Mode) -> Section:
    s = Section("Containment (keeper)")
    reps = mode.pick(10, 100)
    bench = "containment: runner SIGKILL, fork child holds its fds"
    progress(f"containment: {reps} runner kills, keeper and group")
    seen, floor, tree, detectors = run_async(mode, lambda: kills(reps, "keeper"))
    st = Stats.of(seen, "s")
    sf = Stats.of(floor, "s")
    stree = Stats.of(tree, "s")
    s.add(
        Row(
            bench,
            "ours, keeper: RunnerFailed at host",
            "s",
            st,
            target=f"p99 <= {TARGET_P99 * 1e3:g} ms",
            met=st.tail <= TARGET_P99,
        )
    )
    s.add(Row(bench, "limit: runner exited (its pidfd)", "s", sf, ratio(st.median, sf.median, "s")))
    s.add(
        Row(
            bench,
            "limit: tree gone (keeper's pidfd)",
            "s",
            stree,
            ratio(st.median, stree.median, "s"),
        )
    )
    gseen, _, _, gdetectors = run_async(mode, lambda: kills(reps, "group"))
    sg = Stats.of(gseen, "s")
    s.add(Row(bench, "ours, containment=group", "s", sg, ratio(st.median, sg.median, "s")))

    host_reps = mode.pick(3, 20)
    progress(f"containment: {host_reps} host kills")
    with tempfile.TemporaryDirectory() as tmp:
        results = [host_kill(Path(tmp), "keeper") for _ in range(host_reps)]
    sh = Stats.of([r[0] for r in results], "s")
    s.add(Row("containment: host SIGKILL -> last of tree gone", "ours, keeper", "s", sh))

    ready_reps = mode.pick(6, 40)
    progress(f"containment: {ready_reps} x 2 spawns to Ready")
    times, memory = run_async(mode, lambda: ready_times(ready_reps))
    rk, rg = Stats.of(times["keeper"], "s"), Stats.of(times["group"], "s")
    ready_bench = "containment: spawn -> Ready"
    s.add(Row(ready_bench, "ours, keeper", "s", rk))
    s.add(Row(ready_bench, "containment=group", "s", rg, ratio(rk.median, rg.median, "s")))
    if memory:
        s.add(
            Row(
                "containment: keeper memory",
                "USS (its own pages)",
                "B",
                Stats.of([m[0] for m in memory], "B"),
            )
        )
        s.add(Row("containment: keeper memory", "PSS", "B", Stats.of([m[1] for m in memory], "B")))
    else:
        s.not_measured("containment: keeper memory", "USS", "B", "no smaps_rollup")

    def seen_by(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common())

    s.notes += [
        f"Runner kills: {reps} Ready runners of an engine whose load() starts a fork-started "
        "multiprocessing child (it inherits the runner's pipes and multiprocessing's "
        f"sentinel), {BATCH} alive at a time, each runner SIGKILLed from outside. First "
        f"detector, keeper: {seen_by(detectors)}; group: {seen_by(gdetectors)}. The "
        "limit rows are pidfds awaited in the same loop: of the runner, and of its keeper, "
        "which exits (with the runner's status) only once it has killed and reaped the "
        "rest of the tree. RunnerFailed waits for the keeper's exit status, so it comes "
        "after the whole tree is gone: a replacement never starts beside the old "
        "runner's children (and the GPU memory they hold). Supervisor's own share "
        f"(RunnerFailed minus tree gone): median {fmt(st.median - stree.median, 's')}. "
        "Under group the fork child is only killed with the runner's process group.",
        f"Host kills: {host_reps} hosts (a Python script supervising one such runner plus "
        "a `setsid sleep` daemon), each SIGKILLed once its runner was loaded; time until "
        f"pidfds of all {results[0][1]} processes of the tree (keeper, runner, fork child, "
        "daemon) were readable.",
        f"Spawn -> Ready: {ready_reps} runners per layer, echo engine, alternating; from "
        "`RunnerSupervisor.create` to the host receiving RunnerReady after LoadModel and "
        "Warmup. The keeper's fork happens in the runner's bootstrap.",
        "Keeper memory: after Ready, from /proc/<keeper>/smaps_rollup. USS is what a keeper "
        "adds to the machine: the pages of its pre-fork image that the runner has since "
        "copied on write, and its own small heap.",
    ]
    return s
