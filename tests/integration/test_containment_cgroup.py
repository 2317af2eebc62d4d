"""The cgroup layer for real, where this machine lets a test make a cgroup v2 subtree.

The test makes a cgroup, starts a host inside it (so the host's own cgroup is a
writable non-root one, as under systemd ``Delegate=yes``), and lets that host
supervise the tree engine with ``containment="cgroup"``. Skipped where no cgroup v2
hierarchy is mounted or it is not writable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.core.cgroups import cgroup2_mount, unified_path

_HOST = """\
import json, math, sys, anyio
from supervisor import RunnerSpec, RunnerSupervisor, SupervisorConfig
from supervisor.protocol import LoadModel, RunnerFailed, RunnerStatusUpdated, TaskStatusUpdated

with open(sys.argv[2] + "/cgroup.procs", "w") as f:
    f.write("0")  # into the test's cgroup before anything starts

async def main():
    send, recv = anyio.create_memory_object_stream(math.inf)
    spec = RunnerSpec(engine="tests.support.tree_engines:TreeEngine",
                      options={"pid_file": sys.argv[1]})
    config = SupervisorConfig(containment="cgroup", heartbeat_check_interval=0.2,
                              stop_grace=0.3)
    sup = RunnerSupervisor.create(spec=spec, event_sender=send, config=config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        async with recv:
            await sup.start_task(LoadModel(task_id="load"))
            async for event in recv:
                if isinstance(event, TaskStatusUpdated) and event.status.terminal:
                    break
            tree = json.load(open(sys.argv[1]))
            print(json.dumps({"runner": sup.pid, "containment": sup.containment, **tree}),
                  flush=True)
            async for event in recv:
                status = getattr(event, "status", None)
                if isinstance(event, RunnerStatusUpdated) and isinstance(status, RunnerFailed):
                    print(json.dumps({"failed": status.reason}), flush=True)
                    break
        await sup.wait_finished()

if __name__ == "__main__":
    anyio.run(main)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _still_alive(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


def _cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return unified_path(f.read())
    except OSError:
        return None


@pytest.fixture
def test_cgroup() -> Iterator[Path]:
    try:
        with open("/proc/self/mountinfo") as f:
            mount = cgroup2_mount(f.read())
    except OSError:
        mount = None
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    path = Path(mount[0]) / f"runner-supervisor-test-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup under {mount[0]}: {exc.strerror}")
    if not (path / "cgroup.kill").exists():
        path.rmdir()
        pytest.skip("no cgroup.kill (Linux < 5.14)")
    try:
        yield path
    finally:
        for _ in range(100):
            for child in path.iterdir():
                if child.is_dir():
                    child.rmdir()  # the host removes its runner cgroups; belt and braces
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def test_runner_tree_lives_in_its_own_cgroup_and_dies_with_it(
    tmp_path: Path, test_cgroup: Path
) -> None:
    script = tmp_path / "host.py"
    script.write_text(_HOST)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "LOGURU_LEVEL": "WARNING"}
    host = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "tree.json"), str(test_cgroup)],
        stdout=subprocess.PIPE,
        env=env,
    )
    tree: list[int] = []
    try:
        assert host.stdout is not None
        info = json.loads(host.stdout.readline())
        assert info.pop("containment") == "cgroup"
        keeper = psutil.Process(info["runner"]).ppid()
        tree = [*info.values(), keeper]
        groups = {_cgroup_of(p) for p in tree}
        assert len(groups) == 1, groups  # the setsid'd daemon too
        (runner_cgroup,) = groups
        assert runner_cgroup is not None
        assert runner_cgroup.startswith(_cgroup_of(host.pid) or "?")
        assert runner_cgroup != _cgroup_of(host.pid)
        # a stopped runner is killed by the supervisor: cgroup.kill, every member
        os.kill(info["runner"], signal.SIGSTOP)
        assert json.loads(host.stdout.readline()) == {"failed": "unresponsive"}
        assert host.wait(timeout=15) == 0
        left = _still_alive(tree, 2.0)
        runner_dir = test_cgroup / Path(runner_cgroup).name
        gone = not runner_dir.exists()
    finally:
        host.kill()
        host.wait()
        for pid in tree:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if host.stdout is not None:
            host.stdout.close()
    assert left == []
    assert gone, "the runner's cgroup outlived it"
