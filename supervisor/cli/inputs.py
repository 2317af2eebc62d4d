"""The CLI's task input: positional prompts and JSON lines on stdin.

One stdin line is one task, named like its protocol class::

    {"type": "Generate", "task_id": "t1", "prompt": "hi", "max_tokens": 8}

``task_id`` is optional (``line-<N>`` is used). A bad line becomes an `InputError`
naming the line; the caller reports it and carries on with the next line.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import typing
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, fields
from typing import Any

import anyio
import anyio.lowlevel

from supervisor.core.tasks import validate_task
from supervisor.protocol import BaseTask, Embed, Generate, Probe

#: Task kinds a stdin line may name. LoadModel and Warmup are the CLI's own job,
#: and a Shutdown is what the end of input (or a signal) means.
TASK_KINDS: dict[str, type[BaseTask]] = {"Generate": Generate, "Embed": Embed, "Probe": Probe}

_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class InputError:
    """A line that is not a valid task. ``line`` is 1-based."""

    line: int
    error: str

    def __str__(self) -> str:
        return f"stdin line {self.line}: {self.error}"


def _shown(name: str) -> str:
    """A name from the input as an error message may show it: on one printable line."""
    return name if name.isprintable() else repr(name)


def _unicode(where: str, text: str) -> str:
    # JSON may spell a lone surrogate ("\ud800"); no UTF-8 output could carry it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} is not valid Unicode (a lone surrogate)") from None
    return text


#: Task fields only the supervisor sets (a resumed task's delivered text).
SUPERVISOR_FIELDS = frozenset({"resume_from"})


def _coerce(kind: str, name: str, hint: Any, value: Any) -> Any:
    """Check one JSON value against a task field's annotation, strictly."""
    where = f"{kind}.{name}"
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {type(value).__name__}")
        return _unicode(where, value)
    if hint is int:
        # JSON true/false are Python bools, which are ints: refuse them explicitly.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {type(value).__name__}")
        return value
    choices = [a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal]
    if choices:  # e.g. Generate.recovery: one of the choices, or null where None is allowed
        allowed = typing.get_args(choices[0])
        if value is None and type(None) in typing.get_args(hint):
            return None
        if value not in allowed or not isinstance(value, str):
            raise ValueError(f"{where} must be one of {', '.join(map(str, allowed))}")
        return value
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where} must be a list of strings")
        return tuple(_unicode(where, v) for v in value)
    raise ValueError(f"{where} cannot be set from JSON")


def parse_task(obj: Any, *, default_task_id: str, max_tokens: int) -> BaseTask:
    """A task from a decoded JSON value; `ValueError` with a one-line reason if bad."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ValueError(f'missing "type" (one of {", ".join(TASK_KINDS)})')
    cls = TASK_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown task type {kind!r} (known: {', '.join(TASK_KINDS)})")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(obj) - known - {"type"} | (set(obj) & SUPERVISOR_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) for {kind}: {', '.join(map(_shown, unknown))}")
    values: dict[str, Any] = {}
    for name, value in obj.items():
        if name != "type":
            values[name] = _coerce(kind, name, hints[name], value)
    values.setdefault("task_id", default_task_id)
    if cls is Generate:
        values.setdefault("max_tokens", max_tokens)
    task = cls(**values)
    # The supervisor's own check, run here too so that a bad line is an InputError
    # naming its line; the prompt's size is bounded by the line length already.
    validate_task(task, max_task_bytes=sys.maxsize)
    return task


def parse_line(text: str, *, line: int, max_tokens: int) -> BaseTask | InputError:
    """One stdin line -> a task, or the error that names the line."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputError(line, f"malformed JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return InputError(line, "malformed JSON: nested too deeply")
    except ValueError:  # Python converts at most this many digits from text to an int
        digits = sys.get_int_max_str_digits()
        return InputError(line, f"malformed JSON: an integer of more than {digits} digits")
    try:
        return parse_task(obj, default_task_id=f"line-{line}", max_tokens=max_tokens)
    except ValueError as exc:
        return InputError(line, str(exc))


def prompt_tasks(prompts: Iterable[str], *, max_tokens: int) -> list[Generate]:
    return [
        Generate(task_id=f"prompt-{i}", prompt=p, max_tokens=max_tokens)
        for i, p in enumerate(prompts, 1)
    ]


def _pollable(fd: int) -> bool:
    """Pipes, sockets and terminals can be waited on; regular files and /dev/null cannot
    (epoll refuses them) but never block for long, so those are read directly."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def read_lines(fd: int, *, max_line: int) -> AsyncIterator[tuple[int, str | None]]:
    """Yield ``(line_number, text)`` from ``fd`` without blocking the event loop.

    Waits for readability instead of parking a thread in ``read()``, so a
    cancelled reader (a signal, a failed runner) leaves nothing behind. The fd is
    not switched to non-blocking mode: it is shared with the calling shell.
    Blank lines are skipped; a line longer than ``max_line`` bytes yields ``None``
    as its text (and is discarded without being buffered).
    """
    pollable = _pollable(fd)
    buf = bytearray()
    lineno = 0
    overlong = False
    while True:
        if pollable:
            await anyio.wait_readable(fd)
        else:
            await anyio.lowlevel.checkpoint()
        data = os.read(fd, _READ_SIZE)
        if not data:
            break
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            lineno += 1
            if not overlong:
                buf += data[start:nl]
            text = None if overlong or len(buf) > max_line else buf.decode("utf-8", "replace")
            buf.clear()
            overlong = False
            start = nl + 1
            if text is None or text.strip():
                yield lineno, text
        if not overlong:
            buf += data[start:]
            if len(buf) > max_line:
                overlong = True
                buf.clear()
    if buf or overlong:
        lineno += 1
        text = None if overlong else buf.decode("utf-8", "replace")
        if text is None or text.strip():
            yield lineno, text
