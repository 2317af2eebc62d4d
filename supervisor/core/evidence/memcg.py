"""The kernel's OOM counters: a process's memory cgroup and the system's vmstat.

The OOM killer counts every kill twice: in ``/proc/vmstat`` (``oom_kill``, the whole
system) and in the victim's memory cgroup (cgroup v2 ``memory.events``, v1
``memory.oom_control``; both have an ``oom_kill`` line). A runner's cgroup can only
be read while it lives (``/proc/PID/cgroup`` goes with it), so its path and the
counter's value are noted then; after a SIGKILL death the counter is read again.

Parsing takes the text, and the readers a /proc root, so fake trees test them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from supervisor.core.cgroups import cgroup2_mount, host_dir, unified_path
from supervisor.core.procfs import ProcFile

PROC = "/proc"


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    """The directory of a memory cgroup, and the file holding its ``oom_kill`` count."""

    path: Path
    version: int  # 1 or 2

    @property
    def counter_file(self) -> Path:
        return self.path / ("memory.oom_control" if self.version == 1 else "memory.events")

    def oom_kills(self) -> int | None:
        """Processes of this cgroup the OOM killer killed; None if unreadable."""
        try:
            return oom_kill_count(self.counter_file.read_text())
        except OSError:
            return None


def oom_kill_count(text: str) -> int | None:
    """The ``oom_kill N`` line of memory.events, memory.oom_control or vmstat."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


def v1_memory_path(proc_cgroup: str) -> str | None:
    """The cgroup v1 memory hierarchy's path in ``/proc/<pid>/cgroup``."""
    for line in proc_cgroup.splitlines():
        _, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if sep and "memory" in controllers.split(",") and path.startswith("/"):
            return path
    return None


def v1_memory_mount(mountinfo: str) -> tuple[str, str] | None:
    """(mount point, root it shows) of the cgroup v1 memory hierarchy, if mounted."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, fs = left.split(), right.split()
        is_v1 = sep and len(fields) >= 5 and len(fs) >= 3 and fs[0] == "cgroup"
        if is_v1 and "memory" in fs[2].split(","):
            return fields[4], fields[3]
    return None


def memory_cgroup(proc_cgroup: str, mountinfo: str) -> MemoryCgroup | None:
    """The memory cgroup a process is in (v1 where the controller lives there). Pure."""
    v1 = v1_memory_path(proc_cgroup)
    if v1 is not None:
        mount = v1_memory_mount(mountinfo)
        where = host_dir(v1, mount) if mount is not None else None
        return MemoryCgroup(where, 1) if where is not None else None
    v2 = unified_path(proc_cgroup)
    mount = cgroup2_mount(mountinfo)
    if v2 is None or mount is None:
        return None
    where = host_dir(v2, mount)
    return MemoryCgroup(where, 2) if where is not None else None


def mount_table(proc: str = PROC) -> str:
    """This process's /proc/self/mountinfo ("" if unreadable)."""
    try:
        return Path(proc, "self", "mountinfo").read_text()
    except OSError:
        return ""


def proc_cgroup(pid: int, proc: str = PROC) -> str | None:
    """``/proc/<pid>/cgroup``; None once the process is gone (a watcher that reads it
    at every poll keeps a `procfs.ProcFile` open instead: see `decode_cgroup`)."""
    file = ProcFile(pid, "cgroup", proc=proc)
    try:
        return decode_cgroup(file.read())
    finally:
        file.close()


def decode_cgroup(data: bytes | None) -> str | None:
    """The text of a ``/proc/<pid>/cgroup`` reading (None stays None)."""
    return None if data is None else data.decode("utf-8", "replace")


def cgroup_of(pid: int, proc: str = PROC) -> MemoryCgroup | None:
    """The memory cgroup of live process ``pid``; None if gone or not visible here."""
    own = proc_cgroup(pid, proc)
    return None if own is None else memory_cgroup(own, mount_table(proc))


#: ``PF_EXITING`` in /proc/PID/stat's flags: set first thing in the kernel's exit path.
_PF_EXITING = 0x4


def is_exiting(pid: int, proc: str = PROC) -> bool:
    """Whether ``pid`` is gone or on its way out. An exiting process is moved to the
    root cgroup (cgroup v1) before it becomes a zombie: its cgroup then says nothing."""
    try:
        stat = Path(proc, str(pid), "stat").read_text()
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    # after "pid (comm)": state, ppid, pgrp, session, tty_nr, tpgid, flags
    if len(fields) < 7 or not fields[6].isdigit():
        return False
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


def system_oom_kills(proc: str = PROC) -> int | None:
    """The system's OOM kill count since boot (``/proc/vmstat``); None if unreadable."""
    try:
        return oom_kill_count(Path(proc, "vmstat").read_text())
    except OSError:
        return None


__all__ = [
    "MemoryCgroup",
    "decode_cgroup",
    "cgroup_of",
    "is_exiting",
    "memory_cgroup",
    "mount_table",
    "oom_kill_count",
    "proc_cgroup",
    "system_oom_kills",
    "v1_memory_mount",
    "v1_memory_path",
]
