"""Chaos triggers: prompts that make the runner misbehave, for testing supervisors.

Off unless enabled explicitly (``SupervisorConfig(chaos=True)``, the CLI's
``--chaos``, or ``EXO_RUNNER_CHAOS=1`` in the runner's environment). Disabled,
trigger phrases are ordinary text. Every trigger fires after the task streamed
its first chunk, so the failure always lands mid-inference.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator, Mapping

from supervisor.protocol import BaseTask, Generate

logger = logging.getLogger("runners.chaos")

ENV_ENABLE = "EXO_RUNNER_CHAOS"
ENV_DIE_AFTER = "EXO_RUNNER_MUST_DIE"
ENV_OOM_CAP = "EXO_RUNNER_OOM_CAP_MB"

DIE = "EXO RUNNER MUST DIE"
FAIL = "EXO RUNNER MUST FAIL"
SEGFAULT = "EXO RUNNER MUST SEGFAULT"
FREEZE = "EXO RUNNER MUST FREEZE"
HANG = "EXO RUNNER MUST HANG"
OOM = "EXO RUNNER MUST OOM"


class ChaosError(RuntimeError):
    """Raised by the FAIL trigger inside the engine's token stream."""


def _die() -> None:
    os._exit(1)  # what an OOM kill or abort looks like from outside: no goodbye


def _fail() -> None:
    raise ChaosError(f"chaos: {FAIL}")


def _segfault() -> None:
    ctypes.string_at(0)  # a real SIGSEGV: read address 0


def _freeze() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)  # the whole process, every thread


def _hang() -> None:
    # The main loop blocks forever; the heartbeat thread keeps beating.
    while True:
        time.sleep(3600)


def _oom() -> None:
    cap = int(os.environ.get(ENV_OOM_CAP, "1024")) * 2**20
    # Bound the address space so this never eats the machine: MemoryError at the cap.
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * resource.getpagesize()
    limit = current + cap
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    hoard: list[bytearray] = []
    while True:
        hoard.append(bytearray(64 * 2**20))  # zero-filled: the pages are touched
        time.sleep(0.05)


TRIGGERS: dict[str, Callable[[], None]] = {
    DIE: _die,
    FAIL: _fail,
    SEGFAULT: _segfault,
    FREEZE: _freeze,
    HANG: _hang,
    OOM: _oom,
}


def chaos_enabled(flag: bool, env: Mapping[str, str]) -> bool:
    return flag or env.get(ENV_ENABLE, "").strip().lower() in ("1", "true", "yes", "on")


class Chaos:
    """Wraps a task's token stream with the triggers it asks for."""

    def __init__(self, enabled: bool, env: Mapping[str, str]) -> None:
        self.enabled = enabled
        self.die_after: int | None = None
        self.tokens = 0
        raw = env.get(ENV_DIE_AFTER)
        if enabled and raw:
            try:
                self.die_after = max(0, int(raw))
            except ValueError:
                logger.warning("ignoring %s=%r: not an integer", ENV_DIE_AFTER, raw)
        if enabled:
            logger.warning("chaos triggers are ENABLED in this runner")

    def trigger_for(self, task: BaseTask) -> Callable[[], None] | None:
        if not self.enabled or not isinstance(task, Generate):
            return None
        for phrase, action in TRIGGERS.items():
            if phrase in task.prompt:
                logger.warning("chaos trigger %r in task %s", phrase, task.task_id)
                return action
        return None

    def wrap(self, task: BaseTask, tokens: Iterator[str]) -> Iterator[str]:
        action = self.trigger_for(task)
        if action is None and self.die_after is None:
            return tokens
        return self._wrapped(tokens, action)

    def _wrapped(self, tokens: Iterator[str], action: Callable[[], None] | None) -> Iterator[str]:
        streamed = 0
        for token in tokens:
            if self.die_after is not None and self.tokens >= self.die_after:
                logger.warning("chaos: %s=%s reached", ENV_DIE_AFTER, self.die_after)
                _die()
            if action is not None and streamed >= 1:
                action()
            yield token
            streamed += 1
            self.tokens += 1
        if action is not None and streamed <= 1:
            action()  # a one-token task still misbehaves, after its chunk
