"""Containment of a runner's whole process tree: real trees, real signals.

The tree engine starts what real runners start: a subprocess, a fork-started
multiprocessing child holding the runner's fds, and a ``setsid`` daemon.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest
from loguru import logger

from supervisor import RunnerSpec, SupervisorConfig
from supervisor.protocol import LoadModel, TaskStatus
from tests.support.harness import Running, supervised

pytestmark = pytest.mark.anyio

MIB = 1 << 20


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _still_alive(pids: list[int], within: float) -> list[int]:
    """Wait up to ``within`` s for every pid to be gone; the ones still running."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _kill_all(pids: list[int]) -> None:
    """A failed test must not leave a 600 s sleep behind (the leak check cannot see
    an orphan that init adopted)."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _tree_spec(tmp_path: Path, **options: object) -> RunnerSpec:
    return RunnerSpec(
        engine="tests.support.tree_engines:TreeEngine",
        options={"pid_file": str(tmp_path / "tree.json"), **options},
    )


async def _load_tree(r: Running, tmp_path: Path) -> list[int]:
    await r.sup.start_task(LoadModel(task_id="load"))
    await r.rec.wait_for(lambda: r.rec.terminal("load") != [], within=30)
    assert r.rec.terminal("load") == [TaskStatus.Complete]
    pids = list(json.loads((tmp_path / "tree.json").read_text()).values())
    assert all(_alive(p) for p in pids), pids
    return pids


async def test_runner_sigkill_takes_its_whole_tree(tmp_path: Path) -> None:
    async with supervised(_tree_spec(tmp_path), SupervisorConfig(stop_grace=0.5)) as r:
        tree = await _load_tree(r, tmp_path)
        runner = r.sup.pid
        keeper = psutil.Process(runner).ppid()
        try:
            killed = time.monotonic()
            os.kill(runner, signal.SIGKILL)
            await r.rec.wait_for(lambda: bool(r.rec.failures()), within=5)
            took = r.rec.failure_time() - killed
            await r.finished()
            left = _still_alive([*tree, keeper], 1.0)
        finally:
            _kill_all(tree)
    (failure,) = r.rec.failures()
    assert failure.reason == "signalled"
    assert failure.signal == signal.SIGKILL
    print(f"runner SIGKILL -> RunnerFailed in {took * 1000:.1f} ms")
    # A fork child holds the event pipe and multiprocessing's sentinel: neither EOF
    # nor the sentinel fires while it lives; the pidfds do.
    assert took < 0.5
    assert left == [], f"outlived the runner: {left}"


async def test_clean_shutdown_leaves_nothing(tmp_path: Path) -> None:
    async with supervised(_tree_spec(tmp_path)) as r:
        tree = await _load_tree(r, tmp_path)
        try:
            r.sup.shutdown()
            await r.finished()
            left = _still_alive(tree, 1.0)
        finally:
            _kill_all(tree)
    assert r.rec.failures() == []
    assert r.sup.exit_code == 0  # the keeper exits as the runner did
    assert left == []


async def test_failure_of_a_live_runner_kills_its_tree(tmp_path: Path) -> None:
    """A wedge (not an exit): the supervisor's own kill must reach the daemon too."""
    config = SupervisorConfig(stop_grace=0.3, heartbeat_check_interval=0.2)
    async with supervised(_tree_spec(tmp_path), config) as r:
        tree = await _load_tree(r, tmp_path)
        try:
            os.kill(r.sup.pid, signal.SIGSTOP)
            await r.finished()
            left = _still_alive(tree, 1.0)
        finally:
            _kill_all(tree)
    (failure,) = r.rec.failures()
    assert failure.reason == "unresponsive"
    assert left == []
    # the diagnostics name what died with the runner
    (killed,) = [line for line in failure.diagnostics if line.startswith("killed with it: ")]
    assert all(str(pid) in killed for pid in tree if pid != r.sup.pid)


async def test_group_containment_is_the_old_behaviour(tmp_path: Path) -> None:
    """``group``: no keeper, the runner is the started process; the daemon escapes."""
    config = SupervisorConfig(containment="group")
    async with supervised(_tree_spec(tmp_path), config) as r:
        tree = await _load_tree(r, tmp_path)
        assert psutil.Process(r.sup.pid).ppid() == os.getpid()  # no keeper between
        pids = json.loads((tmp_path / "tree.json").read_text())
        try:
            r.sup.shutdown()
            await r.finished()
            left = _still_alive(tree, 0.5)
        finally:
            _kill_all(tree)
    assert left == [pids["daemon"]], "setsid escapes a process group: that is the point"


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
async def test_keeper_under_both_start_methods(tmp_path: Path, start_method: str) -> None:
    config = SupervisorConfig(start_method=start_method, containment="keeper")  # type: ignore[arg-type]
    async with supervised(_tree_spec(tmp_path), config) as r:
        tree = await _load_tree(r, tmp_path)
        keeper = psutil.Process(r.sup.pid).ppid()
        assert keeper != os.getpid()
        try:
            os.kill(r.sup.pid, signal.SIGKILL)
            await r.finished()
            left = _still_alive([*tree, keeper], 1.0)
        finally:
            _kill_all(tree)
    assert [f.signal for f in r.rec.failures()] == [signal.SIGKILL]
    assert left == []


