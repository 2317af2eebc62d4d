"""The node's GPU watcher end to end, without a GPU: a fake NVML module, real runners.

The fake lists a real runner's pid on a fake GPU; an Xid on that GPU must fail that
runner (gpu_fault, detected by nvml) and no other; too much GPU memory must fail it
as memory_limit; health shows what NVML reported.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import anyio
import pytest
from loguru import logger

from supervisor import RunnerSpec, SupervisorConfig
from supervisor.cli import main
from supervisor.gpu.nvml import Nvml
from supervisor.ops.metrics import SupervisorMetrics
from supervisor.protocol import Generate, TaskStatus
from tests.support.fake_nvml import FakeNvml
from tests.support.restart_harness import running_node

pytestmark = pytest.mark.anyio

GIB = 2**30
FAST = {"interval": 0.05}


async def test_an_xid_fails_the_runner_on_that_gpu_only_and_it_restarts() -> None:
    fake = FakeNvml(gpus=2)
    async with running_node() as (node, rec):
        watcher = node.watch_gpus(nvml_module=fake, **FAST)
        assert watcher is not None
        a = node.add_runner("a", RunnerSpec(engine="echo", options={"token_delay": 0.05}))
        b = node.add_runner("b", RunnerSpec(engine="echo"))
        await rec.wait_for(lambda: rec.ready_count("a") == 1 and rec.ready_count("b") == 1, 60)
        assert a.current is not None
        assert b.current is not None
        # The CUDA context lives in the runner process, below its keeper: found by tree.
        a_pid = await a.current.wait_runner_pid()
        b_pid = await b.current.wait_runner_pid()
        fake.put(0, a_pid, 2 * GIB)
        fake.put(1, b_pid, GIB)
        fake.put(1, 999_999_999, GIB)  # not ours
        with anyio.fail_after(10):
            while {h.runner_id: h.gpu_memory for h in node.health_snapshots()} != {
                "a": 2 * GIB,
                "b": GIB,
            }:
                await watcher.next_reading()
        health = {h.runner_id: h for h in node.health_snapshots()}
        assert health["a"].gpus == ("GPU-fake-0",)
        assert health["a"].gpu_ecc_uncorrected == 0
        assert health["a"].gpu_retired_pages == 0
        assert health["a"].gpu_retirement_pending is False
        assert sorted(fake.registered) == [0, 1]
        text = SupervisorMetrics(node).render().decode()
        assert 'runner_supervisor_gpu_memory_bytes{runner_id="a"} 2.147483648e+09' in text
        assert 'runner_supervisor_gpu_retirement_pending{runner_id="b"} 0.0' in text

        await node.start_task("a", Generate(task_id="g", prompt="a b", max_tokens=10_000))
        fake.xid(0, 45)  # a killed process's cleanup: recorded, nobody failed
        fake.xid(0, 79)
        await rec.wait_for(lambda: bool(rec.failures("a")), 20)
        [failure] = rec.failures("a")
        assert (failure.reason, failure.detected_by) == ("gpu_fault", "nvml")
        assert "Xid 79" in failure.error_message
        assert "xid=79" in failure.diagnostics
        assert "xid_meaning=GPU has fallen off the bus" in failure.diagnostics
        assert f"runner_gpu_pids={a_pid}" in failure.diagnostics
        await rec.wait_for(lambda: rec.terminal("g") == [TaskStatus.Failed], 20)
        assert [e.kind for e in watcher.events] == ["xid", "xid"]
        # The other GPU's runner is untouched; the failed one restarts (policy).
        await rec.wait_for(lambda: rec.ready_count("a") == 2, 60)
        assert rec.failures("b") == []
        assert b.incarnation == 1
        assert a.incarnation == 2


async def test_gpu_memory_over_the_limit_fails_the_runner_as_memory_limit() -> None:
    fake = FakeNvml(gpus=1)
    config = SupervisorConfig(gpu_memory_limit=GIB)
    async with running_node(config=config) as (node, rec):
        node.add_runner("r", RunnerSpec(engine="echo"))
        node.watch_gpus(nvml_module=fake, **FAST)  # while the node runs
        await rec.wait_for(lambda: rec.ready_count("r") == 1, 60)
        current = node["r"].current
        assert current is not None
        pid = await current.wait_runner_pid()
        fake.put(0, pid, GIB)  # at the limit: within it
        await anyio.sleep(0.3)
        assert rec.failures("r") == []
        fake.put(0, pid, GIB + 1)
        await rec.wait_for(lambda: bool(rec.failures("r")), 20)
        [failure] = rec.failures("r")
        assert (failure.reason, failure.detected_by) == ("memory_limit", "nvml")
        assert "gpu_memory_limit 1024 MiB" in failure.error_message


async def test_a_lost_gpu_fails_the_runners_seen_on_it() -> None:
    fake = FakeNvml(gpus=1)
    async with running_node() as (node, rec):
        watcher = node.watch_gpus(nvml_module=fake, **FAST)
        assert watcher is not None
        node.add_runner("r", RunnerSpec(engine="echo"))
        await rec.wait_for(lambda: rec.ready_count("r") == 1, 60)
        current = node["r"].current
        assert current is not None
        fake.put(0, await current.wait_runner_pid(), GIB)
        with anyio.fail_after(10):
            while not node.health_snapshots()[0].gpu_memory:
                await watcher.next_reading()
        fake.gpus[0].lost = True
        await rec.wait_for(lambda: bool(rec.failures("r")), 20)
        [failure] = rec.failures("r")
        assert failure.reason == "gpu_fault"
        assert "lost" in failure.error_message
        # The GPU comes back (a reset), the next incarnation uses it, and it is lost again.
        await rec.wait_for(lambda: rec.ready_count("r") == 2, 60)
        fake.gpus[0].lost = False
        fake.gpus[0].processes.clear()
        current = node["r"].current
        assert current is not None
        fake.put(0, await current.wait_runner_pid(), GIB)
        with anyio.fail_after(10):
            while not node.health_snapshots()[0].gpu_memory:
                await watcher.next_reading()
        fake.gpus[0].lost = True
        await rec.wait_for(lambda: len(rec.failures("r")) == 2, 20)


def test_without_a_library_or_a_gpu_the_watcher_is_inactive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert Nvml.open() is None
    assert Nvml.open(FakeNvml(init_fails=True)) is None  # no driver
    empty = FakeNvml(gpus=0)
    assert Nvml.open(empty) is None
    assert empty.shut_down


def test_cli_watch_gpus_without_a_gpu_logs_one_line_and_runs() -> None:
    nvml = Nvml.open()
    if nvml is not None:
        nvml.close()
        pytest.skip("this machine has a GPU and NVML")
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", "--watch-gpus", "--max-tokens", "2", "a b"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["a", "b"]
    inactive = [line for line in proc.stderr.splitlines() if "GPU watcher inactive" in line]
    assert len(inactive) == 1, proc.stderr


def test_cli_gpu_memory_limit_needs_the_watcher(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        assert main(["run", "--gpu-memory-limit", "8G", "hi"]) == 2
    finally:
        # main() pointed loguru at this test's captured stderr, which closes after the test:
        # later tests' log lines would each raise "I/O operation on closed file".
        logger.remove()
        logger.add(lambda message: sys.stderr.write(message))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["runner-supervisor: error: --gpu-memory-limit needs --watch-gpus"]


class BrokenWait(FakeNvml):
    """NVML whose event wait fails with an error the watcher does not know."""

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        self.waits += 1
        raise self.NVMLError(999)


async def test_a_failing_nvml_call_is_retried_and_never_touches_the_runners() -> None:
    fake = BrokenWait(gpus=1)
    async with running_node() as (node, rec):
        watcher = node.watch_gpus(nvml_module=fake, interval=0.05, event_wait_ms=50)
        assert watcher is not None
        node.add_runner("r", RunnerSpec(engine="echo"))
        await rec.wait_for(lambda: rec.ready_count("r") == 1, 60)
        current = node["r"].current
        assert current is not None
        fake.put(0, await current.wait_runner_pid(), GIB)
        with anyio.fail_after(20):
            while watcher.errors < 2 or not node.health_snapshots()[0].gpu_memory:
                await watcher.next_reading()  # the readings go on beside the broken wait
        assert rec.failures("r") == []
        assert node["r"].phase == "ready"
