"""Framing: byte-compatible with multiprocessing.Connection, any split of the stream."""

from __future__ import annotations

import os
import random
from multiprocessing.connection import Connection

import anyio
import pytest

from supervisor.core.channel import ChannelReader, FrameDecoder
from supervisor.core.process import describe_exit
from supervisor.core.readable import ReadableWatch
from supervisor.ipc.wire import encode_frame
from supervisor.protocol import (
    ChunkGenerated,
    RunnerFailed,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)

EVENTS = [
    ChunkGenerated("t", 0, "hello "),
    TaskAcknowledged("t"),
    TaskStatusUpdated("t", TaskStatus.Failed, "boom"),
    RunnerStatusUpdated("r", RunnerFailed(reason="exited", error_message="exitcode=1")),
    ChunkGenerated("t", 1, "x" * 300_000),  # bigger than one read
]


def test_frames_decode_across_any_split() -> None:
    stream = b"".join(encode_frame(e) for e in EVENTS)
    rng = random.Random(7)
    for _ in range(50):
        decoder = FrameDecoder()
        out = []
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 3, 4, 5, 64, 4096, 70_000, 1 << 20])
            out.extend(decoder.feed(stream[pos : pos + step]))
            pos += step
        assert out == EVENTS
        assert decoder.buffered == 0


def test_frames_are_what_connection_recv_reads() -> None:
    r, w = os.pipe()
    reader = Connection(r, writable=False)
    try:
        for event in EVENTS[:4]:
            os.write(w, encode_frame(event))
            got = reader.recv()
            # compact wire tuples are rebuilt by the decoder; recv sees the raw form
            assert got == event or isinstance(got, tuple)
    finally:
        reader.close()
        os.close(w)


def test_exit_descriptions() -> None:
    assert describe_exit(1) == "exitcode=1"
    assert describe_exit(-9) == "signal=9 (Killed)"
    assert describe_exit(-11) == "signal=11 (Segmentation fault)"
    assert describe_exit(-15) == "signal=15 (Terminated)"


# ------------------------------------------------ ChannelReader.receive on a real pipe
@pytest.mark.anyio
async def test_receive_wakes_per_event_then_closing_wakes_the_waiter(anyio_backend: str) -> None:
    r, w = os.pipe()
    reader = ChannelReader(r)
    try:
        for i in range(3):  # the asyncio watch stays registered across these waits
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_write_later, w, encode_frame(EVENTS[0]))
                    assert await reader.receive() == [EVENTS[0]], i
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def close_soon() -> None:
                    await anyio.sleep(0.05)
                    reader.close()

                tg.start_soon(close_soon)
                with pytest.raises(anyio.ClosedResourceError):
                    await reader.receive()
    finally:
        reader.close()
        os.close(w)


@pytest.mark.anyio
async def test_a_cancelled_receive_leaves_the_reader_usable(anyio_backend: str) -> None:
    r, w = os.pipe()
    reader = ChannelReader(r)
    try:
        with anyio.move_on_after(0.05) as scope:
            await reader.receive()  # nothing written: only the timeout ends it
        assert scope.cancelled_caught
        # Written while nobody waits: the next receive still sees it, and so does
        # one after a write that fired the watch while the reader was busy elsewhere.
        os.write(w, encode_frame(EVENTS[1]))
        await anyio.sleep(0.01)
        with anyio.fail_after(10):
            assert await reader.receive() == [EVENTS[1]]
            os.write(w, encode_frame(EVENTS[2]))
            await anyio.sleep(0.01)
            assert await reader.receive() == [EVENTS[2]]
        os.close(w)
        w = -1
        with anyio.fail_after(10):
            assert await reader.receive() == []
        assert reader.eof
    finally:
        reader.close()
        if w >= 0:
            os.close(w)


async def _write_later(fd: int, data: bytes) -> None:
    await anyio.sleep(0.01)
    os.write(fd, data)


@pytest.mark.anyio
async def test_a_watch_nobody_waits_on_lets_go_of_the_fd(anyio_backend: str) -> None:
    # Readable and unread, with nobody waiting: a registration that stayed would make
    # every loop turn fire it (level-triggered), so the first such firing drops it.
    r, w = os.pipe()
    watch = ReadableWatch(r)
    try:
        os.write(w, b"x")
        with anyio.fail_after(10):
            await watch.wait()
        await anyio.sleep(0.05)
        inner = watch._asyncio
        assert (inner is None) == (anyio_backend == "trio")
        if inner is not None:
            assert not inner._registered
        with anyio.fail_after(10):
            await watch.wait()  # still readable: registered again, woken at once
    finally:
        watch.close()
        os.close(r)
        os.close(w)
