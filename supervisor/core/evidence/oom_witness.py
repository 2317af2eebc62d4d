"""Was a SIGKILL the kernel's OOM killer? The counters before, the counters after.

`OomWitness` notes what can only be read while the runner lives (its memory
cgroup and that cgroup's ``oom_kill`` count) and the system's count at spawn; after
a SIGKILL death, `OomWitness.collect` reads them again and the kernel log, and
returns `OomEvidence`. The judgement is `OomEvidence.oom_killed`: the kernel log
naming the pid, or the runner's own cgroup counting a kill. The system-wide count
alone never names a victim (another process may have been the one), so it is shown
but decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.evidence import kmsg, memcg

#: Kernel log lines are kept from this long before the witness was made (clock skew).
_SLACK_S = 1.0


@dataclass(frozen=True, slots=True)
class OomEvidence:
    """What the kernel says about a SIGKILL death. None: could not be read here."""

    cgroup: Path | None = None
    cgroup_kills: int | None = None  # increase of the cgroup's oom_kill over the run
    system_kills: int | None = None  # increase of /proc/vmstat oom_kill over the run
    kernel_lines: tuple[str, ...] = ()
    kmsg_readable: bool = False

    @property
    def oom_killed(self) -> bool:
        """The kernel named this process, or its own cgroup counted a kill."""
        return bool(self.kernel_lines) or bool(self.cgroup_kills)

    @property
    def any_counter(self) -> bool:
        """Whether anything at all could be read (not Linux, no /proc: nothing)."""
        return self.cgroup_kills is not None or self.system_kills is not None

    def counters(self) -> str:
        """The counters as one phrase, for the diagnostics line."""
        cgroup = (
            f"memory cgroup {self.cgroup} oom_kill +{self.cgroup_kills}"
            if self.cgroup is not None and self.cgroup_kills is not None
            else "memory cgroup not readable"
        )
        system = (
            f"system oom_kill +{self.system_kills}"
            if self.system_kills is not None
            else "/proc/vmstat not readable"
        )
        log = "" if self.kmsg_readable else "; /dev/kmsg not readable"
        return f"{cgroup}, {system}{log}"


class OomWitness:
    """The kernel's OOM counters over one runner's life."""

    def __init__(self, proc: str = memcg.PROC, kmsg_path: str = kmsg.KMSG) -> None:
        self._proc = proc
        self._kmsg = kmsg_path
        self.since = time.monotonic()
        self._system_base = memcg.system_oom_kills(proc)
        self._cgroup: memcg.MemoryCgroup | None = None
        self._cgroup_base: int | None = None

    @property
    def cgroup(self) -> memcg.MemoryCgroup | None:
        """The runner's memory cgroup as last noted."""
        return self._cgroup

    def note(self, pid: int) -> None:
        """Read live ``pid``'s memory cgroup; a new one's counter becomes the baseline.

        Cheap (one small /proc read while the cgroup stays the same): called at each
        poll so that a runner moved into another cgroup is followed."""
        cgroup = memcg.cgroup_of(pid, self._proc)
        if cgroup is None or cgroup == self._cgroup:
            return
        # Checked after the read: a process not yet exiting then was in ``cgroup``.
        if not memcg.is_exiting(pid, self._proc):
            self._cgroup, self._cgroup_base = cgroup, cgroup.oom_kills()

    def collect(self, pids: Collection[int]) -> OomEvidence:
        """After a SIGKILL death: the counters' increase and the kernel's lines naming
        ``pids``. Blocking file reads (bounded): call it from a worker thread."""
        cgroup_kills = None
        if self._cgroup is not None and self._cgroup_base is not None:
            now = self._cgroup.oom_kills()
            cgroup_kills = None if now is None else max(0, now - self._cgroup_base)
        system_kills = None
        system_now = memcg.system_oom_kills(self._proc)
        if system_now is not None and self._system_base is not None:
            system_kills = max(0, system_now - self._system_base)
        records = kmsg.read_records(self._kmsg)
        lines = kmsg.oom_lines(records, set(pids), self.since - _SLACK_S)
        return OomEvidence(
            cgroup=self._cgroup.path if self._cgroup is not None else None,
            cgroup_kills=cgroup_kills,
            system_kills=system_kills,
            kernel_lines=tuple(lines),
            kmsg_readable=bool(records),
        )


__all__ = ["OomEvidence", "OomWitness"]
