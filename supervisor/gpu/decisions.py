"""What NVML's readings mean for each runner: pure code over plain data, no NVML.

The watcher (`supervisor.gpu.watcher`) turns NVML calls into `DeviceSample` and
`GpuEvent` values; everything it then decides is decided here, so it is tested
without a GPU:

- `place`: which runner is on which GPU and holds how much GPU memory, by matching
  the pids NVML reports per device against each runner's process tree (a runner
  whose CUDA context lives in a child process is still found);
- `on_event`: which runners an Xid, a double-bit ECC error or a lost GPU fails;
- `over_memory_limit`: which runners hold more GPU memory than allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from supervisor.gpu.xid import describe_xid
from supervisor.protocol import FailureReason

GpuEventKind: TypeAlias = Literal["xid", "double_bit_ecc", "gpu_lost"]


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """One process with a CUDA context on a device, as NVML lists it."""

    pid: int
    #: bytes of GPU memory it holds; None where NVML cannot tell (MIG, some vGPUs)
    memory: int | None


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One reading of one GPU."""

    index: int
    uuid: str
    processes: tuple[GpuProcess, ...] = ()
    #: volatile (since the driver loaded) ECC error counts; None without ECC
    ecc_uncorrected: int | None = None
    ecc_corrected: int | None = None
    #: pages retired (older GPUs) or rows remapped (A100 and later) for memory errors
    retired_pages: int | None = None
    #: a retirement or remapping waits for a GPU reset to take effect
    retirement_pending: bool | None = None
    #: NVML answered "GPU is lost" for this device
    lost: bool = False

    @property
    def name(self) -> str:
        return f"GPU {self.index} ({self.uuid})"


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """Something NVML reported for one device."""

    index: int
    uuid: str
    kind: GpuEventKind
    #: the Xid number, for ``kind == "xid"``
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class RunnerGpu:
    """One runner's share of the GPUs: what health and metrics show."""

    #: bytes of GPU memory held by the runner's processes, on every GPU
    memory: int = 0
    #: bytes by pid (a pid on two GPUs counts both)
    by_pid: Mapping[int, int] = field(default_factory=dict)
    #: uuids of the GPUs its processes are on, in device order
    gpus: tuple[str, ...] = ()
    ecc_uncorrected: int | None = None
    ecc_corrected: int | None = None
    retired_pages: int | None = None
    retirement_pending: bool | None = None


@dataclass(frozen=True, slots=True)
class FailRunner:
    """Fail ``runner_id`` through its public ``fail`` verb, detected by NVML."""

    runner_id: str
    reason: FailureReason
    message: str
    diagnostics: tuple[str, ...] = ()


def _add(a: int | None, b: int | None) -> int | None:
    return a if b is None else b if a is None else a + b


def _with_device(cur: RunnerGpu, dev: DeviceSample, proc: GpuProcess) -> RunnerGpu:
    """``cur`` plus one process of the runner on ``dev``; a device's ECC and
    retirement counts are added once per runner, at its first process there."""
    used = proc.memory or 0
    by_pid = {**cur.by_pid, proc.pid: cur.by_pid.get(proc.pid, 0) + used}
    if dev.uuid in cur.gpus:
        return replace(cur, memory=cur.memory + used, by_pid=by_pid)
    pending = cur.retirement_pending
    if dev.retirement_pending is not None:
        pending = bool(pending) or dev.retirement_pending
    return RunnerGpu(
        memory=cur.memory + used,
        by_pid=by_pid,
        gpus=(*cur.gpus, dev.uuid),
        ecc_uncorrected=_add(cur.ecc_uncorrected, dev.ecc_uncorrected),
        ecc_corrected=_add(cur.ecc_corrected, dev.ecc_corrected),
        retired_pages=_add(cur.retired_pages, dev.retired_pages),
        retirement_pending=pending,
    )


def place(
    devices: Sequence[DeviceSample], runner_pids: Mapping[str, Iterable[int]]
) -> dict[str, RunnerGpu]:
    """Each runner's GPU memory and GPU health, for every runner with a process on a GPU.

    ``runner_pids``: runner id -> every pid of its tree (ranks and their children).
    A pid in two runners' trees (pid reuse between two reads) counts for the first.
    """
    owner: dict[int, str] = {}
    for runner_id, pids in runner_pids.items():
        for pid in pids:
            owner.setdefault(pid, runner_id)
    out: dict[str, RunnerGpu] = {}
    for dev in devices:
        for proc in dev.processes:
            rid = owner.get(proc.pid)
            if rid is not None:
                out[rid] = _with_device(out.get(rid, RunnerGpu()), dev, proc)
    return out


def on_event(event: GpuEvent, placement: Mapping[str, RunnerGpu]) -> list[FailRunner]:
    """The runners ``event`` fails: every runner with a process on its GPU, if the
    event is critical (`supervisor.gpu.xid`); none otherwise."""
    where = f"GPU {event.index} ({event.uuid})"
    if event.kind == "xid":
        info = describe_xid(event.xid if event.xid is not None else -1)
        if not info.critical:
            return []
        message = f"{where}: Xid {info.number}: {info.meaning}"
        details = [f"xid={info.number}", f"xid_meaning={info.meaning}"]
        if info.action == "fail_context":
            details.append(
                "scope=context: NVML does not name the faulting process; every runner "
                "on this GPU is failed"
            )
    elif event.kind == "double_bit_ecc":
        message = f"{where}: double-bit ECC error (uncorrectable GPU memory error)"
        details = ["event=double_bit_ecc"]
    else:
        message = f"{where}: NVML reports the GPU is lost"
        details = ["event=gpu_lost"]
    details += [f"gpu_index={event.index}", f"gpu_uuid={event.uuid}"]
    out = []
    for runner_id, gpu in placement.items():
        if event.uuid not in gpu.gpus:
            continue
        pids = ",".join(str(pid) for pid in sorted(gpu.by_pid))
        out.append(
            FailRunner(runner_id, "gpu_fault", message, (*details, f"runner_gpu_pids={pids}"))
        )
    return out


def over_memory_limit(placement: Mapping[str, RunnerGpu], limit: int | None) -> list[FailRunner]:
    """The runners holding more than ``limit`` bytes of GPU memory (None: no limit)."""
    if limit is None:
        return []
    out = []
    for runner_id, gpu in placement.items():
        if gpu.memory <= limit:
            continue
        by_pid = ", ".join(
            f"{pid}: {used / 2**20:.0f} MiB" for pid, used in sorted(gpu.by_pid.items())
        )
        out.append(
            FailRunner(
                runner_id,
                "memory_limit",
                f"GPU memory {gpu.memory / 2**20:.0f} MiB exceeds gpu_memory_limit "
                f"{limit / 2**20:.0f} MiB",
                (f"gpu_memory_by_pid={by_pid}", f"gpus={','.join(gpu.gpus)}"),
            )
        )
    return out


__all__ = [
    "DeviceSample",
    "FailRunner",
    "GpuEvent",
    "GpuEventKind",
    "GpuProcess",
    "RunnerGpu",
    "on_event",
    "over_memory_limit",
    "place",
]
