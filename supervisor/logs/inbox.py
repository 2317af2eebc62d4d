"""The queue between the event loop and a directory's writer thread: bounded for lines
(a slow disk costs lines, never memory or waiting), unbounded for the few controls."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

#: Lines waiting for the writer, at most (and at most QUEUE_CHARS characters).
QUEUE_LINES = 10_000
QUEUE_CHARS = 8 * 2**20

# A line: path, time, stream, incarnation, pid, text
Line = tuple[str, float, str, int, int, str]


@dataclass(frozen=True, slots=True)
class Open:
    """Open ``path`` (or count one more user of it)."""

    path: str
    rotation: str | None
    retention: int | None
    compression: str | None


@dataclass(frozen=True, slots=True)
class Close:
    """One user of ``path`` is done: the last one closes the file."""

    path: str


Item = Line | Open | Close | threading.Event  # an Event is set once all before it is written


class Inbox:
    """A bounded queue of lines, plus control items that do not count against it."""

    def __init__(self, max_lines: int = QUEUE_LINES, max_chars: int = QUEUE_CHARS) -> None:
        self._items: deque[Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._lines = 0
        self._chars = 0
        self._max_lines = max_lines
        self._max_chars = max_chars
        #: lines refused because the queue was full
        self.dropped = 0

    def put_line(self, item: Line) -> bool:
        size = len(item[5])
        with self._cond:
            if self._lines >= self._max_lines or self._chars + size > self._max_chars:
                self.dropped += 1
                return False
            self._items.append(item)
            self._lines += 1
            self._chars += size
            self._cond.notify()
        return True

    def put_control(self, item: Item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout: float) -> list[Item]:
        """Everything queued (waiting up to ``timeout`` for something)."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._lines = self._chars = 0
            return items

    def empty(self) -> bool:
        with self._cond:
            return not self._items
