"""A runner that writes an undecodable frame fails once, cleanly, with its earlier events kept."""

from __future__ import annotations

import pytest

from supervisor import RunnerSpec
from supervisor.protocol import Generate, TaskStatus
from tests.support.harness import supervised

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["pickle", "length"])
async def test_undecodable_frame_fails_the_runner_once(mode: str) -> None:
    spec = RunnerSpec(
        engine="tests.support.hostile_engines:UndecodableEngine",
        options={"mode": mode, "after": 3, "token_delay": 0.01},
    )
    async with supervised(spec) as r:
        await r.ready()
        await r.sup.start_task(Generate(task_id="g", prompt="a b c d e", max_tokens=50))
        await r.rec.wait_for(lambda: bool(r.rec.failures()), within=15)
        await r.finished()
    (failure,) = r.rec.failures()
    assert failure.reason == "crashed"
    assert failure.detected_by == "channel"
    expected = "undecodable frame" if mode == "pickle" else "negative frame length"
    assert expected in failure.error_message
    assert "\n" not in failure.error_message
    # The tokens sent before the bad frame were delivered, none after it.
    assert [c.index for c in r.rec.chunks("g")] == [0, 1, 2]
    assert r.rec.terminal("g") == [TaskStatus.Failed]
    assert r.sup.finished
