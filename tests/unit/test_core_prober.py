"""The health canary's debounce, against a fake runner that answers as told (no processes)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from supervisor.config import SupervisorConfig
from supervisor.core.detection.interface import EndCause
from supervisor.core.detection.prober import PROBE_PREFIX, Prober
from supervisor.core.tasks import RESERVED_PREFIX
from supervisor.protocol import (
    DEVICE_UNHEALTHY,
    BaseTask,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)

pytestmark = pytest.mark.anyio

#: How the fake runner answers probe number n (1-based): None = never.
Answer = Callable[[int], TaskStatusUpdated | None]


class FakeRunner:
    def __init__(self, answer: Answer, *, idle: bool = True) -> None:
        self.answer = answer
        self.idle = idle
        self.sent: list[BaseTask] = []
        self.ends: list[EndCause] = []
        config = SupervisorConfig(probe_interval=0.02, probe_timeout=0.05, probe_failures=2)
        self.prober = Prober(
            config, runner_id="r", send=self.send, idle=lambda: self.idle, end=self.ends.append
        )

    def send(self, task: BaseTask) -> None:
        self.sent.append(task)
        self.prober.on_event(TaskAcknowledged(task.task_id))  # never an answer by itself
        reply = self.answer(len(self.sent))
        if reply is not None:
            self.prober.on_event(TaskStatusUpdated(task.task_id, reply.status, reply.error))

    async def run(self, within: float) -> None:
        with anyio.move_on_after(within):
            await self.prober.run()


def ok(_: int) -> TaskStatusUpdated:
    return TaskStatusUpdated("", TaskStatus.Complete)


def failed(error: str) -> TaskStatusUpdated:
    return TaskStatusUpdated("", TaskStatus.Failed, error)


async def test_probe_ids_are_in_the_reserved_namespace() -> None:
    fake = FakeRunner(ok)
    await fake.run(0.2)
    assert PROBE_PREFIX.startswith(RESERVED_PREFIX)
    assert len(fake.sent) >= 2
    assert [t.task_id for t in fake.sent[:2]] == [f"{PROBE_PREFIX}1", f"{PROBE_PREFIX}2"]
    assert fake.prober.sent == len(fake.sent)
    assert fake.ends == []
    assert fake.prober.outstanding == {}


async def test_healthy_answers_never_end_the_watch_and_busy_runners_are_not_probed() -> None:
    fake = FakeRunner(ok, idle=False)
    await fake.run(0.2)
    assert fake.sent == []
    fake.idle = True
    await fake.run(0.2)
    assert fake.sent
    assert fake.ends == []


async def test_unanswered_probes_end_after_the_debounce_and_stay_outstanding() -> None:
    fake = FakeRunner(lambda n: None)
    with anyio.fail_after(2):
        await fake.prober.run()  # returns once it ended the watch
    (end,) = fake.ends
    assert end.reason == "probe_failed"
    assert end.detected_by == "probe"
    assert "unanswered" in end.message
    assert "2 consecutive misses" in end.message
    assert len(fake.sent) == 1  # one probe, waited on probe_failures times
    # its late answer must still be recognised as the supervisor's, not the host's
    assert set(fake.prober.outstanding) == {fake.sent[0].task_id}


async def test_failed_answers_in_a_row_end_it_and_a_good_one_resets_the_count() -> None:
    replies = [failed("bad"), ok(2), failed("bad"), failed("worse")]
    fake = FakeRunner(lambda n: replies[n - 1])
    with anyio.fail_after(2):
        await fake.prober.run()
    (end,) = fake.ends
    assert end.message == "2 consecutive probe failures; last: worse"
    assert len(fake.sent) == 4


async def test_a_broken_device_ends_it_at_once() -> None:
    fake = FakeRunner(lambda n: failed(f"{DEVICE_UNHEALTHY}: illegal memory access"))
    with anyio.fail_after(2):
        await fake.prober.run()
    (end,) = fake.ends
    assert end.message.startswith(DEVICE_UNHEALTHY)
    assert len(fake.sent) == 1


async def test_disabled_prober_returns_at_once() -> None:
    fake = FakeRunner(ok)
    fake.prober = Prober(
        SupervisorConfig(), runner_id="r", send=fake.send, idle=lambda: True, end=fake.ends.append
    )
    with anyio.fail_after(1):
        await fake.prober.run()
    assert fake.sent == []
