"""NVIDIA Xid numbers: what each means and what it does to the runners on that GPU.

The driver reports an Xid when something went wrong on a GPU; NVML delivers them as
"Xid critical error" events naming the device, not the process. Each Xid here has
one `XidAction`:

- ``fail``: the GPU (or every context on it) is broken or its results cannot be
  trusted: fail every runner with a process on that GPU. A runner that stays up
  after an uncontained ECC error or a GPU that fell off the bus answers with garbage
  or hangs in its next CUDA call.
- ``fail_context``: one CUDA context faulted (an illegal address, a page fault);
  NVML does not say whose, so every runner with a process on that GPU is failed.
  With one runner per GPU (the usual deployment) that is exactly the one at fault;
  the faulting runner usually also dies by itself or prints a fatal line.
- ``record``: informational or a consequence of an earlier error (Xid 45 follows
  every CUDA process killed mid-kernel, our own kills included): counted in health,
  never acted on.

An Xid not in the table is recorded with a pointer to NVIDIA's catalog: acting on a
number we do not know would turn a driver's new informational message into restarts.
Source: NVIDIA's "Xid Errors" catalog (docs.nvidia.com/deploy/xid-errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

XidAction: TypeAlias = Literal["fail", "fail_context", "record"]


@dataclass(frozen=True, slots=True)
class XidInfo:
    number: int
    meaning: str
    action: XidAction

    @property
    def critical(self) -> bool:
        """It fails the runners on its GPU."""
        return self.action != "record"


def _t(*rows: tuple[int, str, XidAction]) -> dict[int, XidInfo]:
    return {n: XidInfo(n, meaning, action) for n, meaning, action in rows}


XIDS: dict[int, XidInfo] = _t(
    (8, "GPU stopped processing (timeout)", "fail_context"),
    (13, "graphics engine exception (illegal address, out-of-range access)", "fail_context"),
    (31, "GPU memory page fault (MMU fault)", "fail_context"),
    (32, "invalid or corrupted push buffer stream", "fail_context"),
    (38, "driver firmware error", "fail"),
    (43, "GPU stopped processing (a context was reset)", "fail_context"),
    (44, "graphics engine fault during context switch", "fail"),
    (45, "preemptive cleanup after an earlier error or a killed process", "record"),
    (48, "double-bit ECC error (uncorrectable memory error)", "fail"),
    (56, "display engine error", "record"),
    (57, "error programming video memory interface", "fail"),
    (61, "internal micro-controller breakpoint or warning (PMU)", "fail"),
    (62, "internal micro-controller halt (PMU); a GPU reset is required", "fail"),
    (63, "ECC page retirement or row remapping recorded", "record"),
    (64, "ECC page retirement or row remapping failed", "fail"),
    (68, "video decoder (NVDEC) exception", "fail_context"),
    (69, "graphics engine class error", "fail_context"),
    (74, "NVLink error", "fail"),
    (79, "GPU has fallen off the bus", "fail"),
    (92, "high single-bit ECC error rate", "record"),
    (94, "contained ECC error (the context that touched the memory must restart)", "fail_context"),
    (95, "uncontained ECC error (every context on the GPU is affected; reset required)", "fail"),
    (109, "context switch timeout", "fail_context"),
    (119, "GSP RPC timeout (GPU firmware not answering)", "fail"),
    (120, "GSP error (GPU firmware)", "fail"),
    (121, "C2C link corrected error", "record"),
    (140, "unrecovered ECC error", "fail"),
    (154, "GPU recovery action changed (a reset or reboot is required)", "fail"),
)


def describe_xid(number: int) -> XidInfo:
    """The table's row for ``number``, or a ``record`` row for an Xid it does not know."""
    info = XIDS.get(number)
    if info is None:
        return XidInfo(
            number, f"Xid {number}: not in our table (see NVIDIA's Xid catalog)", "record"
        )
    return info


__all__ = ["XIDS", "XidAction", "XidInfo", "describe_xid"]
