"""The wire codec and the frame decoder: round trips, any split, and garbage in."""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.core.channel import ChannelReader, FrameDecoder, FrameError
from supervisor.ipc.wire import (
    HEADER,
    LARGE_HEADER,
    encode_chunk,
    encode_frame,
    from_wire,
    to_wire,
)
from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    RunnerFailed,
    RunnerStatusUpdated,
    TaskAcknowledged,
    TaskStatus,
    TaskStatusUpdated,
)

task_ids = st.text(max_size=20)
texts = st.text(max_size=200)  # any code points, lone surrogates included
events: st.SearchStrategy[BaseEvent] = st.one_of(
    st.builds(ChunkGenerated, task_ids, st.integers(min_value=0, max_value=2**40), texts),
    st.builds(TaskAcknowledged, task_ids),
    st.builds(
        TaskStatusUpdated, task_ids, st.sampled_from(TaskStatus), st.none() | st.text(max_size=50)
    ),
    st.builds(
        RunnerStatusUpdated,
        task_ids,
        st.builds(RunnerFailed, reason=st.just("crashed"), error_message=texts),
    ),
)


def feed_in_pieces(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[object]:
    out: list[object] = []
    pos = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        out.extend(decoder.feed(stream[pos:cut]))
        pos = max(pos, cut)
    out.extend(decoder.feed(stream[pos:]))
    return out


@given(st.lists(events, max_size=20), st.lists(st.integers(min_value=0), max_size=30))
def test_any_events_split_anywhere_decode_to_the_same_events(
    sent: list[BaseEvent], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(e) for e in sent)
    decoder = FrameDecoder()
    assert feed_in_pieces(decoder, stream, cuts) == sent
    assert decoder.buffered == 0


@given(events)
def test_hot_events_travel_as_tuples_and_come_back_equal(event: BaseEvent) -> None:
    wire = to_wire(event)
    if isinstance(event, RunnerStatusUpdated):
        assert wire is event  # pickled as is
    else:
        assert type(wire) is tuple
    assert from_wire(pickle.loads(pickle.dumps(wire))) == event


@given(st.lists(events, min_size=1, max_size=5), st.data())
def test_a_truncated_stream_yields_the_whole_frames_and_keeps_the_rest(
    sent: list[BaseEvent], data: st.DataObject
) -> None:
    frames = [encode_frame(e) for e in sent]
    stream = b"".join(frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    decoder = FrameDecoder()
    got = decoder.feed(stream[:cut])
    whole = 0
    size = 0
    for frame in frames:
        if size + len(frame) > cut:
            break
        size += len(frame)
        whole += 1
    assert got == sent[:whole]
    assert decoder.buffered == cut - size
    assert decoder.feed(stream[cut:]) == sent[whole:]


def test_the_large_header_form_is_understood() -> None:
    event = ChunkGenerated("t", 3, "big")
    payload = pickle.dumps(to_wire(event))
    frame = HEADER.pack(-1) + LARGE_HEADER.pack(len(payload)) + payload
    decoder = FrameDecoder()
    # Split inside the 12-byte header, then inside the payload.
    assert decoder.feed(frame[:6]) == []
    assert decoder.feed(frame[6:14]) == []
    assert decoder.feed(frame[14:]) == [event]


def test_a_short_frame_after_a_large_header_one_is_not_held_back() -> None:
    # The bytes still needed are those of the frame cut off, not of the one before it.
    big = ChunkGenerated("t", 3, "big")
    payload = pickle.dumps(to_wire(big))
    large = HEADER.pack(-1) + LARGE_HEADER.pack(len(payload)) + payload
    small = HEADER.pack(2) + pickle.dumps(None, protocol=0)  # a 6-byte frame: b"N."
    decoder = FrameDecoder()
    assert decoder.feed(large + small[:2]) == [big]
    assert decoder.feed(small[2:3]) == []
    assert decoder.feed(small[3:]) == [None]


@pytest.mark.parametrize(
    "payload",
    [
        b"not a pickle",
        pickle.dumps((1, "t")),  # a chunk tuple with fields missing
        pickle.dumps((3, "t", "NoSuchStatus", None)),  # an unknown TaskStatus
    ],
)
def test_a_corrupt_frame_is_one_wire_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(HEADER.pack(len(payload)) + payload)


def test_a_negative_length_other_than_the_large_marker_is_a_wire_error() -> None:
    with pytest.raises(FrameError, match="length"):
        FrameDecoder().feed(HEADER.pack(-2) + b"\x00" * 16)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_give_messages_or_one_wire_error(pieces: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for piece in pieces:
            assert isinstance(decoder.feed(piece), list)
    except FrameError:
        pass


@given(st.binary(max_size=64))
def test_arbitrary_payloads_in_valid_frames_give_a_message_or_one_wire_error(
    payload: bytes,
) -> None:
    try:
        out = FrameDecoder().feed(HEADER.pack(len(payload)) + payload)
    except FrameError:
        return
    assert len(out) == 1


@pytest.mark.anyio
async def test_a_corrupt_pipe_raises_once_then_reads_as_ended() -> None:
    r, w = os.pipe()
    reader = ChannelReader(r)
    try:
        os.write(w, encode_frame(TaskAcknowledged("t")) + HEADER.pack(3) + b"bad")
        # the good message before the bad frame is delivered, then the error, once
        assert reader.read_available() == [TaskAcknowledged("t")]
        with pytest.raises(FrameError):
            await reader.receive()
        os.write(w, encode_frame(TaskAcknowledged("u")))
        assert reader.read_available() == []  # a final drain after the error is quiet
    finally:
        reader.close()
        os.close(w)


@given(task_ids, st.integers(min_value=0, max_value=2**40), texts)
def test_the_runners_chunk_frame_is_the_chunk_events_frame(
    task_id: str, index: int, text: str
) -> None:
    assert encode_chunk(task_id, index, text) == encode_frame(ChunkGenerated(task_id, index, text))
