"""Rank groups beside torchrun: 4 gloo ranks, one rank killed or stopped mid-generation.

Ours: a `RestartingSupervisor` of the ``torchdist`` engine with ``world_size=4``
(one all_reduce per token), zero backoff, with and without prespawned spares.
torchrun: ``torchrun --nproc-per-node 4 --max-restarts 3`` running a tiny worker
that does one all_reduce every 10 ms, as our engine does per token.

- SIGKILL one rank (rank 2) mid-generation, then time until every rank runs again
  and a collective succeeds: for us, the new incarnation's RunnerReady (its
  LoadModel and Warmup run collectives on every rank); for torchrun, rank 0's first
  all_reduce returning in the restarted group.
- SIGSTOP one rank: the others block in the all_reduce with live processes. Time
  until the failure is seen: for us, the host receiving RunnerFailed; for torchrun,
  a restarted worker starting or torchrun exiting, bounded (torchrun watches exits
  only: a stopped rank leaves it to the gloo timeout, 30 minutes by default).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import psutil

from bench.common import Mode, fleet, progress, run_async
from bench.report import Row, Section, Stats, fmt, ratio
from supervisor import (
    RestartingSupervisor,
    RestartPolicy,
    RunnerRestarting,
    RunnerSpec,
    SupervisorConfig,
)
from supervisor.core.rendezvous import free_port
from supervisor.protocol import BaseEvent, Generate, RunnerReady, RunnerStatusUpdated

WORLD = 4
VICTIM = 2
SPEC = RunnerSpec(engine="torchdist", world_size=WORLD, options={"token_delay": 0.01})
#: Generous: four torch imports at once on a small shared machine take a while.
CONFIG = SupervisorConfig(start_timeout=300.0, busy_grace=120.0)
START_WITHIN = 300.0

_WORKER = """\
import os, sys, time
from datetime import timedelta
import torch, torch.distributed as dist

out = open(sys.argv[1], "a", buffering=1)
rank, restart = int(os.environ["RANK"]), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
torch.set_num_threads(1)
{init}
out.write(f"start {{restart}} {{rank}} {{os.getpid()}} {{time.monotonic()!r}}\\n")
step, said = torch.ones(65), False
while True:
    dist.all_reduce(step)  # one collective per token, as the torchdist engine
    step.fill_(1.0)
    if rank == 0 and not said:
        out.write(f"ok {{restart}} {{time.monotonic()!r}}\\n")
        said = True
    time.sleep(0.01)
"""
#: The worker as torchrun's docs write it: env:// on the agent's store.
WORKER_ENV = _WORKER.format(init='dist.init_process_group("gloo")')
#: The same worker meeting under a key prefix of its own per restart: with plain
#: env:// the restarted group's gloo mesh failed to connect here (refused by peer
#: addresses that were gone), restart after restart (cf. pytorch#167288).
WORKER = _WORKER.format(
    init=(
        'agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), '
        "is_master=False, timeout=timedelta(seconds=300))\n"
        'store = dist.PrefixStore(f"/bench/attempt_{restart}", agent)\n'
        'dist.init_process_group("gloo", store=store, rank=rank, '
        'world_size=int(os.environ["WORLD_SIZE"]))'
    )
)


# ------------------------------------------------------------------ ours
async def ours_kill(prespawn: bool, reps: int) -> list[float]:
    """Kill -> every rank of the next incarnation Ready, ``reps`` times."""
    policy = RestartPolicy(
        mode="on-failure",
        backoff_base=0.0,
        jitter=0.0,
        max_restarts=10**6,
        restart_window=1.0,
        prespawn=prespawn,
    )
    readies: list[float] = []  # receive time of each restarted incarnation's Ready
    restarted = [False]

    def stamp(now: float, event: BaseEvent) -> None:
        if isinstance(event, RunnerRestarting):
            restarted[0] = True
        elif (
            isinstance(event, RunnerStatusUpdated)
            and isinstance(event.status, RunnerReady)
            and restarted[0]
        ):
            restarted[0] = False
            readies.append(now)

    samples: list[float] = []
    async with fleet() as f:
        w = f.host(
            lambda send: RestartingSupervisor(
                spec=SPEC, event_sender=send, config=CONFIG, policy=policy, runner_id="tp4"
            ),
            on_event=stamp,
        )
        sup = w.sup
        assert isinstance(sup, RestartingSupervisor)
        await w.wait(lambda: sup.ready, START_WITHIN)
        for i in range(reps):
            if prespawn:
                await spare_settled(sup)
            tid = f"long-{i}"
            chunks = w.chunks
            await sup.start_task(Generate(task_id=tid, prompt="a b", max_tokens=10**6))
            await wait_until(lambda c=chunks: w.chunks >= c + 5, 60)  # type: ignore[misc]
            t0 = time.monotonic()
            os.kill(sup.pids[VICTIM], signal.SIGKILL)
            await w.wait(lambda n=i: len(readies) > n, START_WITHIN)  # type: ignore[misc]
            samples.append(readies[i] - t0)
    return samples


async def ours_stop() -> tuple[float, str]:
    """SIGSTOP -> RunnerFailed received; and the failure's reason and message."""
    async with fleet() as f:
        w = f.spawn(SPEC, CONFIG)
        await w.ready(within=START_WITHIN)
        await w.sup.start_task(Generate(task_id="long", prompt="a b", max_tokens=10**6))
        await wait_until(lambda: w.chunks >= 5, 60)
        t0 = time.monotonic()
        os.kill(w.sup.pids[VICTIM], signal.SIGSTOP)  # type: ignore[attr-defined]
        failed = await w.wait_failed(within=60)
        assert w.failure is not None
        return failed - t0, f"{w.failure.reason}: {w.failure.error_message}"


