"""Framing: byte-compatible with multiprocessing.Connection, any split of the stream."""

from __future__ import annotations

import os
import random
from multiprocessing.connection import Connection

from supervisor.core.channel import FrameDecoder
from supervisor.core.process import describe_exit
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
