"""Walking a process's descendants through /proc (Linux), standard library only.

Both sides need it: the keeper in the runner kills what is left under it, and the
host lists and measures a runner's tree. ``/proc/<pid>/task/<tid>/children`` (Linux
>= 3.5 with CONFIG_PROC_CHILDREN, on in every distribution kernel) names each
thread's children; a walk is not atomic, so callers that kill repeat it until
nothing is left.
"""

from __future__ import annotations

import os

PROC = "/proc"


def children(pid: int, proc: str = PROC) -> list[int]:
    """Direct children of ``pid`` (any of its threads may have forked them)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        data = _read(f"{proc}/{pid}/task/{tid}/children")
        out.extend(int(word) for word in data.split() if word.isdigit())
    return out


def _read(path: str) -> bytes:
    """The whole small file, or b"" (raw fds: the keeper walks with every syscall counted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def descendants(pid: int, proc: str = PROC) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:
        found: list[int] = []
        for parent in frontier:
            for child in children(parent, proc):
                if child not in seen:  # a cycle is impossible, but a racy read is not
                    seen.add(child)
                    found.append(child)
        out.extend(found)
        frontier = found
    return out


def parent(pid: int, proc: str = PROC) -> int | None:
    """The parent's pid, or None once the process is gone."""
    data = _read(f"{proc}/{pid}/stat")
    if b")" not in data:
        return None
    # "pid (comm) S ppid ...": comm may hold spaces and parentheses
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def name(pid: int, proc: str = PROC) -> str:
    """The process's command name (``comm``), or ``?`` once it is gone."""
    return _read(f"{proc}/{pid}/comm").decode(errors="replace").strip() or "?"
