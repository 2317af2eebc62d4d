"""Recovery: a runner SIGKILLed mid-stream, what the client sees.

A `RestartingSupervisor` (echo engine, zero backoff, a prespawned spare) streams one
generation; after ``KILL_AT`` chunks reached the host, the runner is SIGKILLed. Per
``task_recovery``:

- ``replay``: the task runs again on the next runner; the chunks the host has are
  regenerated and compared, not sent again;
- ``resume``: the next runner continues from the first index the host lacks;
- ``fail`` (today's default) + the client resubmits the task when it sees ``Failed``,
  the baseline: the answer restarts from its first token.

Two figures per approach: the *stall* (the host's last chunk before the kill to its
first chunk of new content after it: for the baseline, the resubmitted task's chunk
at index ``KILL_AT``, the first one the client had not shown) and kill -> the answer
complete.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import anyio

from bench.common import Mode, Watched, fleet, progress, run_async
from bench.report import Row, Section, Stats, ratio
from supervisor import RestartingSupervisor, RestartPolicy, RunnerSpec
from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    Generate,
    Recovery,
    RunnerReady,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
)

TOKENS = 60
KILL_AT = 20
TOKEN_DELAY = 0.002
APPROACHES: tuple[Recovery, ...] = ("replay", "resume", "fail")


async def kills(mode: Recovery, reps: int) -> tuple[list[float], list[float]]:
    """Per rep: the client-visible stall and kill -> complete answer, in seconds."""
    policy = RestartPolicy(
        backoff_base=0.0, jitter=0.0, prespawn=True, task_recovery=mode, max_restarts=10**6
    )
    spec = RunnerSpec(engine="echo", options={"token_delay": TOKEN_DELAY})
    chunks: dict[str, list[tuple[float, int]]] = {}
    finals: dict[str, tuple[float, TaskStatus]] = {}
    readies: list[float] = []
    reached: dict[str, anyio.Event] = {}  # KILL_AT chunks of the task reached the host

    def stamp(now: float, event: BaseEvent) -> None:
        if type(event) is ChunkGenerated:
            got = chunks.setdefault(event.task_id, [])
            got.append((now, event.index))
            if len(got) == KILL_AT:
                reached.setdefault(event.task_id, anyio.Event()).set()
        elif isinstance(event, TaskStatusUpdated) and event.status.terminal:
            finals[event.task_id] = (now, event.status)
        elif isinstance(event, RunnerStatusUpdated) and isinstance(event.status, RunnerReady):
            readies.append(now)

    stalls: list[float] = []
    completes: list[float] = []
    async with fleet() as f:
        w = f.host(
            lambda send: RestartingSupervisor(
                spec=spec, event_sender=send, policy=policy, runner_id="bench"
            ),
            on_event=stamp,
        )
        await w.wait(lambda: bool(readies), within=60)
        for rep in range(reps):
            await anyio.sleep(0.3)  # the spare comes up
            stall, complete = await _one_kill(w, f"g{rep}", chunks, finals, reached)
            stalls.append(stall)
            completes.append(complete)
    return stalls, completes


async def _one_kill(
    w: Watched,
    tid: str,
    chunks: dict[str, list[tuple[float, int]]],
    finals: dict[str, tuple[float, TaskStatus]],
    reached: dict[str, anyio.Event],
) -> tuple[float, float]:
    task = Generate(task_id=tid, prompt="the quick brown fox", max_tokens=TOKENS)
    await w.sup.start_task(task)
    with anyio.fail_after(30):  # chunks wake no waiter: this one Event does
        await reached.setdefault(tid, anyio.Event()).wait()
    t0 = w.sigkill()
    last_before, seen = chunks[tid][-1][0], chunks[tid][-1][1] + 1
    await w.wait(lambda: tid in finals, within=30)
    answer = tid
    if finals[tid][1] is not TaskStatus.Complete:  # the baseline: the client resubmits
        answer = f"{tid}-again"
        await w.sup.start_task(dataclasses.replace(task, task_id=answer))
        await w.wait(lambda: answer in finals, within=30)
    assert finals[answer][1] is TaskStatus.Complete, finals[answer]
    new = [at for at, index in chunks[answer] if index >= seen and at > last_before]
    return new[0] - last_before, finals[answer][0] - t0


def run(mode: Mode) -> Section:
    reps = mode.pick(3, 20)
    s = Section("Recovery (runner SIGKILLed mid-stream)")
    stall_bench = "Recovery: client-visible stall (last chunk -> first new chunk)"
    done_bench = "Recovery: SIGKILL -> answer complete"
    results: dict[str, tuple[Stats, Stats]] = {}
    for approach in APPROACHES:
        progress(f"recovery: {reps} kills mid-stream, task_recovery={approach}")
        stalls, completes = run_async(mode, partial(kills, approach, reps))
        results[approach] = (Stats.of(stalls, "s"), Stats.of(completes, "s"))
    base_stall, base_done = results["fail"]
    for approach in APPROACHES:
        stall, done = results[approach]
        subject = "baseline: fail, client resubmits" if approach == "fail" else f"ours, {approach}"
        vs_stall = "" if approach == "fail" else ratio(stall.median, base_stall.median, "s")
        vs_done = "" if approach == "fail" else ratio(done.median, base_done.median, "s")
        s.add(Row(stall_bench, subject, "s", stall, ratio=vs_stall))
        s.add(Row(done_bench, subject, "s", done, ratio=vs_done))
    s.figures["recovery_resume_stall_p50_s"] = results["resume"][0].median
    s.figures["recovery_fail_stall_p50_s"] = base_stall.median
    s.notes.append(
        f"Echo engine, {TOKENS} tokens of {TOKEN_DELAY * 1e3:g} ms, SIGKILL after {KILL_AT} "
        f"chunks reached the host, zero backoff, a prespawned spare; {reps} kills per row. "
        "The stall counts from the last chunk the client got before the kill to the first "
        "chunk of content it had not had: replay regenerates the delivered tokens first "
        "(compared, not sent), resume starts with the next one, the resubmitting client "
        f"waits for the new task to reach index {KILL_AT} again."
    )
    s.notes.append(f"Measured at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    s.plot_latencies()
    return s
