"""How one line of a runner's log file reads: cut to a bounded length, stamped, and
encoded so that no character can cost the line (or the lines written with it)."""

from __future__ import annotations

import datetime

#: Longest line kept; the rest is cut off.
MAX_LINE_CHARS = 16 * 1024
TRUNCATED = " [... line truncated]"


def cut(text: str) -> str:
    """``text``, cut to `MAX_LINE_CHARS` with `TRUNCATED` at its end when longer."""
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + TRUNCATED


def encoded(line: str) -> bytes:
    """The line as UTF-8, with its newline. A character UTF-8 cannot hold (a lone
    surrogate: bytes the runner wrote that were not UTF-8, a runner id from a non-UTF-8
    argv) is written as its escape, ``\\udcff``: the line keeps everything else, and the
    lines written with it are not lost with it."""
    return (line + "\n").encode("utf-8", "backslashreplace")


class Stamper:
    """ISO 8601 local time with milliseconds; the date, time and offset part is made
    once per second."""

    __slots__ = ("_head", "_second", "_zone")

    def __init__(self) -> None:
        self._second = -1
        self._head = self._zone = ""

    def __call__(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            local = datetime.datetime.fromtimestamp(second).astimezone()
            self._head = local.strftime("%Y-%m-%dT%H:%M:%S")
            self._zone = local.isoformat()[19:]  # +00:00
            self._second = second
        return f"{self._head}.{int((t - second) * 1000):03d}{self._zone}"


def parse_stamp(head: bytes) -> float | None:
    """The time a file's first line was stamped with (when the file was started), or
    None if ``head`` does not start with a stamp."""
    try:
        return datetime.datetime.fromisoformat(head[:29].decode("ascii")).timestamp()
    except (UnicodeDecodeError, ValueError):
        return None
