"""What the evidence of a runner's end costs: the kernel's OOM word on a SIGKILL death,
and a py-spy dump of a wedged runner, each beside the plain death path.

Measured in one run:
- SIGKILL -> RunnerFailed at the host (Ready echo runners killed from outside, as the
  OOM killer would), with the OOM evidence read (what the supervisor does), against the
  same path with the read replaced by nothing (the plain death path; the worker-thread
  hand-off kept), runs interleaved;
- the read itself: the counters (memory cgroup and vmstat: every SIGKILL death), and
  the kernel log (only after the system counted an OOM kill): the host's one reader
  takes what was logged since its last read, against reading the whole /dev/kmsg ring
  at each death;
- what the runner pays while alive: `OomWitness.note` at each poll (its cgroup
  unchanged), against the /proc/PID/statm read a poll already does;
- ``py-spy dump --native`` of one idle Python process, and of two in parallel (a rank
  and its sibling), as the supervisor runs it before killing a wedged runner.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace

import anyio

from bench.common import Mode, fleet, progress, run_async
from bench.report import Row, Section, Stats, ratio
from supervisor.core import native_stacks
from supervisor.core.evidence import OomEvidence, OomWitness, kmsg


@contextlib.contextmanager
def _no_evidence() -> Iterator[None]:
    """The plain death path: the OOM evidence read replaced by nothing."""
    real = OomWitness.after_sigkill

    async def nothing(self: OomWitness, pids: object) -> OomEvidence:
        return OomEvidence()

    OomWitness.after_sigkill = nothing  # type: ignore[method-assign]
    try:
        yield
    finally:
        OomWitness.after_sigkill = real  # type: ignore[method-assign]


async def _deaths(rounds: int, batch: int) -> tuple[list[float], list[float]]:
    """(with evidence, without) SIGKILL -> RunnerFailed, alternating runner by runner."""
    ours: list[float] = []
    plain: list[float] = []
    for r in range(rounds):
        async with fleet() as f:
            members = await f.spawn_ready(batch)
            for i, w in enumerate(members):
                await anyio.sleep(0.02)
                if (i + r) % 2:
                    with _no_evidence():
                        plain.append((await w.kill_and_time())[0])
                else:
                    ours.append((await w.kill_and_time())[0])
        progress(f"evidence: deaths {len(ours) + len(plain)}/{rounds * batch}")
    return ours, plain


def _per_call(fn: object, calls: int, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t0) / calls)
    return samples


def _statm_read() -> None:
    with open(f"/proc/{os.getpid()}/statm", "rb") as f:
        f.read()


async def _dumps(rounds: int) -> tuple[list[float], list[float], bool]:
    """(one process, two in parallel) py-spy dump wall times; whether any dump worked."""
    code = "import time; print('up', flush=True); time.sleep(600)"
    one: list[float] = []
    two: list[float] = []
    worked = False
    async with (
        await anyio.open_process([sys.executable, "-c", code]) as a,
        await anyio.open_process([sys.executable, "-c", code]) as b,
    ):
        try:
            for proc in (a, b):
                assert proc.stdout is not None
                await proc.stdout.receive()
            for _ in range(rounds):
                t0 = time.perf_counter()
                lines = await native_stacks.dump_native_stacks([a.pid])
                one.append(time.perf_counter() - t0)
                worked = worked or any(line.startswith("Thread ") for line in lines)
                t0 = time.perf_counter()
                await native_stacks.dump_native_stacks([a.pid, b.pid])
                two.append(time.perf_counter() - t0)
        finally:
            a.kill()
            b.kill()
    return one, two, worked


def _share(part: Stats, death: Stats) -> str:
    """``part`` against the plain death path's median."""
    return f"{part.median / death.median:.2g}x the plain death path" if death.median else "n/a"


def run(mode: Mode) -> Section:
    s = Section("Evidence of a runner's end: OOM counters and kernel log, native stacks")
    rounds, batch = mode.pick((2, 4), (5, 10))
    progress("evidence: SIGKILL deaths, with and without the OOM evidence")
    ours, plain = run_async(mode, lambda: _deaths(rounds, batch))
    d = "SIGKILL -> RunnerFailed at the host"
    ours_s, plain_s = Stats.of(ours, "s"), Stats.of(plain, "s")
    s.add(Row(d, "ours: with the OOM evidence read", "s", ours_s))
    vs_plain = ratio(ours_s.median, plain_s.median, "s")
    s.add(Row(d, "baseline: plain death path (no read)", "s", plain_s, vs_plain))

    witness = OomWitness()
    witness.note(os.getpid())
    calls = mode.pick(20, 100)
    c = "OOM evidence read (one SIGKILL death)"
    counters = Stats.of(_per_call(witness.collect, 1, calls), "s")
    s.add(
        Row(c, "counters: cgroup + vmstat (every death)", "s", counters, _share(counters, plain_s))
    )
    counted = witness.collect()
    log = Stats.of(
        _per_call(lambda: witness.read_kernel_log(counted, [os.getpid()]), 1, calls), "s"
    )
    records = kmsg.read_records()
    s.add(
        Row(
            c,
            "ours: kernel log since the last read (after a counted OOM kill)",
            "s",
            log,
            _share(log, plain_s),
        )
    )
    ring = Stats.of(
        _per_call(lambda: kmsg.oom_lines(kmsg.read_records(), {os.getpid()}, 0.0), 1, calls),
        "s",
    )
    s.add(
        Row(
            c,
            "baseline: the whole /dev/kmsg ring per death",
            "s",
            ring,
            ratio(log.median, ring.median, "s"),
            note=f"{len(records)} records",
        )
    )
    n = "per poll while the runner lives"
    note_s = Stats.of(_per_call(lambda: witness.note(os.getpid()), 2000, mode.pick(5, 15)), "s")
    statm = Stats.of(_per_call(_statm_read, 2000, mode.pick(5, 15)), "s")
    s.add(Row(n, "ours: OomWitness.note (cgroup unchanged)", "s", note_s))
    vs_statm = ratio(note_s.median, statm.median, "s")
    s.add(Row(n, "baseline: one /proc/PID/statm read", "s", statm, vs_statm))

    p = "py-spy dump --native before a kill"
    if native_stacks.py_spy() is None:
        s.not_measured(p, "py-spy", "s", "py-spy is not installed (pip install '.[stacks]')")
    else:
        progress("evidence: py-spy dumps")
        one, two, worked = run_async(mode, lambda: _dumps(mode.pick(5, 20)))
        one_s, two_s = Stats.of(one, "s"), Stats.of(two, "s")
        why = "" if worked else "dumps failed (no ptrace rights?): time of the failure"
        s.add(Row(p, "one process", "s", one_s, _share(one_s, plain_s), note=why))
        two_row = Row(p, "two in parallel (rank + sibling)", "s", two_s, _share(two_s, plain_s))
        s.add(replace(two_row, note=why))
    s.notes.append(
        "The read and dump rows are set against the plain death path's median. The "
        "counters are read on the loop (two small files); the kernel log, only after the "
        "system counted an OOM kill, in a worker thread, from where the host's reader last "
        "stopped (in steady state: nothing new); py-spy runs as child processes the loop "
        "awaits, bounded to 1 s in all."
    )
    s.plot_latencies()
    return s