async def ours_gone(reps: int) -> list[tuple[float, float]]:
    """SIGKILL one of 4 echo ranks mid-generation: (kill -> RunnerFailed received,
    kill -> every other rank gone), ``reps`` times. Echo: no torch, so many samples."""
    spec = RunnerSpec(engine="echo", world_size=WORLD, options={"token_delay": 0.002})
    samples: list[tuple[float, float]] = []
    async with fleet() as f:
        for i in range(reps):
            w = f.spawn(spec)
            await w.ready(within=60)
            ranks = w.sup.ranks  # type: ignore[attr-defined]
            pids = [await rank.wait_runner_pid() for rank in ranks]
            await w.sup.start_task(Generate(task_id=f"g{i}", prompt="a b", max_tokens=10**6))
            await wait_until(lambda w=w: w.chunks >= 5, 30)  # type: ignore[misc]
            others = [psutil.Process(p) for k, p in enumerate(pids) if k != VICTIM]
            t0 = time.monotonic()
            os.kill(pids[VICTIM], signal.SIGKILL)
            await wait_until(lambda o=others: not any(_running(p) for p in o), 10)  # type: ignore[misc]
            gone = time.monotonic()
            failed = await w.wait_failed(within=10)
            samples.append((failed - t0, gone - t0))
            await w.sup.wait_finished()
    return samples


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def spare_settled(sup: RestartingSupervisor) -> None:
    """Wait until every rank of the spare has imported torch and sits idle (its CPU
    time stops moving): only then is a restart from it a restart from a spare."""
    with anyio.fail_after(START_WITHIN):
        last: list[float] = []
        while True:
            await anyio.sleep(0.5)
            pids = list(sup.spare_pids)
            if len(pids) != WORLD:
                continue
            try:
                now = [sum(psutil.Process(p).cpu_times()[:2]) for p in pids]
                loaded = all(_has_torch(p) for p in pids)
            except (psutil.Error, OSError):
                continue
            if loaded and now == last:
                return
            last = now


def _has_torch(pid: int) -> bool:
    """Whether ``pid`` has torch's native library mapped (its import is under way)."""
    with open(f"/proc/{pid}/maps") as maps:
        return "libtorch" in maps.read()


async def wait_until(pred: Callable[[], bool], within: float) -> None:
    """Poll ``pred``: chunks wake nobody in the bench's watcher, by design."""
    with anyio.fail_after(within):
        while not pred():  # noqa: ASYNC110 - nothing to wait on: chunks notify nobody
            await anyio.sleep(0.005)


