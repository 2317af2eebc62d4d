"""How the CLI shows events: JSON lines for machines, streamed text for people.

JSON rendering (``--json``), one object per line:

- events: ``{"type": <event class name>, <field>: <value>, ...}``;
- runner statuses inside them: ``{"type": <status class name>, <field>: ...}``;
- `TaskStatus`: its string (``"Complete"``);
- bytes (``EmbeddingGenerated.vector``, float32 little-endian): a list of floats,
  so a consumer needs no decoding step and the ``dim`` field matches its length;
- tuples: lists.

The CLI adds three records of its own: ``RunnerStarted`` (first line: ``pid``,
``runner_id``), ``InputRejected`` (a bad task: ``line`` of stdin, or null for a
positional prompt, and ``error``) and
``RunFinished`` (last line: ``exit_code`` of the CLI, ``runner_exit_code``).
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import json
import struct
import sys
from typing import Any, TextIO

from loguru import logger

from supervisor.protocol import (
    BaseEvent,
    ChunkGenerated,
    EmbeddingGenerated,
    LoadProgress,
    RunnerFailed,
    RunnerStatusUpdated,
    TaskStatus,
    TaskStatusUpdated,
)


def floats_from_bytes(data: bytes) -> list[float]:
    """float32 little-endian bytes -> floats (trailing partial bytes are ignored)."""
    count = len(data) // 4
    return list(struct.unpack(f"<{count}f", data[: count * 4]))


def to_jsonable(value: Any) -> Any:
    """A protocol value as plain JSON types (see the module doc for the rules)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return floats_from_bytes(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = to_jsonable(getattr(value, f.name))
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return repr(value)


def encodable(text: str, encoding: str | None) -> str:
    """``text`` with whatever ``encoding`` cannot represent (a lone surrogate from
    undecodable input, a non-ASCII character on an ASCII terminal) as backslash escapes.

    JSON output is ASCII (``ensure_ascii``), so this never touches it: a ``\\x..``
    escape would not be valid inside a JSON string.
    """
    try:
        codec = codecs.lookup(encoding or "utf-8").name
    except LookupError:  # a stream that names an encoding Python does not know
        codec = "ascii"
    return text.encode(codec, "backslashreplace").decode(codec)


def event_json(event: BaseEvent) -> str:
    """One event as one JSON line (without the newline)."""
    return json.dumps(to_jsonable(event), separators=(",", ":"), allow_nan=True)


class Output:
    """Where the CLI's results go. Subclasses decide the format.

    Writes are synchronous: stdout belongs to whoever runs the CLI, not to the
    runner, so a slow reader slows the CLI down (back-pressure) rather than
    losing events. A closed stdout (``| head``) sets `broken` and stops output.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.broken = False

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:
                # A ValueError too, but not a closed stream: the text, not the reader, is
                # at fault. Streams encode before writing, so nothing went out yet.
                self.stream.write(encodable(text, getattr(self.stream, "encoding", None)))
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            # ValueError: the stream was closed under us. Either way nobody listens.
            self.broken = True

    def started(self, pid: int, runner_id: str) -> None:
        raise NotImplementedError

    def event(self, event: BaseEvent) -> None:
        raise NotImplementedError

    def rejected(self, line: int | None, error: str) -> None:
        """A bad ``--stdin`` line. The one-line stderr error is written by the caller."""

    def finished(self, exit_code: int, runner_exit_code: int | None) -> None:
        raise NotImplementedError


class JsonOutput(Output):
    """``--json``: exactly one JSON object per line on stdout, nothing else."""

    def _record(self, record: dict[str, Any]) -> None:
        self._write(json.dumps(record, separators=(",", ":")) + "\n")

    def started(self, pid: int, runner_id: str) -> None:
        self._record({"type": "RunnerStarted", "pid": pid, "runner_id": runner_id})

    def event(self, event: BaseEvent) -> None:
        self._write(event_json(event) + "\n")

    def rejected(self, line: int | None, error: str) -> None:
        self._record({"type": "InputRejected", "line": line, "error": error})

    def finished(self, exit_code: int, runner_exit_code: int | None) -> None:
        self._record(
            {"type": "RunFinished", "exit_code": exit_code, "runner_exit_code": runner_exit_code}
        )


class HumanOutput(Output):
    """Default: generated text streamed to stdout, everything else logged to stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._open_line: str | None = None  # task whose text is mid-line on stdout
        self._embedded: dict[str, tuple[int, int]] = {}  # task -> (vectors, dim)

    def _end_line(self) -> None:
        if self._open_line is not None:
            self._write("\n")
            self._open_line = None

    def started(self, pid: int, runner_id: str) -> None:
        logger.debug("runner {} started (pid {})", runner_id, pid)

    def event(self, event: BaseEvent) -> None:
        if isinstance(event, ChunkGenerated):
            if self._open_line != event.task_id:
                self._end_line()
                self._open_line = event.task_id
            self._write(event.text)
        elif isinstance(event, TaskStatusUpdated):
            if event.status.terminal:
                if event.task_id == self._open_line:
                    self._end_line()
                shape = self._embedded.pop(event.task_id, None)
                if shape is not None and event.status is TaskStatus.Complete:
                    self._write(f"[{event.task_id}] embeddings: {shape[0]} x {shape[1]}\n")
                if event.status is TaskStatus.Complete:
                    logger.debug("task {} complete", event.task_id)
                else:
                    logger.warning(
                        "task {} {}{}",
                        event.task_id,
                        event.status,
                        f": {event.error}" if event.error else "",
                    )
        elif isinstance(event, RunnerStatusUpdated):
            status = event.status
            if isinstance(status, RunnerFailed):
                self._end_line()
                # The supervisor logged the failure itself, once; add only its evidence.
                for line in status.diagnostics:
                    logger.error("  | {}", line)
            else:
                logger.debug("runner {} -> {}", event.runner_id, type(status).__name__)
        elif isinstance(event, EmbeddingGenerated):
            self._end_line()
            count, _ = self._embedded.get(event.task_id, (0, event.dim))
            self._embedded[event.task_id] = (count + 1, event.dim)
            head = ", ".join(f"{x:.4f}" for x in floats_from_bytes(event.vector)[:4])
            self._write(f"[{event.task_id}#{event.index}] dim={event.dim} [{head}, ...]\n")
        elif isinstance(event, LoadProgress):
            logger.debug("task {} progress {:.0%} {}", event.task_id, event.fraction, event.message)

    def finished(self, exit_code: int, runner_exit_code: int | None) -> None:
        self._end_line()
        logger.info("done: exit code {} (runner exit code {})", exit_code, runner_exit_code)
