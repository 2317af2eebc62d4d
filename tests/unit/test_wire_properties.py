"""Property tests of the event-stream decoder: any bytes in, messages or one FrameError out.

The parent decodes whatever a runner writes to its event pipe. Whatever that is (a
torn write, a corrupt length, a pickle of a class only the runner knows), the
decoder must hand back the messages it could decode, then one typed error, and
never buffer more than one bounded frame.
"""

from __future__ import annotations

import itertools
import os
import pickle
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.core.channel import ChannelReader, FrameDecoder, FrameError
from supervisor.ipc.wire import HEADER, LARGE_HEADER, MAX_FRAME_BYTES, encode_frame
from supervisor.protocol import (
    ChunkGenerated,
    EmbeddingGenerated,
    LoadProgress,
    RunnerFailed,
    RunnerReady,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)

#: Small, so that random headers exceed it and the bound is exercised.
MAX_FRAME = 4096
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text = st.text(max_size=30)
EVENTS = st.one_of(
    st.builds(ChunkGenerated, _text, st.integers(0, 10**6), _text),
    st.builds(TaskAcknowledged, _text),
    st.builds(TaskStatusUpdated, _text, st.sampled_from(TaskStatus), st.none() | _text),
    st.builds(
        RunnerStatusUpdated,
        _text,
        st.one_of(
            st.just(RunnerReady()),
            st.builds(RunnerFailed, st.just("crashed"), _text, diagnostics=st.tuples(_text)),
        ),
    ),
    st.builds(EmbeddingGenerated, _text, st.integers(0, 9), st.integers(0, 9), st.binary()),
    st.builds(LoadProgress, _text, st.floats(0, 1), _text),
)


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


#: Bytes that are mostly framed right, with contents that are not: random payloads,
#: any header value (negative, huge, the large-frame marker), and wire tuples with
#: a known code but the wrong fields.
_wire_tuples = st.tuples(
    st.sampled_from([1, 2, 3]),
    st.lists(st.one_of(st.none(), st.integers(), _text, st.binary(max_size=8)), max_size=4),
).map(lambda t: _frame(pickle.dumps((t[0], *t[1]))))
GARBAGE = st.lists(
    st.one_of(
        st.binary(max_size=40).map(_frame),
        st.binary(max_size=40),
        st.integers(-(2**31), 2**31 - 1).map(HEADER.pack),
        st.integers(0, 2**64 - 1).map(lambda n: HEADER.pack(-1) + LARGE_HEADER.pack(n)),
        _wire_tuples,
        EVENTS.map(encode_frame),
    ),
    max_size=8,
).map(b"".join)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _decode(pieces: list[bytes], max_frame: int = MAX_FRAME) -> tuple[list[Any], FrameError | None]:
    """Feed ``pieces`` one by one, checking the contract after each; the messages and
    the error, if any."""
    decoder = FrameDecoder(max_frame)
    out: list[Any] = []
    for piece in pieces:
        try:
            out.extend(decoder.feed(piece))
        except FrameError as exc:
            out.extend(exc.decoded)
            assert decoder.buffered == 0  # nothing kept for a stream that is over
            with pytest.raises(FrameError):  # and nothing accepted after it
                decoder.feed(encode_frame(TaskAcknowledged("t")))
            return out, exc
        # At most one incomplete frame, and never one longer than the limit.
        assert decoder.buffered < 12 + max_frame
    return out, None


def _shape(messages: list[Any]) -> list[str]:
    """What a message is, comparable even when it holds NaN."""
    return [type(m).__name__ for m in messages]


@SETTINGS
@given(st.data(), st.lists(EVENTS, max_size=8))
def test_events_survive_any_split(data: st.DataObject, events: list[Any]) -> None:
    stream = b"".join(encode_frame(e) for e in events)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    out: list[Any] = []
    for piece in data.draw(splits(stream)):
        out.extend(decoder.feed(piece))
    assert out == events
    assert decoder.buffered == 0


