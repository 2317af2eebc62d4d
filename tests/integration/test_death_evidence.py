"""Every end names its true cause, with the kernel's evidence: real processes, real
signals, and a real kernel OOM kill where a memory controller can be used."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from supervisor import RunnerSpec, RunnerSupervisor, SupervisorConfig
from supervisor.core import native_stacks
from supervisor.core.detection.watches import Detectors
from supervisor.core.evidence import memcg
from supervisor.ops.metrics import SupervisorMetrics
from supervisor.protocol import (
    BaseEvent,
    Generate,
    LoadModel,
    RunnerFailed,
    RunnerStatusUpdated,
)
from tests.support import leaks
from tests.support.harness import Running, supervised
from tests.support.restart_harness import restarting

pytestmark = pytest.mark.anyio

MiB = 2**20
HOG = "tests.support.evidence_engines:HogEngine"
CLOSER = "tests.support.evidence_engines:ChannelClosingEngine"
WEDGE = "tests.support.evidence_engines:NativeWedgeEngine"
#: No hint that an outside SIGKILL was the OOM killer (what the old text guessed).
OOM_GUESSES = ("likely OOM", "OOM kill or", "OOM killer or", "an OOM kill")


def _no_memory_controller() -> str | None:
    """Why no test memory cgroup can be made here (None: one can)."""
    own = memcg.cgroup_of(os.getpid())
    if own is None:
        return "no memory cgroup controller visible in /proc/self/cgroup and mountinfo"
    if own.version != 1:
        return (
            "only cgroup v2 here: a test memory cgroup needs the v1 memory controller "
            "(root); v2 would need a delegated subtree"
        )
    if not os.access(own.path, os.W_OK):
        return f"the v1 memory cgroup {own.path} is not writable (needs root)"
    return None


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A v1 memory cgroup under our own, limited to ``limit`` bytes (swap included)."""
    own = memcg.cgroup_of(os.getpid())
    assert own is not None
    path = own.path / f"runner-supervisor-oom-test-{os.getpid()}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(limit))
        if (path / "memory.memsw.limit_in_bytes").exists():
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        yield path
    finally:
        for _ in range(100):  # its last member may still be exiting
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


async def _failure(r: Running, within: float = 20) -> RunnerFailed:
    await r.rec.wait_for(lambda: bool(r.rec.failures()), within=within)
    await r.finished()
    (failure,) = r.rec.failures()
    return failure


@pytest.mark.skipif(bool(_no_memory_controller()), reason=str(_no_memory_controller()))
async def test_a_kernel_oom_kill_is_named_with_the_kernels_evidence() -> None:
    config = SupervisorConfig(poll_interval=0.1)
    with memory_cgroup(96 * MiB) as cgroup:
        async with supervised(RunnerSpec(engine=HOG), config) as r:
            await r.ready()
            pid = await r.sup.wait_runner_pid()
            # Only what it allocates from now on is charged here (no charge moving).
            (cgroup / "cgroup.procs").write_text(str(pid))
            await anyio.sleep(0.5)  # a few polls: the supervisor notes its new cgroup
            await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=4))
            failure = await _failure(r)
    print(failure)
    assert failure.reason == "oom_killed", failure
    assert failure.signal == signal.SIGKILL
    assert failure.error_message == "killed by the kernel's OOM killer (signal=9 (Killed))"
    counted = failure.diagnostics[0]
    assert counted.startswith(f"OOM kill counted: memory cgroup {cgroup} oom_kill +1, system")
    if os.access("/dev/kmsg", os.R_OK):
        assert any(f"Killed process {pid} (" in line for line in failure.diagnostics), failure


async def test_an_outside_sigkill_without_an_oom_kill_is_signalled_and_says_so() -> None:
    async with supervised(RunnerSpec(engine="echo", options={"token_delay": 0.01})) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=1000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 2)
        os.kill(r.sup.pid, signal.SIGKILL)
        failure = await _failure(r)
    assert failure.reason == "signalled"
    assert failure.error_message == "signal=9 (Killed)"
    text = " ".join((failure.error_message, *failure.diagnostics))
    assert not any(guess in text for guess in OOM_GUESSES), text
    (line,) = [ln for ln in failure.diagnostics if ln.startswith("SIGKILL from outside")]
    if memcg.system_oom_kills() is not None:
        assert "the kernel counted no OOM kill of the runner" in line
        assert "oom_kill +0" in line


async def test_a_runner_that_closed_its_event_channel_is_reported_as_such() -> None:
    config = SupervisorConfig(stop_grace=0.5)
    async with supervised(RunnerSpec(engine=CLOSER), config) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=4))
        failure = await _failure(r)
    assert failure.reason == "channel_closed", failure
    assert failure.detected_by == "channel"
    assert failure.error_message.startswith(
        "runner closed its event channel (EOF) and was still running; "
        "the supervisor stopped it (signal="
    )
    text = " ".join((failure.error_message, *failure.diagnostics))
    for hint in ("OOM", "from outside", "operator"):
        assert hint not in text