# ------------------------------------------------------------------ torchrun
class TorchRun:
    """``torchrun --nproc-per-node 4 --max-restarts 3`` over the tiny worker; its
    workers write what they do to a file, stamped with the system's monotonic clock."""

    def __init__(self, folder: Path, source: str = WORKER) -> None:
        self.log = folder / "events.log"
        self.log.touch()
        worker = folder / "worker.py"
        worker.write_text(source)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD)]
        cmd += ["--max-restarts", "3", "--master-port", str(free_port())]
        cmd += [str(worker), str(self.log)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines() if line]

    def started(self, restart: int) -> dict[int, int]:
        """rank -> pid of the workers of restart number ``restart`` that started."""
        return {int(x[2]): int(x[3]) for x in self.lines() if x[:2] == ["start", str(restart)]}

    def ok_at(self, restart: int) -> float | None:
        """When rank 0's first all_reduce of restart ``restart`` returned."""
        oks = [float(x[2]) for x in self.lines() if x[:2] == ["ok", str(restart)]]
        return oks[0] if oks else None

    def wait(self, pred: object, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if pred():  # type: ignore[operator]
                return True
            if self.proc.poll() is not None:
                return bool(pred())  # type: ignore[operator]
            time.sleep(0.005)
        return False

    def close(self) -> None:
        tree = []
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self.proc.wait(10)
        psutil.wait_procs(tree, timeout=10)


def torchrun_kill(source: str = WORKER, within: float = START_WITHIN) -> float | None:
    """SIGKILL one worker -> rank 0's first collective in a restarted group (any of
    the 3 restarts); None if none came within ``within`` s or torchrun gave up."""
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as folder:
        run = TorchRun(Path(folder), source)
        try:
            if not run.wait(lambda: run.ok_at(0) is not None, START_WITHIN):
                raise RuntimeError("torchrun's workers did not start")
            time.sleep(0.3)  # mid-generation: collectives flowing
            t0 = time.monotonic()
            os.kill(run.started(0)[VICTIM], signal.SIGKILL)

            def recovered() -> float | None:
                oks = [run.ok_at(n) for n in (1, 2, 3)]
                return next((ok for ok in oks if ok is not None), None)

            if not run.wait(lambda: recovered() is not None, within):
                return None
            ok = recovered()
            assert ok is not None
            return ok - t0
        finally:
            run.close()


def bare_imports() -> float:
    """Seconds for WORLD fresh interpreters importing torch at once: the floor of any
    restart that starts its ranks anew, on this machine, now."""
    t0 = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", "import torch, torch.distributed"])
        for _ in range(WORLD)
    ]
    for proc in procs:
        proc.wait(START_WITHIN)
    return time.monotonic() - t0


