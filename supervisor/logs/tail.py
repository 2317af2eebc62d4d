"""Print a runner's log file, and follow it (``runner-supervisor logs``: its command
line is `supervisor.cli.logs_command`).

Following works like ``tail -F`` (or ``supervisorctl tail -f``): when the file is
rotated (renamed, a new one started), the rest of the old file is printed, then the
new one from its start. Files rotated in between (several rotations within one poll)
are printed too, unless they were compressed already.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import os
import time
from collections.abc import Callable
from typing import BinaryIO, TextIO

from supervisor.logs.files import log_path

_BLOCK = 65536


class NoLogError(LookupError):
    """The runner has no log file in that directory (the message says why, in one line)."""


def _last_lines_offset(f: BinaryIO, count: int) -> int:
    """Offset of the start of the last ``count`` lines (read backwards in blocks)."""
    end = f.seek(0, os.SEEK_END)
    pos, newlines = end, 0
    if count <= 0:
        return end
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        if pos + step == end and block.endswith(b"\n"):
            block = block[:-1]  # the last line's own newline does not start a line
        for i in range(len(block) - 1, -1, -1):
            if block[i] == 0x0A:
                newlines += 1
                if newlines == count:
                    return pos + i + 1
    return 0


def _rotated(f: BinaryIO, path: str) -> bool:
    """The path now names another file (or none yet): ours was rotated away."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    return now.st_ino != os.fstat(f.fileno()).st_ino


def _rotated_after(path: str, inode: int) -> list[tuple[str, int]]:
    """Rotated files (not compressed) newer than the one with ``inode``, oldest first,
    with their inodes."""
    stem = path[: -len(".log")]
    found = []
    for name in glob.glob(glob.escape(stem) + ".*.log"):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            continue  # pruned meanwhile
        found.append((st.st_mtime_ns, name, st.st_ino))
    found.sort()
    inodes = [ino for _, _, ino in found]
    if inode not in inodes:
        return []  # ours was compressed or pruned: nothing to place the others after
    return [(name, ino) for _, name, ino in found[inodes.index(inode) + 1 :]]


def tail(
    runner_id: str,
    log_dir: str,
    follow: bool,
    out: TextIO,
    *,
    lines: int | None = None,
    poll: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print ``runner_id``'s log file to ``out`` (its last ``lines`` lines, if given);
    with ``follow``, keep printing what is appended until ``stop()`` or an interrupt.
    `NoLogError` if there is none."""
    path = str(log_path(log_dir, runner_id))
    try:
        f: BinaryIO = open(path, "rb")  # noqa: SIM115 - reopened on rotation
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        where = f"{log_dir} ({path}: {reason})"
        raise NoLogError(f"no log of runner {runner_id!r} in {where}") from None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def copy(src: BinaryIO) -> bool:
        data = src.read(_BLOCK)
        if data:
            out.write(decoder.decode(data))
        return bool(data)

    try:
        if lines is not None:
            f.seek(_last_lines_offset(f, lines))
        while copy(f):
            pass
        out.flush()
        while follow and not stop():
            if copy(f):
                continue
            out.flush()
            if _rotated(f, path):
                while copy(f):  # the writer closes a file before renaming it: this is its end
                    pass
                try:
                    new: BinaryIO = open(path, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    time.sleep(poll)  # between the rename and the new file
                    continue
                # Opened first, listed second: a file rotated meanwhile is either
                # between ours and the new one (printed now) or the new one itself
                # (printed from `new`, and its successors at its own rotation).
                upto = os.fstat(new.fileno()).st_ino
                for name, ino in _rotated_after(path, os.fstat(f.fileno()).st_ino):
                    if ino == upto:
                        break
                    with contextlib.suppress(FileNotFoundError), open(name, "rb") as between:
                        while copy(between):
                            pass
                f.close()
                f = new
                continue
            if os.fstat(f.fileno()).st_size < f.tell():
                f.seek(0)  # truncated in place
            time.sleep(poll)
        out.write(decoder.decode(b"", final=True))
        out.flush()
    finally:
        f.close()


__all__ = ["NoLogError", "tail"]
