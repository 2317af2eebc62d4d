from __future__ import annotations

import pytest
from hypothesis import settings

from tests.support.leaks import no_leaks

__all__ = ["no_leaks"]  # the autouse leak check, shared with e2e

# Examples are timed on a small shared machine: a slow one is load, not a bug.
settings.register_profile("tests", deadline=None)
settings.load_profile("tests")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session", autouse=True)
def _multiprocessing_infrastructure() -> None:
    """Start multiprocessing's per-process helpers once, so they are not 'leaks'."""
    import multiprocessing
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    forkserver.ensure_running()
    multiprocessing.get_context("spawn").RawArray("d", 4)
