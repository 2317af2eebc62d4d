"""Capture of the runner's stdout/stderr, and the evidence put in `RunnerFailed`.

The runner's fds 1 and 2 point at one pipe (so a line's stream is "output", not
stdout or stderr). The parent reads it without blocking, hands each line to an
optional ``on_line`` callback (log files, fatal patterns), keeps a bounded tail, and
on failure picks out the lines that explain the death: Python tracebacks,
out-of-memory messages, CUDA errors and faulthandler dumps.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterable

import anyio
from loguru import logger

from supervisor.core.readable import ReadableWatch
from supervisor.logs.files import MAX_LINE_CHARS, TRUNCATED

#: Longest line kept in the tail and forwarded to the host's log.
MAX_LINE = 1000
#: Longest line (in bytes here) handed to ``on_line``: the log files' bound. The rest
#: of a longer line is skipped, so a runaway line is never buffered without limit.
MAX_LINE_BYTES = MAX_LINE_CHARS
#: The name ``on_line`` gets for the runner's merged stdout/stderr.
OUTPUT_STREAM = "output"

OnLine = Callable[[str, str], None]

_ANCHORS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("traceback", re.compile(r"^Traceback \(most recent call last\):")),
    ("fatal", re.compile(r"^Fatal Python error: ")),
    ("oom", re.compile(r"MemoryError|out of memory|OutOfMemory|Cannot allocate memory", re.I)),
    ("cuda", re.compile(r"CUDA error|CUBLAS_STATUS|cudaError|NCCL error|device-side assert")),
    ("segfault", re.compile(r"Segmentation fault|SIGSEGV|Bus error|SIGBUS", re.I)),
    ("stack", re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):")),
)


def _is_block_line(line: str) -> bool:
    """Lines that continue a traceback or faulthandler dump."""
    return line.startswith((" ", "\t")) or line == ""


def find_anchors(lines: Iterable[str]) -> list[str]:
    """The lines (with their traceback/dump blocks) that explain a failure."""
    lines = list(lines)
    picked: list[int] = []
    seen: set[int] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        kind = next((k for k, pat in _ANCHORS if pat.search(line)), None)
        if kind is None:
            i += 1
            continue
        j = i + 1
        if kind in ("traceback", "fatal", "stack"):
            # take the whole block: indented frames, then the final exception line
            while j < len(lines) and (
                _is_block_line(lines[j]) or lines[j].startswith(("Current thread", "Thread "))
            ):
                j += 1
            if kind == "traceback" and j < len(lines):
                j += 1  # "ValueError: boom"
        for k in range(i, j):
            if k not in seen:
                seen.add(k)
                picked.append(k)
        i = j
    return [lines[k] for k in picked]


class OutputCapture:
    """Reads the runner's combined stdout/stderr pipe into a bounded tail.

    ``on_line(stream, line)`` is called for every line, in the supervisor's event loop:
    it must not block. It sees lines of up to `MAX_LINE_BYTES` (longer ones are cut and
    end in `TRUNCATED`); the tail and the host's log keep `MAX_LINE` characters.
    """

    def __init__(
        self,
        fd: int,
        runner_id: str,
        *,
        tail_lines: int,
        forward: bool,
        on_line: OnLine | None = None,
    ) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._readable = ReadableWatch(fd)
        self._runner_id = runner_id
        self._forward = forward
        self._log = logger.bind(runner_id=runner_id, runner_output=True)
        self._partial = b""
        self._skipping = False  # inside the cut-off rest of a too long line
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.eof = False
        self.closed = False

    def _take(self, data: bytes) -> None:
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return
            data = data[end + 1 :]
            self._skipping = False
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:  # a runaway line without a newline
            complete.append(self._partial)
            self._partial = b""
            self._skipping = True
        on_line = self.on_line
        for raw in complete:
            cut = len(raw) > MAX_LINE_BYTES
            line = raw[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r")
            if cut:
                line += TRUNCATED
            if on_line is not None:
                on_line(OUTPUT_STREAM, line)
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE] + "..."
            self.tail.append(line)
            if self._forward:
                self._log.debug("[{}] {}", self._runner_id, line)

    def read_available(self) -> None:
        while not self.eof and not self.closed:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self.eof = True
                return
            if not data:
                self.eof = True
                if self._partial:
                    self._take(b"\n")
                return
            self._take(data)

    async def pump(self) -> None:
        """Read until EOF. Runs in the supervisor's task group."""
        while not self.eof and not self.closed:
            await self._readable.wait()
            self.read_available()

    async def drain(self, within: float) -> None:
        """Read what the runner wrote last, for at most ``within`` seconds."""
        with anyio.move_on_after(within):
            await self.pump()
        self.read_available()

    def evidence(self, limit: int, extra: Iterable[str] = ()) -> tuple[str, ...]:
        """Anchored lines first, then the tail, at most ``limit`` lines in all."""
        lines = list(self.tail)
        out = list(extra)
        given = set(out)
        out.extend(ln for ln in find_anchors(lines) if ln not in given)
        out = out[:limit]
        room = limit - len(out) - 1
        if room > 0:
            shown = set(out)
            tail = [ln for ln in lines[-room:] if ln not in shown]
            if tail:
                out.append("--- last output ---")
                out.extend(tail)
        return tuple(out)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._readable.close()
            os.close(self._fd)