async def test_a_bug_in_the_supervisor_is_its_own_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_watch(self: Detectors) -> None:
        await anyio.sleep(0.3)
        raise RuntimeError("injected supervisor bug")

    # A watch loop of the supervisor (host side) breaks; the runner is healthy.
    monkeypatch.setattr(Detectors, "watch_heartbeat", broken_watch)
    async with supervised(RunnerSpec(engine="echo")) as r:
        failure = await _failure(r)
        pid = r.sup.pid
    assert failure.reason == "supervisor_error"
    assert failure.detected_by == "supervisor"
    assert failure.error_message == (
        "supervisor internal error: RuntimeError: injected supervisor bug"
    )
    assert not leaks.running(pid)


async def test_a_run_cancelled_by_the_host_is_abandoned_not_signalled() -> None:
    send, recv = anyio.create_memory_object_stream[BaseEvent](math.inf)
    sup = RunnerSupervisor.create(spec=RunnerSpec(engine="echo"), event_sender=send)
    with send, recv:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            await sup.start_task(LoadModel(task_id="load"))
            tg.cancel_scope.cancel()
        failures = [
            e.status
            for e in _drain(recv)
            if isinstance(e, RunnerStatusUpdated) and isinstance(e.status, RunnerFailed)
        ]
    assert [(f.reason, f.detected_by) for f in failures] == [("abandoned", "supervisor")]
    assert failures[0].error_message.startswith("supervisor cancelled by the host")
    assert not leaks.running(sup.pid)


def _drain(recv: MemoryObjectReceiveStream[BaseEvent]) -> list[BaseEvent]:
    out = []
    while True:
        try:
            out.append(recv.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return out


@pytest.mark.skipif(native_stacks.py_spy() is None, reason="py-spy is not installed ([stacks])")
async def test_a_runner_wedged_in_native_code_shows_its_native_frames(tmp_path: Path) -> None:
    config = SupervisorConfig(decode_timeout=1.0, prefill_timeout=1.0, log_dir=str(tmp_path))
    spec = RunnerSpec(engine=WEDGE, runner_id="wedged")
    async with supervised(spec, config) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=4))
        failure = await _failure(r)
    print("\n".join(failure.diagnostics))
    assert failure.reason == "stalled"
    head = f"native stacks of pid {r.sup.pid} (py-spy dump --native):"
    at = failure.diagnostics.index(head)
    native = failure.diagnostics[at:]
    assert any(line.strip().startswith("pause (libc") for line in native), native
    assert any("evidence_engines.py" in line for line in native)  # the Python frames too
    # faulthandler's Python stacks follow, as before
    assert any(line.startswith(("Current thread", "Thread 0x")) for line in failure.diagnostics)
    log = (tmp_path / "wedged.log").read_text()
    assert head in log
    assert "pause (libc" in log


@pytest.mark.parametrize("containment", ["keeper", "group"])
async def test_the_runners_exit_is_timed_on_the_cores_own_pidfd(containment: str) -> None:
    config = SupervisorConfig(containment=containment)
    exits: list[float | None] = []
    async with supervised(RunnerSpec(engine="echo"), config) as r:
        await r.ready()

        async def clock() -> None:
            exits.append(await r.sup.wait_runner_exit())

        async with anyio.create_task_group() as tg:
            tg.start_soon(clock)
            await anyio.sleep(0.1)
            killed_at = time.monotonic()
            os.kill(r.sup.pid, signal.SIGKILL)
            failure = await _failure(r)
    assert failure.signal == signal.SIGKILL
    (exited_at,) = exits
    assert exited_at is not None
    assert r.sup.failed_at is not None
    assert killed_at <= exited_at
    # The report may come first: the early death signal does not wait for the exit.
    assert abs(exited_at - r.sup.failed_at) < 1.0


@pytest.mark.skipif(native_stacks.py_spy() is None, reason="py-spy is not installed ([stacks])")
async def test_a_wedged_rank_shows_its_siblings_native_stacks_too() -> None:
    config = SupervisorConfig(decode_timeout=1.0, prefill_timeout=1.0)
    spec = RunnerSpec(engine=WEDGE, world_size=2)
    async with supervised(spec, config) as r:
        await r.ready()
        pids = list(r.sup.pids)
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=4))
        failure = await _failure(r)
    assert failure.reason == "stalled"
    for pid in pids:  # read before the group killed any rank
        head = f"native stacks of pid {pid} (py-spy dump --native):"
        assert head in failure.diagnostics, (pid, failure.diagnostics)
        native = failure.diagnostics[failure.diagnostics.index(head) :]
        assert any(line.strip().startswith("pause (libc") for line in native)


async def test_a_supervisor_bug_is_counted_as_one_not_as_a_runner_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_watch(self: Detectors) -> None:
        await anyio.sleep(0.3)
        raise RuntimeError("injected supervisor bug")

    monkeypatch.setattr(Detectors, "watch_heartbeat", broken_watch)
    metrics = SupervisorMetrics()
    async with restarting(observers=[metrics]) as r:
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=20)
        text = metrics.render().decode()
    counted = re.search(
        r'^runner_supervisor_failures_total\{detected_by="supervisor",'
        r'reason="supervisor_error",runner_id="r1"\} (\d+)\.0$',
        text,
        re.M,
    )
    assert counted is not None, text
    assert int(counted.group(1)) >= 1
    assert 'reason="crashed"' not in text