async def test_memory_limit_counts_the_tree(tmp_path: Path) -> None:
    config = SupervisorConfig(memory_limit=350 * MIB, poll_interval=0.2, stop_grace=0.5)
    async with supervised(_tree_spec(tmp_path, alloc_mib=500), config) as r:
        try:
            # It may fail while it loads: the child allocates before load() returns.
            await r.sup.start_task(LoadModel(task_id="load"))
            await r.finished(within=30)
        finally:
            tree = list(json.loads((tmp_path / "tree.json").read_text()).values())
            left = _still_alive(tree, 1.0)
            _kill_all(tree)
    (failure,) = r.rec.failures()
    assert failure.reason == "memory_limit", failure
    assert "descendants" in failure.error_message, failure.error_message
    assert left == []


async def test_a_small_tree_under_the_limit_lives(tmp_path: Path) -> None:
    config = SupervisorConfig(memory_limit=350 * MIB, poll_interval=0.2)
    async with supervised(_tree_spec(tmp_path, alloc_mib=100), config) as r:
        tree = await _load_tree(r, tmp_path)
        try:
            await anyio.sleep(1.5)  # several polls
            sample = r.sup.resources
            rss_sum = sum(psutil.Process(p).memory_info().rss for p in [r.sup.pid, *tree])
            # what the coordinator lists in RunnerFailed diagnostics before a kill
            listed = r.sup.ranks[0]._proc.descendants()
            tree_memory = r.sup.ranks[0]._proc.tree_memory()
        finally:
            r.sup.shutdown()
            await r.finished()
            _kill_all(tree)
    assert r.rec.failures() == []
    assert sample is not None
    assert sample.descendants >= 3
    assert {pid for pid, _ in listed} >= set(tree)
    assert [n for pid, n in listed if pid in tree].count("sleep") == 2
    assert tree_memory is not None
    assert tree_memory[1] == len(listed)
    assert 100 * MIB < sample.rss < 350 * MIB
    # the fork child's copy-on-write pages are the runner's: counted once
    assert sample.rss < rss_sum


async def test_a_fork_in_the_runner_prints_no_after_fork_error(tmp_path: Path) -> None:
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    try:
        async with supervised(_tree_spec(tmp_path)) as r:
            tree = await _load_tree(r, tmp_path)
            try:
                await anyio.sleep(0.3)  # the fork child's stderr reaches the host
                r.sup.shutdown()
                await r.finished()
            finally:
                _kill_all(tree)
    finally:
        logger.remove(handler)
    assert any("runner" in line for line in lines)  # the capture did see the runner
    assert not [line for line in lines if "_after_fork" in line or "not callable" in line]


_HOST = """\
import json, math, sys, anyio
from supervisor import RunnerSpec, RunnerSupervisor, SupervisorConfig
from supervisor.protocol import LoadModel, TaskStatusUpdated

async def main():
    send, recv = anyio.create_memory_object_stream(math.inf)
    spec = RunnerSpec(engine="tests.support.tree_engines:TreeEngine",
                      options={"pid_file": sys.argv[1]})
    sup = RunnerSupervisor.create(spec=spec, event_sender=send,
                                  config=SupervisorConfig(containment=sys.argv[2]))
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        async with recv:
            await sup.start_task(LoadModel(task_id="load"))
            async for event in recv:
                if isinstance(event, TaskStatusUpdated) and event.status.terminal:
                    break
        tree = json.load(open(sys.argv[1]))
        print(json.dumps({"runner": sup.pid, **tree}), flush=True)
        await anyio.sleep(600)

if __name__ == "__main__":
    anyio.run(main)
"""


def _read_to_eof(fd: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0] and not os.read(fd, 65536):
            return True
    return False


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the host runs its own loop
def test_host_sigkill_takes_every_runner_tree(tmp_path: Path, anyio_backend: str) -> None:
    script = tmp_path / "host.py"
    script.write_text(_HOST)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "LOGURU_LEVEL": "WARNING"}
    host = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "tree.json"), "auto"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    tree: list[int] = []
    try:
        assert host.stdout is not None
        pids = json.loads(host.stdout.readline())
        keeper = psutil.Process(pids["runner"]).ppid()
        tree = [*pids.values(), keeper]
        assert keeper != host.pid
        assert all(_alive(p) for p in tree)
        host.kill()
        host.wait()
        killed = time.monotonic()
        left = _still_alive(tree, 5.0)
        took = time.monotonic() - killed
        eof = _read_to_eof(host.stdout.fileno(), 5.0)
    finally:
        host.kill()
        host.wait()
        _kill_all(tree)
        if host.stdout is not None:
            host.stdout.close()
    print(f"host SIGKILL -> last of its runner's tree gone in {took * 1000:.0f} ms")
    assert left == [], f"outlived their host: {left}"
    assert eof, "something still holds the dead host's stdout"
