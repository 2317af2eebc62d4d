"""Per-runner log files: naming, stamping, restarts, rotation, a slow disk, routing."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from supervisor.logs import files
from supervisor.logs import writer as writer_module
from supervisor.logs.files import (
    MAX_LINE_CHARS,
    TRUNCATED,
    LogWriter,
    check_file_options,
    flush_log_files,
    log_file_name,
    open_runner_log,
)

LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) (?P<stream>\S+) +"
    r"inc=(?P<inc>\d+) pid=(?P<pid>\d+) \| (?P<text>.*)$"
)


def parsed(path: Path) -> list[dict[str, str]]:
    out = []
    for raw in path.read_text().splitlines():
        m = LINE.match(raw)
        assert m, f"unstamped line {raw!r}"
        out.append(m.groupdict())
    return out


def open_log(log_dir: Path, runner_id: str = "r1", inc: int = 1, pid: int = 100) -> files.RunnerLog:
    return open_runner_log(
        log_dir, runner_id, incarnation=inc, pid=pid, rotation="50 MB", retention=5
    )


# ------------------------------------------------------------------ names
def test_plain_ids_are_the_file_name() -> None:
    assert log_file_name("runner-1_a") == "runner-1_a.log"


@pytest.mark.parametrize("runner_id", ["a/b", "../x", "a.b", "", "gpu 0", "ü", "{time}"])
def test_other_ids_are_made_safe_and_kept_apart(runner_id: str) -> None:
    name = log_file_name(runner_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.log", name)
    assert name != log_file_name(runner_id + "x")


@settings(max_examples=200)
@given(st.text(max_size=200), st.text(max_size=200))
def test_file_names_are_safe_and_distinct(a: str, b: str) -> None:
    name = log_file_name(a)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,140}\.log", name)
    # no dot before ".log": loguru's retention glob NAME.*.log cannot reach another runner
    assert name.count(".") == 1
    if a != b:
        assert name != log_file_name(b)


# ------------------------------------------------------------------ writing
def test_lines_are_stamped_with_stream_incarnation_and_pid(tmp_path: Path) -> None:
    log = open_log(tmp_path, pid=4242)
    log.write("output", "loading weights")
    log.write("stderr", "a warning {with braces} <red>")
    log.close()
    assert flush_log_files()
    rows = parsed(tmp_path / "r1.log")
    assert [(r["stream"], r["inc"], r["pid"], r["text"]) for r in rows] == [
        ("output", "1", "4242", "loading weights"),
        ("stderr", "1", "4242", "a warning {with braces} <red>"),
    ]


def test_three_incarnations_append_to_one_file(tmp_path: Path) -> None:
    for inc, pid in ((1, 101), (2, 102), (3, 103)):
        log = open_log(tmp_path, inc=inc, pid=pid)
        log.write("output", f"hello from {pid}")
        log.close()
        assert flush_log_files()  # the file is closed between incarnations
    rows = parsed(tmp_path / "r1.log")
    assert [(r["inc"], r["pid"], r["text"]) for r in rows] == [
        ("1", "101", "hello from 101"),
        ("2", "102", "hello from 102"),
        ("3", "103", "hello from 103"),
    ]


def test_a_long_line_is_cut_with_a_marker(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.write("output", "x" * (MAX_LINE_CHARS * 3))
    log.close()
    assert flush_log_files()
    (row,) = parsed(tmp_path / "r1.log")
    assert row["text"] == "x" * MAX_LINE_CHARS + TRUNCATED


@pytest.mark.parametrize("compression", [None, "gz"])
def test_rotation_keeps_at_most_the_retention_count(
    tmp_path: Path, compression: str | None
) -> None:
    neighbour = tmp_path / "r1_x.log"  # another runner whose name starts the same
    neighbour.write_text("keep me\n")
    log = open_runner_log(
        tmp_path,
        "r1",
        incarnation=1,
        pid=7,
        rotation="2 KB",
        retention=3,
        compression=compression,
    )
    for i in range(300):
        log.write("output", f"line {i:04d} " + "y" * 80)
        if i % 50 == 0:
            assert flush_log_files()  # rotated files get distinct mtimes, not one burst
    log.close()
    assert flush_log_files()
    mine = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r1."))
    assert len(mine) == 3, mine
    assert "r1.log" in mine
    if compression:
        assert all(n.endswith(".gz") for n in mine if n != "r1.log")
    assert neighbour.read_text() == "keep me\n"
    last = parsed(tmp_path / "r1.log")[-1]
    assert last["text"].startswith("line 0299 ")


def test_a_blocked_writer_never_blocks_write_and_counts_drops(tmp_path: Path) -> None:
    """The file is a FIFO nobody reads: the writer thread blocks in open(), like a
    hung disk. write() must stay fast, and what does not fit is dropped and counted."""
    fifo = tmp_path / "r1.log"
    os.mkfifo(fifo)
    writer = LogWriter(str(tmp_path), max_lines=100)
    writer.start()
    log = writer.open("r1", incarnation=1, pid=9, rotation=None, retention=None)
    total = 5_000
    slowest = 0.0
    started = time.monotonic()
    for i in range(total):
        t0 = time.perf_counter()
        log.write("output", f"line {i}")
        slowest = max(slowest, time.perf_counter() - t0)
    elapsed = time.monotonic() - started
    assert slowest < 0.05, f"one write() took {slowest * 1e3:.1f} ms"
    assert elapsed < 2.0
    # 100 wait in the queue; the writer may have taken one batch (<= 100) before it blocked
    assert log.dropped >= total - 200
    assert writer.dropped == log.dropped

    # The disk comes back: what was queued is written, nothing else.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    received: list[bytes] = []
    flushed = threading.Event()

    def drain() -> None:
        # A FIFO read before the writer thread has opened its end reads as EOF (b""), so
        # EOF ends the drain only once the writer has flushed and closed the file.
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                received.append(chunk)
            elif flushed.is_set() and chunk == b"":
                return
            else:
                time.sleep(0.005)

    reader = threading.Thread(target=drain)
    reader.start()
    log.close()
    assert writer.flush(10.0)
    flushed.set()
    reader.join(10.0)
    assert not reader.is_alive()
    os.close(fd)
    numbers = [int(line.rsplit(" ", 1)[1]) for line in b"".join(received).decode().splitlines()]
    # every accepted line, once, in order (which ones depends on when the writer blocked)
    assert len(numbers) == total - log.dropped
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 0


def test_a_file_that_cannot_be_opened_costs_lines_not_the_writer(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        log = open_log(blocker)
        log.write("output", "lost")
        log.close()
        assert flush_log_files()
    finally:
        logger.remove(sink)
    assert any("r1.log" in w and "lines are lost" in w for w in warnings)
    # the same directory's writer still serves others
    good = open_log(tmp_path, runner_id="r2")
    good.write("output", "kept")
    good.close()
    assert flush_log_files()
    assert parsed(tmp_path / "r2.log")[0]["text"] == "kept"


# ------------------------------------------------------------ supervisor lines
def test_supervisor_lines_bound_to_a_runner_reach_its_file(tmp_path: Path) -> None:
    log = open_log(tmp_path, pid=55)
    logger.bind(runner_id="r1", incarnation=1, pid=55).warning("runner {} is slow", "r1")
    logger.bind(runner_id="r1").info("no incarnation bound: the open one's is used")
    logger.bind(runner_id="r1", runner_output=True).info("forwarded output: not twice")
    logger.bind(runner_id="other").info("another runner's line")
    logger.info("not about a runner")
    logger.bind(runner_id="r1").debug("below INFO: not routed")
    log.close()
    assert flush_log_files()
    rows = parsed(tmp_path / "r1.log")
    assert [(r["stream"], r["inc"], r["pid"], r["text"]) for r in rows] == [
        ("supervisor", "1", "55", "WARNING runner r1 is slow"),
        ("supervisor", "1", "55", "INFO    no incarnation bound: the open one's is used"),
    ]


def test_an_idle_writer_with_no_files_goes_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "IDLE_EXIT", 0.05)
    log = open_log(tmp_path)
    writer = files._writers[str(tmp_path)]
    log.close()
    writer._thread.join(5.0)
    assert not writer._thread.is_alive()
    assert str(tmp_path) not in files._writers
    # and a new incarnation gets a new writer, appending to the same file
    log = open_log(tmp_path, inc=2)
    log.write("output", "again")
    log.close()
    assert flush_log_files()
    assert parsed(tmp_path / "r1.log")[-1]["inc"] == "2"


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("rotation", ["50 MB", "1 GiB", "1 day", "12 hours", "00:00", "sunday"])
def test_loguru_rotations_are_accepted(rotation: str) -> None:
    check_file_options(rotation, None)


@pytest.mark.parametrize(
    ("rotation", "compression"),
    [("bogus", None), ("0 MB", None), ("-5 MB", None), ("50 MB", "rar")],
)
def test_bad_rotation_or_compression_is_a_value_error(
    rotation: str, compression: str | None
) -> None:
    with pytest.raises(ValueError, match=r"rotation|compression") as info:
        check_file_options(rotation, compression)
    assert "\n" not in str(info.value)


def test_dropped_lines_are_a_process_wide_counter_in_the_metrics(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from supervisor.ops.metrics import SupervisorMetrics

    def exported() -> float:
        text = SupervisorMetrics().render().decode()
        (line,) = (ln for ln in text.splitlines() if ln.startswith("runner_supervisor_log_lines"))
        return float(line.split()[-1])

    before = files.dropped_lines()
    assert exported() == before
    os.mkfifo(tmp_path / "r1.log")  # a writer that blocks, as on a hung disk
    log = open_log(tmp_path)
    for i in range(writer_module.QUEUE_LINES * 2 + 1000):
        log.write("output", f"line {i}")
    assert log.dropped >= 1000
    assert files.dropped_lines() == before + log.dropped
    assert exported() == before + log.dropped
    fd = os.open(tmp_path / "r1.log", os.O_RDONLY | os.O_NONBLOCK)
    reader = threading.Thread(target=lambda: _drain(fd))
    reader.start()
    log.close()
    assert flush_log_files(10.0)
    reader.join(10.0)
    os.close(fd)


def _drain(fd: int) -> None:
    os.set_blocking(fd, True)
    while os.read(fd, 65536):
        pass
