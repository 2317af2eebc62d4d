"""The GPU checks, each measured beside its baseline in the same run.

`Setup` says what this machine has. With a GPU the runners run `CudaEngine`; in a
dry run (no GPU) they run `StandInEngine`, which ends the same prompts the way CUDA
would, so every check's plumbing runs on a CPU; rows that need NVML or py-spy say
why they were not measured. Dry-run figures say nothing about GPUs.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from bench.common import Watched, fleet, progress
from bench.gpu import plain
from bench.report import Row, Section, Stats, ratio
from supervisor import RestartingSupervisor, RestartPolicy, RunnerSpec, SupervisorConfig
from supervisor.protocol import (
    BaseEvent,
    Generate,
    RunnerReady,
    RunnerStatusUpdated,
    TaskStatus,
)

SPARE_STAGES = ("imported", "prepared", "loaded")
SPARE_STAGE_FIELD = "spare_stage"
#: Words of a native frame that is a CUDA call (driver, runtime, cuBLAS).
CUDA_FRAMES = ("cuLaunchKernel", "cudaLaunch", "cublas", "cuCtxSynchronize", "libcuda")


@dataclass
class Setup:
    """What this run has: a GPU (and NVML), the engine its runners run, repetitions."""

    gpu: bool
    weights_mb: int = 2048
    reps: int = 5
    #: NVML initialised here (at the start of the run)
    nvml: bool = False
    #: a stand-in for pynvml (tests); None: the real one
    nvml_module: Any = None
    device: str = "no GPU"
    driver: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> RunnerSpec:
        if self.gpu:
            return RunnerSpec(
                engine="bench.gpu.engine:CudaEngine", options={"weights_mb": self.weights_mb}
            )
        return RunnerSpec(engine="bench.gpu.standin:StandInEngine")

    @property
    def engine_words(self) -> str:
        if self.gpu:
            return f"CUDA engine, {self.weights_mb} MiB"
        return "dry run: CPU stand-in engine"


def has_spare_stage() -> bool:
    return SPARE_STAGE_FIELD in {f.name for f in dataclasses.fields(RestartPolicy)}


# ------------------------------------------------------------------- death
async def death(setup: Setup, s: Section) -> None:
    bench = "GPU death: SIGKILL -> RunnerFailed"
    seen: list[float] = []
    kernel: list[float] = []
    progress(f"gpu: death, {setup.reps} runners ({setup.engine_words})")
    async with fleet() as f:
        members = [f.spawn(setup.spec) for _ in range(setup.reps)]
        for m in members:
            await m.ready(within=120)
        for m in members:
            a, b = await m.kill_and_time(within=30)
            seen.append(a)
            kernel.append(b)
    ours = Stats.of(seen, "s")
    s.add(Row(bench, f"ours: RunnerFailed at host ({setup.engine_words})", "s", ours))
    lim = Stats.of(kernel, "s")
    s.add(Row(bench, "same kills: pidfd readable", "s", lim, ratio(ours.median, lim.median, "s")))
    progress(f"gpu: death baseline, {setup.reps} plain processes")
    plain_exits = await plain_deaths(setup)
    base = Stats.of(plain_exits, "s")
    s.add(
        Row(
            bench,
            "baseline: plain " + ("CUDA" if setup.gpu else "Python") + " process, pidfd readable",
            "s",
            base,
            ratio(ours.median, base.median, "s"),
        )
    )
    s.notes.append(
        f"Death: {setup.reps} Ready runners ({setup.engine_words}) SIGKILLed one at a time; "
        "'pidfd readable' is when the kernel said the process had exited (CUDA teardown "
        "included). The baseline processes hold the same memory without any supervisor."
    )


async def plain_deaths(setup: Setup) -> list[float]:
    ctx = multiprocessing.get_context("spawn")
    out: list[float] = []
    for _ in range(setup.reps):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=plain.hold, args=(child, setup.weights_mb, setup.gpu))
        proc.start()
        child.close()
        try:
            with anyio.fail_after(120):
                await anyio.wait_readable(parent.fileno())
            parent.recv()
            assert proc.pid is not None
            pidfd = os.pidfd_open(proc.pid)
            try:
                t0 = time.monotonic()
                os.kill(proc.pid, signal.SIGKILL)
                with anyio.fail_after(30):
                    await anyio.wait_readable(pidfd)
                out.append(time.monotonic() - t0)
            finally:
                os.close(pidfd)
        finally:
            parent.close()
            if proc.exitcode is None:
                proc.kill()
            proc.join(30)
            proc.close()
    return out


# -------------------------------------------------------------------- MTTR
async def policy_mttr(spec: RunnerSpec, policy: RestartPolicy, reps: int) -> list[float]:
    """SIGKILL -> the next incarnation's RunnerReady at the host, through the policy."""
    readies: list[float] = []

    def stamp(now: float, event: BaseEvent) -> None:
        if isinstance(event, RunnerStatusUpdated) and isinstance(event.status, RunnerReady):
            readies.append(now)

    samples: list[float] = []
    async with fleet() as f:
        w = f.host(
            lambda send: RestartingSupervisor(
                spec=spec, event_sender=send, config=SupervisorConfig(), policy=policy
            ),
            on_event=stamp,
        )
        await w.wait(lambda: len(readies) >= 1, within=120)
        sup = w.sup
        assert isinstance(sup, RestartingSupervisor)
        for i in range(reps):
            if policy.prespawn:
                with anyio.fail_after(120):
                    # at its stage: prepared (CUDA up) or loaded (Ready) before the kill
                    while not sup.spare_ready:  # noqa: ASYNC110 - a spare sends no event
                        await anyio.sleep(0.02)
                # an imported spare: nothing reports the end of its imports (torch)
                await anyio.sleep(1.0 if spec.engine != "echo" else 0.1)
            t0 = w.sigkill()
            want = i + 2
            await w.wait(lambda n=want: len(readies) >= n, within=120)  # type: ignore[misc]
            samples.append(readies[i + 1] - t0)
    return samples


