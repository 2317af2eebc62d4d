"""Fatal output lines and per-runner log files, end to end with real runners.

These need the supervisor's log hook: `RunnerSupervisor` hands each output line to
`supervisor.logs.hook.output_hook` (through ``OutputCapture.on_line``) and a fatal
line ends the runner with ``reason="fatal_log"``, ``detected_by="log"``. Marked
``log_hook`` so that they can be selected while that wiring moves.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import anyio.to_thread
import pytest

from supervisor import RestartPolicy, RunnerSpec, SupervisorConfig
from supervisor.logs.files import flush_log_files, log_path
from supervisor.protocol import Generate, LoadModel, TaskStatus
from tests.support.harness import supervised
from tests.support.log_engines import BACKTRACK_BAIT, ILLEGAL_ACCESS
from tests.support.restart_harness import restarting

pytestmark = [pytest.mark.anyio, pytest.mark.log_hook]

FATAL = RunnerSpec(engine="tests.support.log_engines:FatalEngine")
OOM_ONCE = RunnerSpec(engine="tests.support.log_engines:OomOnceEngine")
CHATTY = RunnerSpec(engine="tests.support.log_engines:ChattyEngine")
BAIT = RunnerSpec(engine="tests.support.log_engines:BacktrackBaitEngine")
STAMPED = re.compile(r"^\S+ (?P<stream>\S+) +inc=(?P<inc>\d+) pid=(?P<pid>\d+) \| (?P<text>.*)$")


async def test_a_fatal_line_fails_a_wedged_runner_within_a_second() -> None:
    # The heartbeat beats on and the prefill deadline is a minute away: only the line tells.
    async with supervised(FATAL, SupervisorConfig()) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=4))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 1)
        t0 = time.monotonic()
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=10)
        latency = r.rec.failure_time() - t0
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "fatal_log"
    assert failure.detected_by == "log"
    assert "illegal memory access" in failure.error_message
    assert failure.diagnostics[0] == ILLEGAL_ACCESS
    assert latency < 1.0, f"failed {latency:.2f}s after the line"
    assert r.rec.terminal("g") == [TaskStatus.Failed]


async def test_an_out_of_memory_request_the_engine_handles_is_not_fatal() -> None:
    async with supervised(OOM_ONCE, SupervisorConfig()) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="big", prompt="x", max_tokens=4))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("big")))
        await r.sup.start_task(Generate(task_id="small", prompt="x", max_tokens=4))
        await r.rec.wait_for(lambda: bool(r.rec.terminal("small")))
        assert any("CUDA out of memory" in line for line in r.sup.ranks[0]._proc.output.tail)
    assert r.rec.terminal("big") == [TaskStatus.Failed]
    assert r.rec.terminal("small") == [TaskStatus.Complete]
    assert r.rec.failures() == []


async def test_without_the_defaults_only_the_deadline_catches_the_wedge() -> None:
    config = SupervisorConfig(default_fatal_patterns=False, prefill_timeout=1.0, stop_grace=0.5)
    async with supervised(FATAL, config) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=4))
        await r.finished(within=20)
    (failure,) = r.rec.failures()
    assert failure.reason == "stalled"
    assert failure.detected_by == "progress"


async def test_a_users_own_pattern_fails_the_runner() -> None:
    config = SupervisorConfig(fatal_patterns=(r"engine loaded in pid \d+",))
    async with supervised(FATAL, config) as r:
        await r.sup.start_task(LoadModel(task_id="load"))
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "fatal_log"
    assert "pattern 'engine loaded in pid \\\\d+'" in failure.error_message
    assert failure.diagnostics[0].startswith("engine loaded in pid ")


async def test_a_backtracking_pattern_cannot_stall_the_event_loop(tmp_path: Path) -> None:
    """``(a+)+$`` against 27 ``a`` and a ``!`` took Python's re 4.7 s per line, in the
    event loop; with RE2 200 such lines pass while a 10 ms ticker keeps its pace."""
    config = SupervisorConfig(fatal_patterns=(r"(a+)+$",), log_dir=str(tmp_path))
    worst = 0.0
    async with supervised(BAIT, config) as r:
        done = anyio.Event()

        async def ticker() -> None:
            nonlocal worst
            last = time.monotonic()
            while not done.is_set():
                await anyio.sleep(0.01)
                now = time.monotonic()
                worst = max(worst, now - last - 0.01)
                last = now

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await r.sup.start_task(LoadModel(task_id="load"))
            tail = r.sup.ranks[0]._proc.output.tail
            await r.rec.wait_for(lambda: "bait done" in tail, within=20)
            done.set()
    assert await anyio.to_thread.run_sync(flush_log_files, 10.0)
    text = log_path(tmp_path, r.sup.runner_id).read_text()
    rows = [STAMPED.match(raw) for raw in text.splitlines()]
    texts = [row["text"] for row in rows if row is not None]
    assert texts.count(BACKTRACK_BAIT) == 200  # every line went through the matcher
    assert r.rec.failures() == []  # (a+)+$ does not match a line that ends in "!"
    # (generous for a loaded machine: with re, one line alone held the loop 4.7 s)
    assert worst < 1.0, f"the event loop stalled {worst * 1e3:.0f} ms"


async def test_a_runner_restarted_twice_leaves_one_file_with_three_incarnations(
    tmp_path: Path,
) -> None:
    config = SupervisorConfig(log_dir=str(tmp_path), stop_grace=0.5)
    policy = RestartPolicy(mode="on-failure", backoff_base=0.0)
    pids: list[int] = []
    async with restarting(FATAL, policy, config) as r:
        for n in (1, 2, 3):
            await r.ready(count=n)
            current = r.sup.current
            assert current is not None
            pids.append(current.pid)
            if n < 3:
                await r.sup.start_task(Generate(task_id=f"g{n}", prompt="x", max_tokens=4))
                await r.rec.wait_for(lambda n=n: len(r.rec.failures()) >= n, within=10)
    assert await anyio.to_thread.run_sync(flush_log_files, 10.0)

    rows = stamped_rows(tmp_path / "r1.log")
    # The restart layer's own lines, between incarnations: inc=0, the supervisor's pid.
    between = [(row["pid"], row["text"]) for row in rows if row["inc"] == "0"]
    assert [text for _, text in between if "restart" in text] == [
        "INFO    runner r1: restart 1 in 0.000s",
        "INFO    runner r1: restart 2 in 0.000s",
    ]
    assert {pid for pid, _ in between} == {str(os.getpid())}
    rows = [row for row in rows if row["inc"] != "0"]
    for inc, pid in enumerate(pids, start=1):
        # (the spawn line comes before the runner reported its pid: it names the process
        # started, a keeper under the default containment)
        mine = [
            row
            for row in rows
            if row["inc"] == str(inc) and not row["text"].startswith("INFO    spawned runner")
        ]
        assert {row["pid"] for row in mine} == {str(pid)}, (inc, mine)
        texts = [(row["stream"], row["text"]) for row in mine]
        assert ("output", f"engine loaded in pid {pid}") in texts
        spawned = [r for r in rows if r["inc"] == str(inc) and "spawned runner" in r["text"]]
        assert len(spawned) == 1, spawned
        if inc < 3:
            assert ("output", ILLEGAL_ACCESS) in texts
            assert any(s == "supervisor" and "fatal_log" in t for s, t in texts)
        else:
            assert any(s == "supervisor" and "shut down" in t for s, t in texts)
    assert [int(row["inc"]) for row in rows] == sorted(int(row["inc"]) for row in rows)


async def test_after_a_prespawned_replace_each_line_carries_its_own_incarnations_pid(
    tmp_path: Path,
) -> None:
    """With prespawn the new incarnation's file handle opens while the old one still
    runs: the old one's last lines ("shut down") must carry the old pid."""
    config = SupervisorConfig(log_dir=str(tmp_path), stop_grace=0.5)
    policy = RestartPolicy(backoff_base=0.0, prespawn=True)
    async with restarting(CHATTY, policy, config) as r:
        await r.ready()
        await r.sup.replace()
        assert r.sup.incarnation == 2
        await r.ready(count=2)
    assert await anyio.to_thread.run_sync(flush_log_files, 10.0)
    rows = stamped_rows(tmp_path / "r1.log")
    loaded = {
        row["inc"]: row["text"].rsplit(" ", 1)[1]
        for row in rows
        if row["text"].startswith("engine loaded in pid ")
    }
    assert set(loaded) == {"1", "2"}
    assert loaded["1"] != loaded["2"]
    shut = [(row["inc"], row["pid"]) for row in rows if "shut down" in row["text"]]
    # (a new spare, incarnation 3, was prespawned after the replace: it shuts down too)
    assert ("1", loaded["1"]) in shut, shut
    assert ("2", loaded["2"]) in shut, shut
    assert len({pid for _, pid in shut}) == len(shut), shut


async def test_each_rank_of_a_group_stamps_its_own_lines_with_its_own_pid(
    tmp_path: Path,
) -> None:
    """The ranks of a group share the runner's file and incarnation: a supervisor line
    about one rank (its "shut down") names that rank's process, not the last one's."""
    config = SupervisorConfig(log_dir=str(tmp_path), shutdown_grace=5.0)
    async with supervised(RunnerSpec(engine="echo", world_size=2), config) as r:
        await r.ready()
        pids = [await rank.wait_runner_pid() for rank in r.sup.ranks]
        r.sup.shutdown()
        await r.finished()
    assert await anyio.to_thread.run_sync(flush_log_files, 10.0)
    rows = stamped_rows(log_path(tmp_path, r.sup.runner_id))
    shut = sorted(int(row["pid"]) for row in rows if "shut down" in row["text"])
    assert shut == sorted(pids), rows


def stamped_rows(path: Path) -> list[dict[str, str]]:
    rows = []
    for raw in path.read_text().splitlines():
        m = STAMPED.match(raw)
        assert m, f"unstamped line {raw!r}"
        rows.append(m.groupdict())
    return rows
