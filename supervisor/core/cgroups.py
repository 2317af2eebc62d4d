"""cgroup v2: one cgroup per runner, where the host owns a delegated subtree.

A cgroup holds every process forked inside it, ``setsid`` or not, and
``cgroup.kill`` (Linux >= 5.14) SIGKILLs all of them at once. It is only used where
the host's own cgroup is writable and is not the hierarchy's root: a systemd
service with ``Delegate=yes``, or a container with its own cgroup namespace and a
writable cgroup mount. Anywhere else (cgroup v1, a read-only mount, somebody
else's cgroup) creating cgroups would be managing the machine, not our runners.

The parsing and the checks take the /proc root as a parameter, so a fake tree in a
temporary directory exercises them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

#: The leaf the host moves itself into to enable the memory controller for its runners.
HOST_LEAF = "supervisor"
_unsafe = re.compile(r"[^A-Za-z0-9_.-]")
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Delegation:
    """Where runner cgroups go (``base``), or why there are none (``base`` is None)."""

    base: Path | None
    reason: str
    memory: bool = False


def unified_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path in ``/proc/<pid>/cgroup`` (its ``0::/path`` line)."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if hierarchy == "0" and sep and controllers == "" and path.startswith("/"):
            return path
    return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_mount(mountinfo: str) -> tuple[str, str] | None:
    """(mount point, root of the hierarchy it shows) of the first cgroup2 mount."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, fs = left.split(), right.split()
        if sep and len(fields) >= 5 and fs and fs[0] == "cgroup2":
            return _unescape(fields[4]), _unescape(fields[3])
    return None


def host_dir(path: str, mount: tuple[str, str]) -> Path | None:
    """The directory of cgroup ``path`` under ``mount``; None if the mount hides it."""
    point, root = mount
    root = root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    return Path(point) / path[len(root) :].lstrip("/")


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def find_delegation(proc: str = "/proc") -> Delegation:
    """Whether this process may create runner cgroups, and where."""
    try:
        own = _read(Path(proc, "self", "cgroup"))
        mountinfo = _read(Path(proc, "self", "mountinfo"))
    except OSError as exc:
        return Delegation(None, f"cannot read /proc: {exc.strerror}")
    path = unified_path(own)
    if path is None:
        return Delegation(None, "no cgroup v2 hierarchy (cgroup v1 only)")
    mount = cgroup2_mount(mountinfo)
    if mount is None:
        return Delegation(None, "cgroup v2 is not mounted")
    base = host_dir(path, mount)
    if base is None or not base.is_dir():
        return Delegation(None, f"own cgroup {path} is not visible under {mount[0]}")
    if not (base / "cgroup.kill").exists():
        return Delegation(
            None, f"{base} is a hierarchy root or the kernel lacks cgroup.kill (Linux < 5.14)"
        )
    if not all(os.access(p, os.W_OK) for p in (base, base / "cgroup.procs")):
        return Delegation(None, f"{base} is not writable (not delegated to us)")
    return Delegation(base, f"delegated cgroup {base}")


def enable_memory(delegation: Delegation, pid: int) -> Delegation:
    """Turn on the memory controller for runner cgroups, where that is ours to do.

    A cgroup with controllers enabled for its children may hold no process itself,
    so a host alone in its cgroup moves into a leaf first (what a ``Delegate=yes``
    service is expected to do). A host that shares its cgroup with others leaves it
    alone: runners then get cgroups for ``cgroup.kill`` only, and memory is read
    from /proc.
    """
    base = delegation.base
    if base is None:
        return delegation
    try:
        if "memory" not in _read(base / "cgroup.controllers").split():
            return delegation
        if "memory" in _read(base / "cgroup.subtree_control").split():
            return Delegation(base, delegation.reason, memory=True)
        try:
            _write(base / "cgroup.subtree_control", "+memory")
        except OSError:
            if _read(base / "cgroup.procs").split() != [str(pid)]:
                return delegation
            leaf = base / HOST_LEAF
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(pid))
            _write(base / "cgroup.subtree_control", "+memory")
    except OSError:
        return delegation
    return Delegation(base, f"{delegation.reason}, memory controller on", memory=True)


class RunnerCgroup:
    """The cgroup of one runner's tree: membership, kill, memory, removal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, delegation: Delegation, runner_id: str) -> RunnerCgroup:
        assert delegation.base is not None
        name = f"runner-{_unsafe.sub('_', runner_id)[:64]}-{os.getpid()}-{next(_counter)}"
        path = delegation.base / name
        path.mkdir()
        return cls(path)

    def add(self, pid: int) -> None:
        """Move ``pid`` in (a no-op if the process moved itself already)."""
        with contextlib.suppress(ProcessLookupError):  # it died: nothing of it to contain
            _write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(w) for w in _read(self.path / "cgroup.procs").split() if w.isdigit()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, atomically with respect to forks."""
        try:
            _write(self.path / "cgroup.kill", "1")
        except FileNotFoundError:
            return  # removed: nothing was left in it
        except OSError:
            for pid in self.pids():  # should not happen where cgroup.kill exists
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def memory(self) -> int | None:
        """Working set in bytes: ``memory.current`` less reclaimable inactive file cache.

        Reading weights from disk fills the page cache and charges it to the cgroup;
        counting it would fail a runner for having read its model. None without the
        memory controller.
        """
        try:
            current = int(_read(self.path / "memory.current"))
            stat = _read(self.path / "memory.stat")
        except (OSError, ValueError):
            return None
        inactive = 0
        for line in stat.splitlines():
            key, _, value = line.partition(" ")
            if key == "inactive_file" and value.strip().isdigit():
                inactive = int(value)
        return max(0, current - inactive)

    def remove(self) -> bool:
        """rmdir; False while a member is still dying (the caller retries later)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
