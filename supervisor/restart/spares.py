"""What a prespawned spare costs, and whether it fits (``policy.spare_stage``).

A ``loaded`` spare holds a second copy of everything its runner holds: with
``memory_limit`` (RSS) and ``gpu_memory_limit`` (per GPU) set, the runner and its
spare may together need twice each. A configuration that cannot fit that on this
machine is refused up front, rather than found out at the first restart (or by the
OOM killer). Where the totals or the limits are unknown, nothing is refused.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psutil

from supervisor.config import RunnerSpec, SupervisorConfig
from supervisor.restart.policy import RestartPolicy, SpareStage

_GIB = float(2**30)


def _gib(n: int) -> str:
    return f"{n / _GIB:.1f} GiB"


def spare_fit_error(
    stage: SpareStage,
    *,
    world_size: int = 1,
    memory_limit: int | None,
    gpu_memory_limit: int | None,
    host_total: int | None,
    gpu_total: int | None,
) -> str | None:
    """Why a runner and its ``stage`` spare cannot both fit, or None.

    Pure. Only a ``loaded`` spare is sized like its runner; an ``imported`` or
    ``prepared`` one holds no weights. ``world_size`` ranks share the host's memory
    (each its own GPU); ``gpu_total``: the smallest GPU's memory."""
    if stage != "loaded":
        return None
    if memory_limit is not None and host_total is not None:
        need = 2 * world_size * memory_limit
        if need > host_total:
            return (
                f"a loaded spare needs room for two copies of the runner: 2 x "
                f"{world_size} rank(s) x memory_limit {_gib(memory_limit)} = {_gib(need)} "
                f"is more than this machine's {_gib(host_total)}"
            )
    if gpu_memory_limit is not None and gpu_total is not None:
        need = 2 * gpu_memory_limit
        if need > gpu_total:
            return (
                f"a loaded spare needs room for two copies of the weights on the GPU: 2 x "
                f"gpu_memory_limit {_gib(gpu_memory_limit)} = {_gib(need)} is more than "
                f"the GPU's {_gib(gpu_total)}"
            )
    return None


def gpu_total_memory() -> int | None:
    """The smallest GPU's memory per NVML; None without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    m: Any = pynvml
    try:
        m.nvmlInit()
    except Exception:  # noqa: BLE001 - no library, no driver: unknown
        return None
    try:
        count = int(m.nvmlDeviceGetCount())
        totals = [
            int(m.nvmlDeviceGetMemoryInfo(m.nvmlDeviceGetHandleByIndex(i)).total)
            for i in range(count)
        ]
        return min(totals) if totals else None
    except Exception:  # noqa: BLE001 - unknown: nothing is refused for it
        return None
    finally:
        with contextlib.suppress(Exception):
            m.nvmlShutdown()


def check_spare_fits(policy: RestartPolicy, config: SupervisorConfig, spec: RunnerSpec) -> None:
    """Raise `ValueError` (one line) if ``policy``'s spare cannot fit on this machine."""
    if not policy.prespawn or policy.spare_stage != "loaded":
        return
    if config.memory_limit is None and config.gpu_memory_limit is None:
        return
    problem = spare_fit_error(
        policy.spare_stage,
        world_size=spec.world_size,
        memory_limit=config.memory_limit,
        gpu_memory_limit=config.gpu_memory_limit,
        host_total=int(psutil.virtual_memory().total),
        gpu_total=None if config.gpu_memory_limit is None else gpu_total_memory(),
    )
    if problem is not None:
        raise ValueError(f"RestartPolicy.spare_stage='loaded': {problem}")


__all__ = ["check_spare_fits", "gpu_total_memory", "spare_fit_error"]
