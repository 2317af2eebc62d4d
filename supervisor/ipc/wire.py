"""Compact wire form of the hot events.

Pickling a slotted dataclass instance costs ~4 us each way (class lookup, the
dataclass ``__getstate__``/``__setstate__``); a plain tuple costs ~0.3 us. The
events sent once per token travel as ``(code, *fields)`` tuples and are rebuilt
as the public dataclasses on the parent side. Everything else is pickled as is.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from supervisor.protocol import ChunkGenerated, TaskAcknowledged, TaskStatus, TaskStatusUpdated

_CHUNK = 1
_ACK = 2
_TASK_STATUS = 3

#: ``multiprocessing.Connection`` framing: a signed 4-byte length, or -1 then 8 bytes.
HEADER = struct.Struct("!i")
LARGE_HEADER = struct.Struct("!Q")
#: Largest frame the parent accepts from a runner. Events are tokens, statuses and
#: embedding vectors (kilobytes); a length beyond this is a corrupt stream, refused
#: before anything is buffered for it.
MAX_FRAME_BYTES = 256 * 1024 * 1024
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def to_wire(obj: object) -> object:
    kind = type(obj)
    if kind is ChunkGenerated:
        assert isinstance(obj, ChunkGenerated)
        return (_CHUNK, obj.task_id, obj.index, obj.text)
    if kind is TaskAcknowledged:
        assert isinstance(obj, TaskAcknowledged)
        return (_ACK, obj.task_id)
    if kind is TaskStatusUpdated:
        assert isinstance(obj, TaskStatusUpdated)
        return (_TASK_STATUS, obj.task_id, obj.status.value, obj.error)
    return obj


# Rebuilding a frozen dataclass through its ``__init__`` costs one ``object.__setattr__``
# per field; the slot descriptors set the same fields directly (the same instance,
# built in about half the time: this runs once per token on the host).
_new = object.__new__
_chunk_task_id, _chunk_index, _chunk_text = (
    vars(ChunkGenerated)[name].__set__ for name in ("task_id", "index", "text")
)


def from_wire(obj: Any) -> Any:
    if type(obj) is not tuple:
        return obj
    code = obj[0]
    if code == _CHUNK:
        _, task_id, index, text = obj
        chunk = _new(ChunkGenerated)
        _chunk_task_id(chunk, task_id)
        _chunk_index(chunk, index)
        _chunk_text(chunk, text)
        return chunk
    if code == _ACK:
        return TaskAcknowledged(obj[1])
    if code == _TASK_STATUS:
        return TaskStatusUpdated(obj[1], TaskStatus(obj[2]), obj[3])
    return obj


def encode_frame(obj: object) -> bytes:
    """One ``multiprocessing.Connection``-compatible frame: length, then pickle."""
    return _frame(pickle.dumps(to_wire(obj), protocol=_PROTOCOL))


def encode_chunk(task_id: str, index: int, text: str) -> bytes:
    """``encode_frame(ChunkGenerated(task_id, index, text))``, without building the
    event only to take it apart again: the runner's per-token path."""
    return _frame(pickle.dumps((_CHUNK, task_id, index, text), protocol=_PROTOCOL))


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    if n > 0x7FFFFFFF:
        return HEADER.pack(-1) + LARGE_HEADER.pack(n) + payload
    return HEADER.pack(n) + payload