def torchrun_stop(bound: float) -> float | None:
    """SIGSTOP one worker -> torchrun restarts the group or exits; None if not within
    ``bound`` seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as folder:
        run = TorchRun(Path(folder))
        try:
            if not run.wait(lambda: run.ok_at(0) is not None, START_WITHIN):
                raise RuntimeError("torchrun's workers did not start")
            time.sleep(0.3)
            t0 = time.monotonic()
            os.kill(run.started(0)[VICTIM], signal.SIGSTOP)
            seen = run.wait(lambda: bool(run.started(1)) or run.proc.poll() is not None, bound)
            return time.monotonic() - t0 if seen else None
        finally:
            run.close()


# ------------------------------------------------------------------ report
def run(mode: Mode) -> Section:
    reps = mode.pick(1, 3)
    bound = mode.pick(10.0, 30.0)
    s = Section(f"Rank groups ({WORLD} gloo ranks) beside torchrun")
    bench = f"Rank group of {WORLD}: SIGKILL one rank -> every rank runs again, collective OK"
    # Interleaved, one kill of each subject per round: on a shared machine the load
    # changes by the minute, and four torch imports are most of a restart.
    load = os.getloadavg()[0]
    samples: dict[str, list[float]] = {"torchrun": [], "spawn": [], "prespawn": [], "bare": []}
    for i in range(reps):
        progress(f"ranks: round {i + 1}/{reps}: torchrun, ours (spawn), ours (spares)")
        kill = torchrun_kill()
        if kill is None:
            raise RuntimeError("torchrun did not restart its workers")
        samples["torchrun"].append(kill)
        samples["spawn"] += run_async(mode, partial(ours_kill, False, 1))
        samples["prespawn"] += run_async(mode, partial(ours_kill, True, 1))
        samples["bare"].append(bare_imports())
    base = Stats.of(samples["torchrun"], "s")
    for label, key in (("ours, spawn", "spawn"), ("ours, prespawned spares", "prespawn")):
        st = Stats.of(samples[key], "s")
        s.add(Row(bench, label, "s", st, ratio=ratio(st.median, base.median, "s")))
    s.add(Row(bench, "torchrun --nproc-per-node 4 --max-restarts 3", "s", base))
    s.add(
        Row(
            bench,
            f"floor: {WORLD} x python -c 'import torch' at once",
            "s",
            Stats.of(samples["bare"], "s"),
        )
    )
    if not mode.quick:
        progress("ranks: torchrun, plain env:// worker, one SIGKILL")
        plain = torchrun_kill(WORKER_ENV, within=120.0)
        subject = "torchrun, worker on plain env://"
        if plain is None:
            s.add(Row(bench, subject, "s", note="did not recover: no collective within 120 s"))
        else:
            s.add(Row(bench, subject, "s", Stats.of([plain], "s")))
    bench = f"Rank group of {WORLD}: SIGKILL one rank -> every other rank gone"
    gone_reps = mode.pick(10, 40)
    progress(f"ranks: ours, {gone_reps} kills of one echo rank, the others' end timed")
    pairs = run_async(mode, partial(ours_gone, gone_reps))
    seen = Stats.of([failed for failed, _ in pairs], "s")
    gone = Stats.of([g for _, g in pairs], "s")
    after = Stats.of([g - failed for failed, g in pairs], "s")
    s.add(
        Row(
            bench,
            "ours (echo ranks), kill -> others gone",
            "s",
            gone,
            target="<= 50 ms after the failure is seen",
            met=after.median <= 0.050,
        )
    )
    s.notes.append(
        f"Others gone: {gone_reps} kills of rank {VICTIM} of {WORLD} echo ranks (no torch, so "
        f"many samples). The failure was seen (RunnerFailed received) {fmt(seen.median, 's')} "
        f"after the kill (median); the other ranks were gone {fmt(after.median, 's')} after "
        f"that (p99 {fmt(after.tail, 's')}): the first rank to end kills the others from its "
        "end path, before its report is written, so this can be negative."
    )
    bench = f"Rank group of {WORLD}: SIGSTOP one rank -> failure seen"
    progress("ranks: ours, SIGSTOP")
    stops = [run_async(mode, ours_stop) for _ in range(reps)]
    ours = Stats.of([seconds for seconds, _ in stops], "s")
    progress(f"ranks: torchrun, SIGSTOP (bounded at {bound:g} s)")
    theirs = [torchrun_stop(bound) for _ in range(reps)]
    seen = [t for t in theirs if t is not None]
    if seen:
        theirs_st = Stats.of(seen, "s")
        s.add(Row(bench, "ours", "s", ours, ratio=ratio(ours.median, theirs_st.median, "s")))
        s.add(Row(bench, "torchrun", "s", theirs_st))
    else:
        s.add(Row(bench, "ours", "s", ours, ratio=f"torchrun: not seen within {bound:g} s"))
        s.add(Row(bench, "torchrun", "s", note=f"not seen within {bound:g} s ({reps} tries)"))
    s.notes += [
        f"{reps} kill(s) per subject; rank {VICTIM} of {WORLD} is the victim, mid-generation "
        "(collectives flowing every ~10 ms). Ours: torchdist engine, zero backoff; the time "
        "ends at the new incarnation's RunnerReady (LoadModel + Warmup ran collectives on "
        "every rank). With prespawned spares the spare's four ranks had imported torch and "
        "sat idle before the kill. torchrun: default monitor interval; the time ends when "
        "rank 0's first all_reduce of the restarted group returns. Every rank imports torch "
        "again on a restart without spares; on this 2-core shared machine that dominates "
        f"(1-minute load average {load:.1f} when the rounds began). The floor row is "
        "the same imports with no supervisor and no torchrun, measured in each round: "
        "what a restart that starts its ranks anew cannot beat.",
        f"SIGSTOP: ours is the stopped rank's heartbeat going stale (freeze bound "
        f"{fmt(CONFIG.freeze_bound, 's')}) or, for a rank blocked in the collective, the "
        f"decode deadline ({fmt(CONFIG.decode_timeout, 's')}); the failure said "
        f"{stops[0][1]!r}. torchrun only watches exits: a stopped worker is left to the "
        f"collective's timeout (gloo/NCCL default 30 min); the wait was bounded at {bound:g} s.",
    ]
    s.plot_latencies()
    return s
