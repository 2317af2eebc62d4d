"""The environment a rank process starts with: torchrun's contract.

An engine written for torchrun reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``init_process_group``'s
``env://``). They must be in the process from its start, in ``/proc/PID/environ``
too, not set by Python later: some libraries read the C environment (NCCL reads
``NCCL_*`` with getenv), and tools that inspect a process read its initial one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping

from supervisor.core.rendezvous import MASTER_ADDR

_lock = threading.Lock()


def rank_env(rank: int, world_size: int, master_port: int) -> dict[str, str]:
    """torchrun's variables for ``rank`` of a one-host group of ``world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "MASTER_ADDR": MASTER_ADDR,
        "MASTER_PORT": str(master_port),
    }


@contextlib.contextmanager
def exec_environment(env: Mapping[str, str]) -> Iterator[None]:
    """While inside, a process exec'd from here starts with ``env`` on top of ours.

    multiprocessing's spawn exec's the child with this process's C environment and
    offers no parameter for another, so the variables are set around the start and
    put back after it. The lock keeps two starts (supervisors on other threads)
    from seeing each other's ranks; the start itself is synchronous.
    """
    if not env:
        yield
        return
    with _lock:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


__all__ = ["exec_environment", "rank_env"]
