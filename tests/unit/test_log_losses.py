"""Log files lose nothing silently: bad characters, a full disk, a removed file or
directory, rotation by time. Real files, real devices, a real tmpfs."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from supervisor.logs import files
from supervisor.logs.files import flush_log_files, log_file_name, open_runner_log
from supervisor.logs.rotation import Rotation, check_file_options, parse_rotation
from tests.unit.test_log_files import parsed


def open_log(
    log_dir: Path, runner_id: str = "r1", rotation: str | None = "50 MB"
) -> files.RunnerLog:
    return open_runner_log(
        log_dir, runner_id, incarnation=1, pid=100, rotation=rotation, retention=5
    )


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(seen.append, level="WARNING", format="{message}")
    yield seen
    logger.remove(sink)


# ------------------------------------------------------------------ characters
def test_a_lone_surrogate_is_escaped_and_its_batch_kept(tmp_path: Path) -> None:
    before = files.dropped_lines()
    log = open_log(tmp_path)
    log.write("output", "Traceback (most recent call last):")
    log.write("output", '  File "/models/\udcff\udcfeweights.py", line 3')  # undecodable path
    log.write("output", "RuntimeError: boom")
    log.close()
    assert flush_log_files()
    texts = [r["text"] for r in parsed(tmp_path / "r1.log")]
    assert texts == [
        "Traceback (most recent call last):",
        '  File "/models/\\udcff\\udcfeweights.py", line 3',
        "RuntimeError: boom",
    ]
    assert files.dropped_lines() == before


def test_a_runner_id_with_a_surrogate_gets_its_lines(tmp_path: Path) -> None:
    runner_id = "gpu\udcff0"  # from a non-UTF-8 argv
    log = open_log(tmp_path, runner_id=runner_id)
    log.write("output", "hello")
    logger.bind(runner_id=runner_id, incarnation=1).info("runner {} is slow", runner_id)
    log.close()
    assert flush_log_files()
    rows = parsed(tmp_path / log_file_name(runner_id))
    assert [r["text"] for r in rows] == ["hello", "INFO    runner gpu\\udcff0 is slow"]
    assert log_file_name(runner_id) != log_file_name("gpu\udcfe0")
    assert log_file_name(runner_id) != log_file_name("gpu\\udcff0")


# ------------------------------------------------------------------ full disks
def test_lines_written_to_a_full_device_are_counted(tmp_path: Path, warnings: list[str]) -> None:
    pytest.importorskip("prometheus_client")
    from supervisor.ops.metrics import SupervisorMetrics

    def exported() -> float:
        text = SupervisorMetrics().render().decode()
        (line,) = (ln for ln in text.splitlines() if ln.startswith("runner_supervisor_log_lines"))
        return float(line.split()[-1])

    (tmp_path / "r1.log").symlink_to("/dev/full")  # every write: ENOSPC
    before = files.dropped_lines()
    log = open_log(tmp_path, rotation=None)
    for i in range(25):
        log.write("output", f"line {i}")
    log.close()
    assert flush_log_files()
    assert log.dropped == 0  # the queue took them all: the disk lost them
    assert files.dropped_lines() == before + 25
    assert exported() == before + 25
    full = [w for w in warnings if "r1.log" in w and "lines are lost" in w]
    assert len(full) == 1, warnings  # once, not per line


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a disk that really fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        flush_log_files()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_that_fills_up_counts_every_line_it_lost(tiny_disk: Path) -> None:
    before = files.dropped_lines()
    log = open_log(tiny_disk, rotation=None)
    total = 2000
    for i in range(total):
        log.write("output", f"line {i:05d} " + "x" * 90)  # ~150 bytes stamped: 300 KB
        if i % 200 == 0:
            assert flush_log_files()
    log.close()
    assert flush_log_files()
    written = (tiny_disk / "r1.log").read_bytes().decode().splitlines()
    whole = [w for w in written if w.endswith("x" * 90)]
    lost = files.dropped_lines() - before
    assert 0 < len(whole) < total
    assert len(whole) + lost == total
    assert log.dropped == 0


# ------------------------------------------------------------- removed files
def test_a_removed_file_is_made_again_and_counted(tmp_path: Path, warnings: list[str]) -> None:
    reopened = files.reopened_log_files()
    log = open_log(tmp_path)
    log.write("output", "first")
    assert flush_log_files()
    (tmp_path / "r1.log").unlink()
    log.write("output", "second")
    assert flush_log_files()
    assert [r["text"] for r in parsed(tmp_path / "r1.log")] == ["second"]
    assert files.reopened_log_files() == reopened + 1
    assert any("r1.log was removed" in w for w in warnings)
    log.close()
    assert flush_log_files()


def test_a_removed_directory_is_made_again(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    reopened = files.reopened_log_files()
    log = open_log(log_dir)
    log.write("output", "first")
    assert flush_log_files()
    shutil.rmtree(log_dir)
    log.write("output", "second")
    log.close()
    assert flush_log_files()
    assert [r["text"] for r in parsed(log_dir / "r1.log")] == ["second"]
    assert files.reopened_log_files() == reopened + 1


def test_a_file_replaced_under_it_is_followed(tmp_path: Path) -> None:
    """logrotate's ``create`` mode: the file is renamed and a new one made."""
    log = open_log(tmp_path)
    log.write("output", "old")
    assert flush_log_files()
    (tmp_path / "r1.log").rename(tmp_path / "r1.log.1")
    (tmp_path / "r1.log").write_text("")
    log.write("output", "new")
    log.close()
    assert flush_log_files()
    assert [r["text"] for r in parsed(tmp_path / "r1.log")] == ["new"]
    assert [r["text"] for r in parsed(tmp_path / "r1.log.1")] == ["old"]


