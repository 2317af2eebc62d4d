"""Rank groups on real torch.distributed: gloo collectives between real rank processes.

One anyio backend only: each group start imports torch in every rank (seconds on a
loaded 2-core box), and the backend-neutral contract is covered by test_ranks.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from supervisor import RestartPolicy, RunnerSpec, SupervisorConfig
from supervisor.protocol import Generate, TaskStatus
from tests.integration.test_ranks import environ, rank_pids
from tests.support.harness import supervised
from tests.support.restart_harness import restarting

pytest.importorskip("torch")
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _spec(world_size: int, **options: object) -> RunnerSpec:
    return RunnerSpec(engine="torchdist", world_size=world_size, options=options)


async def test_tokens_come_from_the_reduced_result_whatever_the_world_size() -> None:
    texts = []
    for world_size in (1, 3):
        async with supervised(_spec(world_size)) as r:
            await r.ready()
            await r.sup.start_task(Generate(task_id="g", prompt="a b", max_tokens=8))
            await r.rec.wait_for(lambda: r.rec.terminal("g") == [TaskStatus.Complete], 60)
            texts.append("".join(c.text for c in r.rec.chunks("g")))
    assert texts[0] == texts[1]  # one model, split three ways, all_reduced back
    assert len(texts[0].split()) == 8


async def test_a_killed_and_a_stopped_rank_each_restart_the_whole_group() -> None:
    # The stopped rank freezes; the other blocks in the all_reduce with a live
    # heartbeat. Heartbeat (frozen rank) or progress deadline (wedged rank): both
    # well inside the default decode_timeout of 5 s.
    config = SupervisorConfig(decode_timeout=5.0, start_timeout=120.0)
    policy = RestartPolicy(mode="on-failure", backoff_base=0.0, max_restarts=5)
    spec = _spec(2, token_delay=0.02)
    async with restarting(spec, policy, config) as r:
        await r.ready(within=90)
        for number, (victim, how) in enumerate(((1, signal.SIGKILL), (0, signal.SIGSTOP))):
            current = r.sup.current
            assert current is not None
            pids = await rank_pids(current, 2)
            port = environ(pids[0])["MASTER_PORT"]
            tid = f"long-{number}"
            await r.sup.start_task(Generate(task_id=tid, prompt="x y", max_tokens=100_000))
            await r.rec.wait_for(lambda tid=tid: len(r.rec.chunks(tid)) >= 3, 60)  # type: ignore[misc]
            struck = time.monotonic()
            os.kill(pids[victim], how)
            await r.rec.wait_for(lambda n=number: len(r.rec.failures()) == n + 1, 30)  # type: ignore[misc]
            seen = time.monotonic() - struck
            failure = r.rec.failures()[-1]
            assert f"rank {victim}" in failure.error_message, failure
            print(f"{signal.Signals(how).name} rank {victim}: failure after {seen:.2f}s")
            incarnation = number + 2
            await r.rec.wait_for(
                lambda n=incarnation: r.sup.incarnation == n and r.sup.ready,  # type: ignore[misc]
                90,
            )
            current = r.sup.current
            assert current is not None
            fresh = await rank_pids(current, 2)
            assert not set(fresh) & set(pids)
            assert environ(fresh[1])["MASTER_PORT"] != port
            ok = f"after-{number}"
            await r.sup.start_task(Generate(task_id=ok, prompt="a b", max_tokens=4))
            await r.rec.wait_for(lambda ok=ok: r.rec.terminal(ok) == [TaskStatus.Complete], 60)  # type: ignore[misc]
        assert next(f.reason for f in r.rec.failures()) == "signalled"
        assert r.rec.failures()[1].reason in ("unresponsive", "stalled")


def test_the_cli_prints_rank_zeros_tokens_once_and_exits_0() -> None:
    from runners.engines.torchdist import VOCAB

    cli = [sys.executable, "-m", "supervisor", "run", "--engine", "torchdist"]
    done = subprocess.run(
        [*cli, "--world-size", "2", "--max-tokens", "6", "a b"],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    assert len(words) == 6, done.stdout  # one rank's tokens, not two
    assert set(words) <= set(VOCAB)


async def test_a_wedged_collective_is_caught_by_the_progress_deadline() -> None:
    # With the freeze detector out of the way, nothing but the progress deadlines can
    # see a rank stopped inside the collective: the others wait in it, heartbeats live.
    config = SupervisorConfig(heartbeat_stale_checks=10_000, decode_timeout=2.0)
    async with supervised(_spec(2, token_delay=0.02), config) as r:
        await r.ready()
        pids = await rank_pids(r.sup, 2)
        await r.sup.start_task(Generate(task_id="g", prompt="x", max_tokens=100_000))
        await r.rec.wait_for(lambda: len(r.rec.chunks("g")) >= 3, 60)
        stopped = time.monotonic()
        os.kill(pids[1], signal.SIGSTOP)
        await r.rec.wait_for(lambda: bool(r.rec.failures()), 30)
        seen = time.monotonic() - stopped
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "stalled", failure
    assert failure.error_message.startswith(("rank 0: ", "rank 1: "))
    assert seen < 2.0 + 10.0  # the deadline, and generous slack for a loaded machine
    assert r.rec.terminal("g") == [TaskStatus.Failed]