async def mttr(setup: Setup, s: Section) -> None:
    bench = "GPU MTTR: SIGKILL -> next Ready"
    base = dict(backoff_base=0.0, jitter=0.0, max_restarts=10**6, restart_window=1.0)
    progress(f"gpu: MTTR with spawn, {setup.reps} restarts")
    spawn = Stats.of(await policy_mttr(setup.spec, RestartPolicy(**base), setup.reps), "s")  # type: ignore[arg-type]
    s.add(Row(bench, f"baseline: spawn ({setup.engine_words})", "s", spawn))
    progress(f"gpu: MTTR with prespawn, {setup.reps} restarts")
    pre = RestartPolicy(**base, prespawn=True)  # type: ignore[arg-type]
    spare = Stats.of(await policy_mttr(setup.spec, pre, setup.reps), "s")
    s.add(
        Row(bench, "prespawn (today's spare)", "s", spare, ratio(spare.median, spawn.median, "s"))
    )
    for stage in SPARE_STAGES:
        subject = f"prespawn, spare_stage={stage}"
        if not has_spare_stage():
            s.not_measured(bench, subject, "s", "not available (RestartPolicy has no spare_stage)")
            continue
        progress(f"gpu: MTTR with a {stage} spare, {setup.reps} restarts")
        policy = RestartPolicy(**base, prespawn=True, **{SPARE_STAGE_FIELD: stage})  # type: ignore[arg-type]
        st = Stats.of(await policy_mttr(setup.spec, policy, setup.reps), "s")
        s.add(Row(bench, subject, "s", st, ratio(st.median, spawn.median, "s")))
    s.notes.append(
        f"MTTR: RestartingSupervisor with zero backoff, {setup.reps} SIGKILLs of a Ready "
        "runner each; from the kill to the host receiving the next incarnation's "
        "RunnerReady (load and warm-up included). With prespawn the spare is up before "
        "each kill. Ratios compare each row with the spawn row."
    )


