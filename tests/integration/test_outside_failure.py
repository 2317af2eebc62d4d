"""`fail()`: an outside watcher (GPU health, an operator's tool) ends a live runner as a
failure, once, through the same end path as the detectors."""

from __future__ import annotations

import anyio
import psutil
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from supervisor import RunnerSpec, RunnerSupervisor
from supervisor.protocol import BaseEvent, Generate, RunnerFailed, TaskStatus
from tests.support.harness import supervised
from tests.support.recorder import hosted
from tests.support.restart_harness import restarting

pytestmark = pytest.mark.anyio


async def test_fail_reports_one_failure_with_its_reason_and_stops_the_runner() -> None:
    async with supervised(token_delay=0.05) as r:
        await r.ready()
        pid = await r.sup.wait_runner_pid()
        await r.sup.start_task(Generate(task_id="g", prompt="a b", max_tokens=1000))
        r.sup.fail(
            "gpu_fault",
            "Xid 79: GPU has fallen off the bus",
            detected_by="nvml",
            diagnostics=("gpu 0",),
        )
        r.sup.fail("memory_limit", "a second verdict is ignored", detected_by="poll")
        await r.finished()
        await r.rec.wait_for(lambda: r.rec.terminal("g") != [])
        [failure] = r.rec.failures()
        assert isinstance(failure, RunnerFailed)
        assert (failure.reason, failure.detected_by) == ("gpu_fault", "nvml")
        assert failure.error_message == "Xid 79: GPU has fallen off the bus"
        assert failure.diagnostics[0] == "gpu 0"
        assert r.rec.terminal("g") == [TaskStatus.Failed]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


async def test_fail_before_run_is_reported_once_run_starts() -> None:
    def build(send: MemoryObjectSendStream[BaseEvent]) -> RunnerSupervisor:
        sup = RunnerSupervisor.create(spec=RunnerSpec(engine="echo"), event_sender=send)
        sup.fail("gpu_fault", "broken before it was watched", detected_by="nvml")
        return sup

    async with hosted(build, stop_within=15) as (_sup, rec):
        await rec.wait_for(lambda: bool(rec.failures()), within=15)
        [failure] = rec.failures()
        assert (failure.reason, failure.error_message) == (
            "gpu_fault",
            "broken before it was watched",
        )


async def test_restarting_supervisor_fail_restarts_the_runner() -> None:
    async with restarting(RunnerSpec(engine="echo")) as h:
        await h.ready()
        first = h.sup.pid
        h.sup.fail("gpu_fault", "Xid 48", detected_by="nvml")
        with anyio.fail_after(15):
            await h.rec.wait_for(lambda: h.rec.ready_count() >= 2)
        assert h.sup.pid != first
        assert [f.reason for f in h.rec.failures()] == ["gpu_fault"]