# ------------------------------------------------------------ rotation by time
def test_an_interval_counts_from_the_files_first_line(tmp_path: Path) -> None:
    """A restart does not restart the interval: the file's first stamp says when it
    began, so a file begun two hours ago rotates at the next line under "1 hour"."""
    old = datetime.datetime.now().astimezone() - datetime.timedelta(hours=2)
    stamp = old.isoformat(timespec="milliseconds")
    (tmp_path / "r1.log").write_text(f"{stamp} output     inc=1 pid=1 | from before\n")
    log = open_log(tmp_path, rotation="1 hour")
    log.write("output", "now")
    log.close()
    assert flush_log_files()
    rotated = sorted(p.name for p in tmp_path.glob("r1.*.log"))
    assert len(rotated) == 1, rotated
    assert [r["text"] for r in parsed(tmp_path / rotated[0])] == ["from before"]
    assert [r["text"] for r in parsed(tmp_path / "r1.log")] == ["now"]


def test_a_young_file_is_not_rotated_by_time(tmp_path: Path) -> None:
    log = open_log(tmp_path, rotation="1 hour")
    log.write("output", "one")
    assert flush_log_files()
    log.write("output", "two")
    log.close()
    assert flush_log_files()
    assert [p.name for p in tmp_path.iterdir()] == ["r1.log"]


@pytest.mark.parametrize(
    ("text", "rotation"),
    [
        ("50 MB", Rotation(size=50_000_000)),
        ("1 GiB", Rotation(size=2**30)),
        ("2 KB", Rotation(size=2000)),
        ("0.5 kb", Rotation(size=500)),
        ("1 day", Rotation(interval=86400)),
        ("12 hours", Rotation(interval=43200)),
        ("90 s", Rotation(interval=90)),
        ("00:00", Rotation(at=datetime.time(0, 0))),
        ("sunday", Rotation(at=datetime.time(0, 0), weekday=6)),
        ("Monday at 12:30", Rotation(at=datetime.time(12, 30), weekday=0)),
    ],
)
def test_rotation_words_read_as_loguru_reads_them(text: str, rotation: Rotation) -> None:
    assert parse_rotation(text) == rotation


@pytest.mark.parametrize("text", ["", "soon", "0 MB", "-5 MB", "25:00", "1 fortnight", "MB"])
def test_other_rotation_words_are_one_line_value_errors(text: str) -> None:
    with pytest.raises(ValueError, match="rotation") as info:
        check_file_options(text, None)
    assert "\n" not in str(info.value)


@settings(max_examples=200)
@given(
    st.times(),
    st.one_of(st.none(), st.integers(0, 6)),
    st.floats(min_value=0, max_value=4e9),
)
def test_a_time_of_day_is_due_at_its_next_occurrence(
    at: datetime.time, weekday: int | None, started: float
) -> None:
    at = at.replace(microsecond=0)
    due = Rotation(at=at, weekday=weekday).next_after(started)
    assert due is not None
    assert due > started
    local = datetime.datetime.fromtimestamp(due).astimezone()
    assert due - started <= (7 if weekday is not None else 1) * 86400 + 3600  # + a DST hour
    if weekday is not None:
        assert local.weekday() == weekday


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_any_rotation_text_reads_or_is_a_value_error(text: str) -> None:
    message = ""
    try:
        parse_rotation(text)
    except ValueError as exc:
        message = str(exc)
    assert "\n" not in message


@pytest.mark.parametrize("fmt", ["gz", "bz2", "xz", "zip", "tar", "tar.gz", "tar.bz2", "tar.xz"])
def test_every_compression_packs_the_rotated_file(tmp_path: Path, fmt: str) -> None:
    import tarfile
    import zipfile

    from supervisor.logs.rotation import compress

    rotated = tmp_path / "r1.2026-01-01_00-00-00_000000.log"
    rotated.write_bytes(b"line\n" * 1000)
    out = Path(compress(str(rotated), fmt))
    assert out.name == rotated.name + "." + fmt
    assert not rotated.exists()
    if fmt == "zip":
        with zipfile.ZipFile(out) as archive:
            assert archive.read(rotated.name) == b"line\n" * 1000
    elif fmt.startswith("tar"):
        with tarfile.open(out) as tar:
            member = tar.extractfile(rotated.name)
            assert member is not None
            assert member.read() == b"line\n" * 1000
    else:
        import bz2
        import gzip
        import lzma

        opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[fmt]
        with opener(out) as packed:
            assert packed.read() == b"line\n" * 1000