# ------------------------------------------------------------ fatal lines
async def _fault(setup: Setup, prompt: str, config: SupervisorConfig) -> tuple[float, Watched]:
    async with fleet() as f:
        w = f.spawn(setup.spec, config)
        await w.ready(within=120)
        t0 = time.monotonic()
        await w.sup.start_task(Generate(task_id=prompt, prompt=prompt, max_tokens=1))
        await w.wait(lambda: w.failure is not None or prompt in w.terminal, within=60)
        return time.monotonic() - t0, w


async def cuda_errors(setup: Setup, s: Section) -> None:
    bench = "CUDA errors -> RunnerFailed"
    for prompt, words in (
        ("device-assert", "device-side assert"),
        ("illegal-address", "illegal address"),
    ):
        progress(f"gpu: {words}, with and without fatal patterns")
        took, w = await _fault(setup, prompt, SupervisorConfig())
        how = (
            "no failure" if w.failure is None else f"{w.failure.reason} by {w.failure.detected_by}"
        )
        s.add(Row(bench, f"ours: {words}", "s", Stats.of([took], "s"), note=how))
        took0, w0 = await _fault(setup, prompt, SupervisorConfig(default_fatal_patterns=False))
        how0 = (
            "no failure"
            if w0.failure is None
            else f"{w0.failure.reason} by {w0.failure.detected_by}"
        )
        s.add(
            Row(
                bench,
                f"baseline: {words}, fatal patterns off",
                "s",
                Stats.of([took0], "s"),
                ratio(took, took0, "s"),
                note=how0,
            )
        )
    progress("gpu: CUDA OOM")
    async with fleet() as f:
        w = f.spawn(setup.spec)
        await w.ready(within=120)
        t0 = time.monotonic()
        oom = await w.run_task(Generate(task_id="oom", prompt="oom", max_tokens=1), within=60)
        took = time.monotonic() - t0
        after = await w.run_task(Generate(task_id="after", prompt="x", max_tokens=4), within=60)
        lived = (
            w.failure is None
            and oom == str(TaskStatus.Failed)
            and after == str(TaskStatus.Complete)
        )
        s.add(
            Row(
                bench,
                "CUDA OOM: the task fails, the runner lives",
                "s",
                Stats.of([took], "s"),
                note=f"OOM task {oom}, next task {after}: "
                + ("as wanted" if lived else "NOT as wanted"),
                met=lived if setup.gpu else None,
            )
        )
    s.notes.append(
        "CUDA errors: one Ready runner per error, the fault raised by a task; time from "
        "start_task to RunnerFailed. The baseline turns the default fatal patterns off: "
        "the runner then ends by its own exit (traceback, CUDA teardown), or lingers."
    )


