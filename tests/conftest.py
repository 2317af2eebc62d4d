from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.leaks import Snapshot


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test: no processes, threads or fds left behind."""
    before = Snapshot.take()
    yield
    problems = before.wait_clean()
    assert not problems, "; ".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _multiprocessing_infrastructure() -> None:
    """Start multiprocessing's per-process helpers once, so they are not 'leaks'."""
    import multiprocessing
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    forkserver.ensure_running()
    multiprocessing.get_context("spawn").RawArray("d", 4)
