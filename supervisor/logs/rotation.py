"""When a runner's log file is rotated, and how rotated files are packed: the
``--log-rotation`` and ``--log-compression`` values, read once into plain data.

The words are loguru's, so that the flags read as they always did: a size (``50 MB``,
``1 GiB``), an interval (``1 day``, ``12 hours``) or a time of day (``00:00``,
``sunday``, ``monday at 12:00``). No I/O here but `compress`.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime
import functools
import gzip
import lzma
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)b", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_INTERVAL = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)", re.IGNORECASE)
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_AT = re.compile(
    rf"(?:(?P<day>{'|'.join(_DAYS)})(?:\s+at\s+|\s*$))?"
    r"(?:(?P<h>\d\d?):(?P<m>\d\d)(?::(?P<s>\d\d))?)?",
    re.IGNORECASE,
)
COMPRESSIONS = ("gz", "bz2", "xz", "zip", "tar", "tar.gz", "tar.bz2", "tar.xz")
_HELP = (
    "log rotation: a size like '50 MB', an interval like '1 day' or a time like '00:00' "
    f"or 'sunday at 12:00'; log compression: {', '.join(COMPRESSIONS)}"
)


@dataclass(frozen=True, slots=True)
class Rotation:
    """Start a new file past a size, after an interval, or at a time of day (local time,
    on a weekday when ``weekday`` is set: 0 is Monday). One of the three is set."""

    size: int | None = None
    interval: float | None = None
    at: datetime.time | None = None
    weekday: int | None = None

    def next_after(self, started: float) -> float | None:
        """When a file started at ``started`` is due by time (None: by size only)."""
        if self.interval is not None:
            return started + self.interval
        if self.at is None:
            return None
        begun = datetime.datetime.fromtimestamp(started).astimezone()
        due = datetime.datetime.combine(begun.date(), self.at, begun.tzinfo)
        if self.weekday is not None:
            due += datetime.timedelta(days=(self.weekday - due.weekday()) % 7)
        while due <= begun:
            due += datetime.timedelta(days=7 if self.weekday is not None else 1)
        return due.timestamp()


@functools.lru_cache(maxsize=64)
def parse_rotation(text: str) -> Rotation:
    """`Rotation` from ``text``; `ValueError` (one line) if it reads as none."""
    if not isinstance(text, str):
        raise ValueError(f"log rotation must be a string, got {type(text).__name__}")
    words = " ".join(text.split())
    if m := _SIZE.fullmatch(words):
        value = float(m.group(1)) * (1024 if m.group(3) else 1000) ** _POWERS[m.group(2).lower()]
        return Rotation(size=int(_positive(value, text)))
    if (m := _INTERVAL.fullmatch(words)) and m.group(2).lower() in _UNITS:
        return Rotation(interval=_positive(float(m.group(1)) * _UNITS[m.group(2).lower()], text))
    if words and (m := _AT.fullmatch(words)):
        day = m.group("day")
        try:
            at = datetime.time(
                int(m.group("h") or 0), int(m.group("m") or 0), int(m.group("s") or 0)
            )
        except ValueError:
            raise ValueError(f"log rotation {text!r}: no such time of day") from None
        return Rotation(at=at, weekday=None if day is None else _DAYS.index(day.lower()))
    raise ValueError(f"cannot read log rotation {text!r} ({_HELP})")


def _positive(value: float, text: str) -> float:
    if value <= 0:
        raise ValueError(f"log rotation must be positive, got {text!r}")
    return value


def check_compression(fmt: str | None) -> None:
    if fmt is not None and fmt not in COMPRESSIONS:
        raise ValueError(f"unknown log compression {fmt!r} ({_HELP})")


def check_file_options(rotation: str | None, compression: str | None) -> None:
    """`ValueError` (one line) unless ``rotation`` and ``compression`` can be used."""
    for name, value in (("rotation", rotation), ("compression", compression)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"log {name} must be a string, got {type(value).__name__}")
    if rotation is not None:
        parse_rotation(rotation)
    check_compression(compression)


def compress(path: str, fmt: str) -> str:
    """Pack the rotated file ``path`` into ``path.FMT`` and remove it; the new path.
    On failure the original stays (and the error propagates)."""
    out = f"{path}.{fmt}"
    try:
        if fmt.startswith("tar"):
            mode = "w" if fmt == "tar" else f"w:{fmt[4:]}"
            with tarfile.open(out, mode) as tar:  # type: ignore[call-overload]
                tar.add(path, arcname=os.path.basename(path))
        elif fmt == "zip":
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.write(path, arcname=os.path.basename(path))
        else:
            openers: dict[str, Callable[..., Any]] = {
                "gz": gzip.open,
                "bz2": bz2.open,
                "xz": lzma.open,
            }
            with open(path, "rb") as src, openers[fmt](out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(out)
        raise
    os.unlink(path)
    return out
