"""A stand-in for the ``pynvml`` module: the GPU watcher runs end to end without a GPU.

It has the names `supervisor.gpu.nvml.Nvml` calls, with pynvml's shapes (errors with
``.value``, process records with ``pid`` and ``usedGpuMemory``, event data with
``device``, ``eventType`` and ``eventData``). A test puts pids on devices, queues
events with `xid`, and reads back what was asked of it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from types import SimpleNamespace

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
nvmlEventTypeSingleBitEccError = 0x1
nvmlEventTypeDoubleBitEccError = 0x2
nvmlEventTypeXidCriticalError = 0x8


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    #: pid -> bytes of GPU memory
    processes: dict[int, int]
    ecc_uncorrected: int | None = 0
    ecc_corrected: int | None = 0
    remapped: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    lost: bool = False
    events: bool = True


class FakeNvml:
    """One fake NVML library; its attributes are the module-level names of pynvml."""

    NVMLError = NVMLError

    def __init__(self, gpus: int = 2, *, init_fails: bool = False) -> None:
        for name, value in globals().items():
            if name.startswith(("NVML_", "nvmlEventType")):
                setattr(self, name, value)
        self.gpus = [FakeGpu(f"GPU-fake-{i}", {}) for i in range(gpus)]
        self.init_fails = init_fails
        self.initialised = False
        self.shut_down = False
        self.registered: list[int] = []
        self._events: queue.Queue[SimpleNamespace] = queue.Queue()
        self.waits = 0
        self._lock = threading.Lock()

    # test side
    def xid(self, index: int, number: int) -> None:
        """Deliver an Xid critical-error event for GPU ``index``."""
        self._events.put(
            SimpleNamespace(device=index, eventType=nvmlEventTypeXidCriticalError, eventData=number)
        )

    def double_bit_ecc(self, index: int) -> None:
        self._events.put(
            SimpleNamespace(device=index, eventType=nvmlEventTypeDoubleBitEccError, eventData=0)
        )

    # pynvml side (handles are device indexes)
    def nvmlInit(self) -> None:
        if self.init_fails:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def _gpu(self, handle: int) -> FakeGpu:
        gpu = self.gpus[handle]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        with self._lock:
            procs = dict(self._gpu(handle).processes)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in procs.items()]

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter: int) -> int:
        gpu = self._gpu(handle)
        value = gpu.ecc_uncorrected if error_type == 1 else gpu.ecc_corrected
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetRemappedRows(self, handle: int) -> tuple[int, int, int, int]:
        gpu = self._gpu(handle)
        if gpu.remapped is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.remapped

    def nvmlDeviceGetSupportedEventTypes(self, handle: int) -> int:
        if not self.gpus[handle].events:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError | 0x1

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, event_set: str) -> None:
        self.registered.append(handle)

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        self.waits += 1
        try:
            return self._events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise NVMLError(NVML_ERROR_TIMEOUT) from None

    def nvmlEventSetFree(self, event_set: str) -> None:
        pass

    def put(self, index: int, pid: int, used: int) -> None:
        """Show ``pid`` on GPU ``index`` holding ``used`` bytes."""
        with self._lock:
            self.gpus[index].processes[pid] = used


__all__ = ["FakeGpu", "FakeNvml", "NVMLError"]