# ------------------------------------------------------------- NVML memory
async def nvml_memory(setup: Setup, s: Section) -> None:
    bench = "NVML: a runner's GPU memory by pid"
    if not setup.nvml:
        s.not_measured(bench, "GPU watcher reading", "B", "no NVML (no GPU)")
        return
    from supervisor.gpu.nvml import Nvml
    from supervisor.gpu.watcher import GpuWatcher

    progress("gpu: NVML pid memory")
    async with fleet() as f:
        w = f.host(
            lambda send: RestartingSupervisor(
                spec=setup.spec, event_sender=send, policy=RestartPolicy(mode="never")
            ),
            on_event=None,
        )
        sup = w.sup
        assert isinstance(sup, RestartingSupervisor)
        await w.wait(lambda: sup.phase == "ready", within=120)
        nvml = Nvml.open(setup.nvml_module)
        assert nvml is not None
        watcher = GpuWatcher(nvml, lambda: {sup.runner_id: sup}, interval=0.1)
        readings: list[float] = []
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run)
            for _ in range(20):
                t0 = time.monotonic()
                await anyio.to_thread.run_sync(nvml.sample)
                readings.append(time.monotonic() - t0)
            await watcher.next_reading()
            gpu = watcher.runner_gpu(sup.runner_id)
            registered = watcher.registered
            tg.cancel_scope.cancel()
        held = 0 if gpu is None else gpu.memory
        s.add(
            Row(
                bench,
                "ours: watcher, the runner's tree",
                "B",
                Stats.of([held], "B"),
                note=f"weights {setup.weights_mb} MiB; "
                f"GPUs {', '.join(gpu.gpus) if gpu else 'none'}",
                met=held >= setup.weights_mb * 2**20 if setup.gpu else None,
            )
        )
        ours = Stats.of(readings, "s")
        s.add(Row("NVML: one reading of every GPU", "ours: in-process NVML", "s", ours))
        smi = shutil.which("nvidia-smi")
        if smi is None:
            s.not_measured(
                "NVML: one reading of every GPU", "baseline: nvidia-smi", "s", "no nvidia-smi"
            )
        else:
            times = []
            for _ in range(5):
                t0 = time.monotonic()
                await anyio.run_process(
                    [smi, "--query-compute-apps=pid,used_memory", "--format=csv"], check=False
                )
                times.append(time.monotonic() - t0)
            st = Stats.of(times, "s")
            s.add(
                Row(
                    "NVML: one reading of every GPU",
                    "baseline: nvidia-smi query",
                    "s",
                    st,
                    ratio(ours.median, st.median, "s"),
                )
            )
    s.notes.append(
        "NVML: the node's GPU watcher matched NVML's compute processes to the runner's "
        "process tree; its figure must hold at least the weights (the CUDA context adds "
        "a few hundred MiB). Xid critical-error events registered on GPU(s): "
        f"{', '.join(map(str, registered)) or 'none'}."
    )


# ------------------------------------------------------------ native stacks
def _py_spy() -> str | None:
    return shutil.which("py-spy")


async def wedged_stacks(setup: Setup, s: Section) -> None:
    bench = "Stacks of a runner wedged in a CUDA call"
    spy = _py_spy()
    if spy is None:
        s.not_measured(bench, "py-spy dump --native", "n", "py-spy not installed (bring its wheel)")
        return
    progress("gpu: native stacks of a wedged runner")
    async with fleet() as f:
        w = f.spawn(setup.spec)
        await w.ready(within=120)
        sup = w.sup
        pid = await sup.wait_runner_pid()  # type: ignore[union-attr]
        await sup.start_task(Generate(task_id="wedge", prompt="wedge", max_tokens=1))
        await anyio.sleep(5.0)  # the launch queue fills
        results = {}
        for native in (True, False):
            argv = [spy, "dump", "--pid", str(pid)] + (["--native"] if native else [])
            t0 = time.monotonic()
            proc = await anyio.run_process(argv, check=False)
            took = time.monotonic() - t0
            text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
            frame = next(
                (line.strip() for line in text.splitlines() if any(c in line for c in CUDA_FRAMES)),
                "",
            )
            if not frame:  # say where it was instead: the first frame of the dump
                frame = "none; top: " + next(
                    (ln.strip() for ln in text.splitlines() if ln.startswith("    ")), "?"
                )
            results[native] = (took, frame, text)
        w.sup.kill()  # type: ignore[union-attr]
    for native, (took, frame, _) in results.items():
        subject = "ours: py-spy dump --native" if native else "baseline: py-spy dump (Python only)"
        s.add(
            Row(
                bench,
                subject,
                "s",
                Stats.of([took], "s"),
                note="CUDA frame: " + frame[:80],
                met=not frame.startswith("none") if native and setup.gpu else None,
            )
        )
    s.notes.append(
        "Stacks: a task launches 8192x8192 matmuls without synchronising until the host "
        "thread blocks in the CUDA launch queue; py-spy then dumps the runner's stacks, "
        "with and without native frames (times are the dump's own)."
    )


CHECKS: tuple[Callable[[Setup, Section], Any], ...] = (
    death,
    mttr,
    cuda_errors,
    nvml_memory,
    wedged_stacks,
)
