"""Was a SIGKILL the kernel's OOM killer? The counters before, the counters after.

`OomWitness` notes what can only be read while the runner lives (its memory
cgroup and that cgroup's ``oom_kill`` count) and the system's count at spawn; after
a SIGKILL death, `OomWitness.after_sigkill` reads them again and, only where the
system counted a kill (else it has no line to find), the kernel log, in a worker
thread; it returns `OomEvidence`. The judgement is `OomEvidence.oom_killed`: the kernel log
naming the pid, or the runner's own cgroup counting a kill. The system-wide count
alone never names a victim (another process may have been the one), so it is shown
but decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from supervisor.core.evidence import kmsg, memcg
from supervisor.core.procfs import ProcFile

#: Kernel log lines are kept from this long before the witness was made (clock skew).
_SLACK_S = 1.0


@dataclass(frozen=True, slots=True)
class OomEvidence:
    """What the kernel says about a SIGKILL death. None: could not be read here."""

    cgroup: Path | None = None
    cgroup_kills: int | None = None  # increase of the cgroup's oom_kill over the run
    system_kills: int | None = None  # increase of /proc/vmstat oom_kill over the run
    kernel_lines: tuple[str, ...] = ()
    #: None: not read (no kill counted: nothing to find there)
    kmsg_readable: bool | None = None

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
        log = "; /dev/kmsg not readable" if self.kmsg_readable is False else ""
        return f"{cgroup}, {system}{log}"


class OomWitness:
    """The kernel's OOM counters over one runner's life."""

    def __init__(self, proc: str = memcg.PROC, kmsg_path: str = kmsg.KMSG) -> None:
        self._proc = proc
        self._log = kmsg.kernel_log(kmsg_path)  # the host's one reader, from here on
        self.since = time.monotonic()
        self._system_base = memcg.system_oom_kills(proc)
        self._mounts: str | None = None
        self._seen: str | None = None  # the /proc/PID/cgroup text last taken
        self._file: ProcFile | None = None  # that file, kept open
        self._cgroup: memcg.MemoryCgroup | None = None
        self._cgroup_base: int | None = None

    @property
    def cgroup(self) -> memcg.MemoryCgroup | None:
        """The runner's memory cgroup as last noted."""
        return self._cgroup

    def note(self, pid: int) -> None:
        """Read live ``pid``'s memory cgroup; a new one's counter becomes the baseline.

        Cheap (one small /proc read while the cgroup stays the same): called at each
        poll so that a runner moved into another cgroup is followed; `close` lets
        go of the file kept open for it."""
        file = self._file
        if file is None or file.pid != pid:
            if file is not None:
                file.close()
            file = self._file = ProcFile(pid, "cgroup", proc=self._proc)
        text = memcg.decode_cgroup(file.read())
        if text is None or text == self._seen:
            return  # gone, or where it was: the usual case, one small read
        if self._mounts is None:  # long, and cgroup mounts do not move under a host
            self._mounts = memcg.mount_table(self._proc)
        cgroup = memcg.memory_cgroup(text, self._mounts)
        # Checked after the read: a process not yet exiting then was in ``cgroup``.
        if cgroup is None or memcg.is_exiting(pid, self._proc):
            return
        self._seen = text
        if cgroup != self._cgroup:
            self._cgroup, self._cgroup_base = cgroup, cgroup.oom_kills()

    def close(self) -> None:
        """Close the cgroup file `note` keeps open (noting again reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def collect(self) -> OomEvidence:
        """The counters' increase since the runner was seen alive (two small reads)."""
        cgroup_kills = None
        if self._cgroup is not None and self._cgroup_base is not None:
            now = self._cgroup.oom_kills()
            cgroup_kills = None if now is None else max(0, now - self._cgroup_base)
        system_kills = None
        system_now = memcg.system_oom_kills(self._proc)
        if system_now is not None and self._system_base is not None:
            system_kills = max(0, system_now - self._system_base)
        return OomEvidence(
            cgroup=self._cgroup.path if self._cgroup is not None else None,
            cgroup_kills=cgroup_kills,
            system_kills=system_kills,
        )

    def read_kernel_log(self, evidence: OomEvidence, pids: Collection[int]) -> OomEvidence:
        """``evidence`` with the kernel's OOM lines naming ``pids``. Blocking reads of
        what the kernel logged since the last read (bounded): call it from a worker
        thread."""
        lines = self._log.oom_lines(set(pids), self.since - _SLACK_S)
        if lines is None:
            return replace(evidence, kmsg_readable=False)
        return replace(evidence, kernel_lines=tuple(lines), kmsg_readable=True)

    async def after_sigkill(self, pids: Collection[int]) -> OomEvidence:
        """The kernel's word on a SIGKILL death of ``pids``. Without an OOM kill
        counted anywhere on the system, the kernel log has nothing to say: it is
        read (off the loop) only after one."""
        evidence = self.collect()
        if evidence.system_kills == 0:
            return evidence
        return await anyio.to_thread.run_sync(self.read_kernel_log, evidence, pids)


__all__ = ["OomEvidence", "OomWitness"]
