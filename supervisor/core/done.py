"""The result of the supervisors' non-blocking commands."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


class Done:
    """Returned by ``cancel_task``/``shutdown``/``kill``, which act at once and never block.

    It is also awaitable (and finishes immediately), so ``sup.shutdown()`` and
    ``await sup.shutdown()`` both work, on asyncio and trio alike.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


DONE = Done()