@SETTINGS
@given(st.data(), GARBAGE)
def test_any_bytes_give_messages_or_one_frame_error(data: st.DataObject, garbage: bytes) -> None:
    whole, whole_error = _decode([garbage])
    split, split_error = _decode(data.draw(splits(garbage)))
    # How the bytes were cut changes nothing: same messages, same verdict.
    assert _shape(split) == _shape(whole)
    assert (split_error is None) == (whole_error is None)
    if whole_error is not None and split_error is not None:
        assert str(split_error) == str(whole_error)


@SETTINGS
@given(st.data(), st.lists(EVENTS, min_size=1, max_size=4), GARBAGE)
def test_good_events_before_garbage_are_all_delivered(
    data: st.DataObject, events: list[Any], garbage: bytes
) -> None:
    stream = b"".join(encode_frame(e) for e in events) + garbage
    out, _ = _decode(data.draw(splits(stream)), MAX_FRAME_BYTES)
    assert out[: len(events)] == events


@SETTINGS
@given(
    st.one_of(
        st.integers(MAX_FRAME + 1, 2**31 - 1).map(HEADER.pack),
        st.integers(MAX_FRAME + 1, 2**64 - 1).map(lambda n: HEADER.pack(-1) + LARGE_HEADER.pack(n)),
        st.integers(-(2**31), -2).map(HEADER.pack),
    )
)
def test_a_bad_length_is_refused_with_its_header_before_any_payload(header: bytes) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    with pytest.raises(FrameError, match=r"length|exceeds"):
        decoder.feed(encode_frame(TaskAcknowledged("ok")) + header)
    assert decoder.buffered == 0


def test_frame_error_keeps_what_came_before_it() -> None:
    good = [TaskAcknowledged("a"), ChunkGenerated("a", 0, "x")]
    stream = b"".join(encode_frame(e) for e in good) + _frame(b"\x80\x05not a pickle")
    with pytest.raises(FrameError, match="undecodable frame") as caught:
        FrameDecoder().feed(stream)
    assert caught.value.decoded == good


def test_a_wire_tuple_with_the_wrong_fields_is_a_frame_error() -> None:
    for bad in [(1,), (2,), (3, "t", "NoSuchStatus", None), ()]:
        with pytest.raises(FrameError):
            FrameDecoder().feed(_frame(pickle.dumps(bad)))


def test_a_large_frame_arriving_piecewise_is_not_recopied_on_every_read() -> None:
    """The large-header form once left the size it needs at 12 bytes, so every read
    of a big frame copied the whole buffer again."""
    payload = pickle.dumps(ChunkGenerated("t", 0, "y" * 200_000))
    stream = HEADER.pack(-1) + LARGE_HEADER.pack(len(payload)) + payload
    decoder = FrameDecoder()
    out: list[Any] = []
    for i in range(0, len(stream), 1000):
        out.extend(decoder.feed(stream[i : i + 1000]))
        if i + 1000 < len(stream):
            assert decoder._need == len(stream)  # the property under test
    assert out == [ChunkGenerated("t", 0, "y" * 200_000)]


@pytest.mark.anyio
async def test_channel_reader_delivers_then_raises_once_then_stays_quiet() -> None:
    r, w = os.pipe()
    reader = ChannelReader(r)
    try:
        good = [TaskAcknowledged("t"), TaskStatusUpdated("t", TaskStatus.Complete)]
        os.write(w, b"".join(encode_frame(e) for e in good) + HEADER.pack(-7) + b"rest")
        with anyio.fail_after(5):
            assert await reader.receive() == good
            with pytest.raises(FrameError, match="negative frame length -7"):
                await reader.receive()
        os.write(w, encode_frame(TaskAcknowledged("late")))
        assert reader.read_available() == []  # what ends a supervisor drains quietly
        assert reader.error is not None
    finally:
        reader.close()
        os.close(w)
