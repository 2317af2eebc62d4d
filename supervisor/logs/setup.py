"""The supervisor's own log lines on a stream: text for people, JSON for machines.

JSON is one object per line with flat fields, so that a log shipper indexes them
without parsing: ``time``, ``level``, ``message``, ``logger``, ``function``, ``line``,
every bound extra (``runner_id``, ``incarnation``, ``pid`` for lines about a runner),
and ``exception`` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import json
import traceback
from typing import TYPE_CHECKING, Any, Literal, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> | {message}"


def json_line(record: Any) -> str:
    """One loguru record as one line of JSON (no newline)."""
    out: dict[str, Any] = dict(record["extra"])
    out.update(
        time=record["time"].isoformat(timespec="milliseconds"),
        level=record["level"].name,
        message=record["message"],
        logger=record["name"],
        function=record["function"],
        line=record["line"],
    )
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        out["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return json.dumps(out, default=str, ensure_ascii=False)


class _JsonSink:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, message: Message) -> None:
        self._stream.write(json_line(message.record) + "\n")
        self._stream.flush()


def configure_logging(format: LogFormat, level: str, stream: TextIO) -> None:
    """Send every log line at ``level`` or above to ``stream``, and nowhere else."""
    if format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {format!r}")
    logger.remove()
    if format == "json":
        logger.add(_JsonSink(stream), level=level, format="{message}", catch=True)
    else:
        logger.add(stream, level=level, format=TEXT_FORMAT, backtrace=False, diagnose=False)
