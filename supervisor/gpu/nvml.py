"""The few NVML calls the GPU watcher makes, through nvidia-ml-py (``pynvml``).

Optional: the ``gpu`` extra installs nvidia-ml-py, and `Nvml.open` imports it only
when asked. Without the library, without the driver's libnvidia-ml or without a GPU,
`open` logs one line and returns None: the watcher is simply not there.

Every call here blocks (NVML takes a driver lock; ``nvmlEventSetWait`` waits for its
timeout), so the watcher calls them from a worker thread. NVML is thread-safe.
Tests pass a fake module object with the same names (``module=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from supervisor.gpu.decisions import DeviceSample, GpuEvent, GpuProcess

#: nvmlEventType* bits (nvml.h); read from the module when it has them.
_XID_CRITICAL = 0x8
_DOUBLE_BIT_ECC = 0x2


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    uuid: str
    handle: Any


def _text(value: Any) -> str:
    """Older nvidia-ml-py versions return bytes for strings."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Nvml:
    """An initialised NVML: its devices, one reading of each, and its event set."""

    def __init__(self, module: Any) -> None:
        self._m = module
        self._event_set: Any = None
        self._closed = False
        count = int(module.nvmlDeviceGetCount())
        self.devices: tuple[Device, ...] = tuple(
            self._device(i, module.nvmlDeviceGetHandleByIndex(i)) for i in range(count)
        )
        self._by_uuid = {dev.uuid: dev for dev in self.devices}

    def _device(self, index: int, handle: Any) -> Device:
        return Device(index, _text(self._m.nvmlDeviceGetUUID(handle)), handle)

    @classmethod
    def open(cls, module: Any = None) -> Nvml | None:
        """NVML initialised, or None (one log line saying why) when there is no
        library, no driver or no GPU. ``module``: a stand-in for ``pynvml`` (tests)."""
        if module is None:
            try:
                import pynvml
            except ImportError:
                logger.info("GPU watcher inactive: nvidia-ml-py is not installed (extra 'gpu')")
                return None
            module = pynvml
        try:
            module.nvmlInit()
        except module.NVMLError as exc:  # no libnvidia-ml, no driver
            logger.info("GPU watcher inactive: NVML did not initialise ({})", exc)
            return None
        try:
            nvml = cls(module)
        except module.NVMLError as exc:
            logger.info("GPU watcher inactive: NVML could not list the GPUs ({})", exc)
            module.nvmlShutdown()
            return None
        if not nvml.devices:
            logger.info("GPU watcher inactive: NVML sees no GPU")
            nvml.close()
            return None
        return nvml

    def _code(self, exc: BaseException) -> int | None:
        value = getattr(exc, "value", None)
        return value if isinstance(value, int) else None

    def _is(self, exc: BaseException, name: str) -> bool:
        return self._code(exc) == getattr(self._m, name, object())

    # ------------------------------------------------------------------ sampling
    def sample(self) -> list[DeviceSample]:
        """One reading of every GPU: its processes and their memory, ECC and retirement."""
        return [self._sample(dev) for dev in self.devices]

    def _sample(self, dev: Device) -> DeviceSample:
        m = self._m
        try:
            procs = tuple(
                GpuProcess(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                for p in m.nvmlDeviceGetComputeRunningProcesses(dev.handle)
            )
        except m.NVMLError as exc:
            if self._is(exc, "NVML_ERROR_GPU_IS_LOST"):
                return DeviceSample(dev.index, dev.uuid, lost=True)
            procs = ()
        unc = self._optional(
            m.nvmlDeviceGetTotalEccErrors,
            dev.handle,
            getattr(m, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(m, "NVML_VOLATILE_ECC", 0),
        )
        corr = self._optional(
            m.nvmlDeviceGetTotalEccErrors,
            dev.handle,
            getattr(m, "NVML_MEMORY_ERROR_TYPE_CORRECTED", 0),
            getattr(m, "NVML_VOLATILE_ECC", 0),
        )
        retired, pending = self._retirement(dev)
        return DeviceSample(
            dev.index,
            dev.uuid,
            procs,
            ecc_uncorrected=None if unc is None else int(unc),
            ecc_corrected=None if corr is None else int(corr),
            retired_pages=retired,
            retirement_pending=pending,
        )

    def _optional(self, call: Any, *args: Any) -> Any:
        """``call(*args)``, or None where the GPU does not support it (ECC off, ...)
        or this nvidia-ml-py lacks the call (``call`` is None)."""
        if call is None:
            return None
        try:
            return call(*args)
        except self._m.NVMLError:
            return None

    def _retirement(self, dev: Device) -> tuple[int | None, bool | None]:
        """Rows remapped (A100 and later) or else pages retired, and whether one waits
        for a GPU reset."""
        m = self._m
        rows = self._optional(getattr(m, "nvmlDeviceGetRemappedRows", None), dev.handle)
        if rows is not None:
            corrected, uncorrected, pending, failed = rows
            return int(corrected) + int(uncorrected), bool(pending) or bool(failed)
        pages = 0
        for cause in (
            getattr(m, "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", 0),
            getattr(m, "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", 1),
        ):
            found = self._optional(getattr(m, "nvmlDeviceGetRetiredPages", None), dev.handle, cause)
            if found is None:
                return None, None
            pages += len(found)
        status = self._optional(
            getattr(m, "nvmlDeviceGetRetiredPagesPendingStatus", None), dev.handle
        )
        return pages, None if status is None else bool(status)

    # -------------------------------------------------------------------- events
    def watch_events(self) -> list[int]:
        """Register for Xid critical errors and double-bit ECC errors on every GPU that
        supports them; returns the indexes registered (empty: no events, sample only)."""
        m = self._m
        wanted = getattr(m, "nvmlEventTypeXidCriticalError", _XID_CRITICAL) | getattr(
            m, "nvmlEventTypeDoubleBitEccError", _DOUBLE_BIT_ECC
        )
        registered: list[int] = []
        try:
            self._event_set = m.nvmlEventSetCreate()
        except m.NVMLError as exc:
            logger.warning("GPU watcher: no NVML event set ({}); sampling only", exc)
            return registered
        for dev in self.devices:
            try:
                supported = int(m.nvmlDeviceGetSupportedEventTypes(dev.handle))
                if supported & wanted:
                    m.nvmlDeviceRegisterEvents(dev.handle, supported & wanted, self._event_set)
                    registered.append(dev.index)
            except m.NVMLError as exc:
                logger.warning("GPU watcher: GPU {} gives no Xid events ({})", dev.index, exc)
        return registered

    def wait_event(self, timeout_ms: int) -> GpuEvent | None:
        """The next event, or None after ``timeout_ms`` without one (blocks: a thread).
        A lost GPU is an event too: the wait fails for it."""
        m = self._m
        if self._event_set is None or self._closed:
            return None
        wait = getattr(m, "nvmlEventSetWait_v2", None) or m.nvmlEventSetWait
        try:
            data = wait(self._event_set, timeout_ms)
        except m.NVMLError as exc:
            if self._is(exc, "NVML_ERROR_TIMEOUT"):
                return None
            if self._is(exc, "NVML_ERROR_GPU_IS_LOST"):
                # The wait does not say which GPU; the next sample marks it lost.
                return None
            raise
        try:
            dev = self._by_uuid.get(_text(m.nvmlDeviceGetUUID(data.device)))
        except m.NVMLError:
            dev = None
        index, uuid = (dev.index, dev.uuid) if dev is not None else (-1, "unknown")
        if int(data.eventType) & getattr(m, "nvmlEventTypeXidCriticalError", _XID_CRITICAL):
            return GpuEvent(index, uuid, "xid", int(data.eventData))
        return GpuEvent(index, uuid, "double_bit_ecc")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        m = self._m
        try:
            if self._event_set is not None:
                m.nvmlEventSetFree(self._event_set)
            m.nvmlShutdown()
        except m.NVMLError as exc:
            logger.debug("GPU watcher: NVML shutdown: {}", exc)


__all__ = ["Device", "Nvml"]
