"""The output capture's per-line callback: every line, bounded, in order."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.diagnostics import (
    MAX_LINE,
    MAX_LINE_BYTES,
    OUTPUT_STREAM,
    TRUNCATED,
    OutputCapture,
)
from supervisor.logs.hook import OutputHook


def capture_of(chunks: list[bytes]) -> tuple[OutputCapture, list[tuple[str, str]]]:
    """Feed ``chunks`` through a real pipe, reading after each, then close the writer."""
    r, w = os.pipe()
    seen: list[tuple[str, str]] = []
    cap = OutputCapture(
        r, "r1", tail_lines=50, forward=False, on_line=lambda s, line: seen.append((s, line))
    )
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:  # the pipe holds 64 KiB: write what fits, read, repeat
                n = os.write(w, view[:32768])
                view = view[n:]
                cap.read_available()
        os.close(w)
        w = -1
        cap.read_available()
    finally:
        if w >= 0:
            os.close(w)
    return cap, seen


@pytest.mark.anyio
async def test_every_line_reaches_the_callback_with_its_stream() -> None:
    cap, seen = capture_of([b"one\ntw", b"o\r\nthree"])
    cap.close()
    assert seen == [(OUTPUT_STREAM, "one"), (OUTPUT_STREAM, "two"), (OUTPUT_STREAM, "three")]
    assert list(cap.tail) == ["one", "two", "three"]


@pytest.mark.anyio
async def test_a_long_line_is_cut_for_the_callback_and_shorter_in_the_tail() -> None:
    long = b"a" * (MAX_LINE_BYTES + 5000)
    cap, seen = capture_of([long + b"\nnext\n"])
    cap.close()
    assert seen[0][1] == "a" * MAX_LINE_BYTES + TRUNCATED
    assert seen[1][1] == "next"
    assert cap.tail[0] == "a" * MAX_LINE + "..."


@pytest.mark.anyio
async def test_a_runaway_line_without_newline_is_cut_once_and_the_rest_skipped() -> None:
    cap, seen = capture_of([b"b" * 40_000, b"b" * 200_000, b"tail of it\nafter\n"])
    cap.close()
    assert [line for _, line in seen] == ["b" * MAX_LINE_BYTES + TRUNCATED, "after"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=2000), max_size=8))
def test_lines_are_bounded_and_complete_ones_arrive_in_order(chunks: list[bytes]) -> None:
    r, w = os.pipe()
    seen: list[str] = []
    cap = OutputCapture(
        r, "r1", tail_lines=10, forward=False, on_line=lambda s, ln: seen.append(ln)
    )
    try:
        for chunk in chunks:
            os.write(w, chunk)
            cap.read_available()
    finally:
        os.close(w)
        cap.read_available()
        cap.closed = True  # outside an event loop: close the fd by hand
        os.close(r)
    # under MAX_LINE_BYTES in all: nothing is cut, every line arrives as written (the
    # last one at EOF even without its newline)
    whole = b"".join(chunks).split(b"\n")
    if whole[-1] == b"":
        whole.pop()
    assert seen == [raw.decode("utf-8", "replace").rstrip("\r") for raw in whole]


def test_the_hook_reports_the_first_fatal_line_once() -> None:
    from supervisor.logs.fatal import FatalMatcher

    fired: list[tuple[str, str]] = []
    hook = OutputHook(
        matcher=FatalMatcher(), log=None, on_fatal=lambda name, line: fired.append((name, line))
    )
    for line in (
        "loading",
        "CUDA error: device-side assert triggered",
        "CUDA error: an illegal memory access was encountered",
    ):
        hook.on_line("output", line)
    assert fired == [("device-side assert", "CUDA error: device-side assert triggered")]
