"""The task book and the parent's one validation of a task (no processes)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.tasks import (
    RECENT_TASK_IDS,
    RESERVED_PREFIX,
    TaskBook,
    validate_task,
)
from supervisor.errors import DuplicateTaskError, ReservedTaskIdError
from supervisor.protocol import Generate, LoadModel, Probe, Shutdown

LIMIT = 64


def test_valid_tasks_pass() -> None:
    validate_task(Generate(task_id="g", prompt="x" * LIMIT, max_tokens=0), LIMIT)
    validate_task(LoadModel(task_id="load"), LIMIT)
    validate_task(Shutdown(task_id="s"), LIMIT)


@pytest.mark.parametrize(
    ("task", "error", "match"),
    [
        ("not a task", TypeError, "expects a task, got str"),
        (Generate(task_id="", prompt="x"), ValueError, "task_id"),
        (Generate(task_id=7, prompt="x"), ValueError, "task_id"),  # type: ignore[arg-type]
        (Generate(task_id="g", prompt=3), TypeError, "prompt"),  # type: ignore[arg-type]
        (Generate(task_id="g", prompt="x", max_tokens=-1), ValueError, "max_tokens"),
        (Generate(task_id="g", prompt="x", max_tokens=True), ValueError, "max_tokens"),
        (Generate(task_id="g", prompt="x", max_tokens=1.5), ValueError, "max_tokens"),  # type: ignore[arg-type]
        (Generate(task_id="g", prompt="x" * (LIMIT + 1)), ValueError, "max_task_bytes"),
    ],
)
def test_malformed_tasks_are_refused_with_a_reason(
    task: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        validate_task(task, LIMIT)


@pytest.mark.parametrize("task_id", ["__probe-3", "__probe-1", "__", "__anything"])
def test_host_ids_in_the_supervisors_namespace_are_reserved(task_id: str) -> None:
    with pytest.raises(ReservedTaskIdError, match="supervisor"):
        validate_task(LoadModel(task_id=task_id), LIMIT)
    with pytest.raises(ReservedTaskIdError):
        validate_task(Probe(task_id=task_id), LIMIT)  # not even a Probe of the host's own


def test_ids_that_merely_contain_underscores_are_fine() -> None:
    validate_task(LoadModel(task_id="_probe-3"), LIMIT)
    validate_task(LoadModel(task_id="a__b"), LIMIT)


@given(
    task_id=st.one_of(st.text(max_size=8), st.integers(), st.none()),
    prompt=st.one_of(st.text(max_size=LIMIT + 4), st.integers(), st.none()),
    max_tokens=st.one_of(st.integers(-3, 3), st.booleans(), st.floats(0, 3), st.none()),
)
def test_validation_accepts_exactly_the_well_formed(
    task_id: Any, prompt: Any, max_tokens: Any
) -> None:
    task = Generate(task_id=task_id, prompt=prompt, max_tokens=max_tokens)
    well_formed = (
        isinstance(task_id, str)
        and task_id != ""
        and not task_id.startswith(RESERVED_PREFIX)
        and isinstance(prompt, str)
        and len(prompt) <= LIMIT
        and type(max_tokens) is int
        and max_tokens >= 0
    )
    try:
        validate_task(task, LIMIT)
    except (TypeError, ValueError):
        assert not well_formed
    else:
        assert well_formed


def test_a_task_is_pending_then_in_progress_then_finished() -> None:
    book = TaskBook()
    task = LoadModel(task_id="load")
    book.check_new("load")
    waiter = book.sent(task)
    assert book.pending == {"load": task}
    assert book.in_progress == {}
    assert book.oldest_pending() == "load"
    book.acknowledged("load")
    assert waiter.acked
    assert waiter.event.is_set()
    assert book.pending == {}
    assert book.in_progress == {"load": task}
    assert book.finished("load")
    assert not book.is_open("load")
    with pytest.raises(DuplicateTaskError):
        book.check_new("load")  # finished recently: still refused


def test_a_terminal_status_counts_once() -> None:
    book = TaskBook()
    book.sent(LoadModel(task_id="load"))
    book.acknowledged("load")
    assert book.finished("load")
    assert not book.finished("load")  # a repeat is dropped, not forwarded


def test_tasks_the_book_never_sent_still_end_once() -> None:
    book = TaskBook()  # e.g. the Shutdown that `shutdown()` writes itself
    assert book.finished("shutdown-1")
    assert not book.finished("shutdown-1")


def test_open_ids_are_refused() -> None:
    book = TaskBook()
    book.sent(LoadModel(task_id="p"))
    with pytest.raises(DuplicateTaskError, match="'p'"):
        book.check_new("p")
    book.acknowledged("p")
    with pytest.raises(DuplicateTaskError):
        book.check_new("p")


def test_close_hands_over_every_open_task_once_in_progress_first() -> None:
    book = TaskBook()
    waiters = [book.sent(LoadModel(task_id=t)) for t in ("a", "b", "c")]
    book.acknowledged("b")
    assert book.close() == ["b", "a", "c"]
    assert book.close() == []
    assert book.pending == {}
    assert book.in_progress == {}
    assert not any(w.event.is_set() for w in waiters[::2])  # not yet: released apart
    book.release_waiters()
    assert all(w.event.is_set() for w in waiters)
    assert [w.acked for w in waiters] == [False, True, False]
    assert not book.finished("a")  # the Failed that close() owed was its one end
    with pytest.raises(DuplicateTaskError):
        book.check_new("c")


def test_recent_ids_are_bounded() -> None:
    book = TaskBook()
    for i in range(RECENT_TASK_IDS + 1):
        book.finished(f"t{i}")
    book.check_new("t0")  # forgotten: the oldest went first
    with pytest.raises(DuplicateTaskError):
        book.check_new("t1")
    with pytest.raises(DuplicateTaskError):
        book.check_new(f"t{RECENT_TASK_IDS}")
