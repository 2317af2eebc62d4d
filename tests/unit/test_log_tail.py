"""``runner-supervisor logs``: print, last lines, follow across rotation, errors."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from supervisor.cli.logs_command import logs_main
from supervisor.logs.files import flush_log_files, open_runner_log
from supervisor.logs.tail import tail


def test_prints_the_whole_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r1.log").write_text("one\ntwo\nthree\n")
    assert logs_main(["r1", "--log-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\n"


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, ""), (1, "c\n"), (2, "b\nc\n"), (3, "a\nb\nc\n"), (10, "a\nb\nc\n")],
)
def test_the_last_n_lines(tmp_path: Path, count: int, expected: str) -> None:
    (tmp_path / "r1.log").write_text("a\nb\nc\n")
    out = io.StringIO()
    tail("r1", str(tmp_path), False, out, lines=count)
    assert out.getvalue() == expected


def test_the_last_lines_of_a_file_larger_than_a_block(tmp_path: Path) -> None:
    body = "".join(f"line {i} " + "x" * 100 + "\n" for i in range(3000))
    (tmp_path / "r1.log").write_text(body)
    out = io.StringIO()
    tail("r1", str(tmp_path), False, out, lines=1500)
    assert out.getvalue() == "".join(body.splitlines(keepends=True)[-1500:])


def test_a_missing_log_is_a_one_line_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert logs_main(["nobody", "--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("runner-supervisor logs: error: no log of runner 'nobody'")


@pytest.mark.parametrize("argv", [[], ["r1", "-n", "-3"], ["r1", "--bogus"]])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        logs_main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_follow_prints_every_line_once_across_rotations(tmp_path: Path) -> None:
    log = open_runner_log(tmp_path, "r1", incarnation=1, pid=1, rotation="1 KB", retention=50)
    log.write("output", "first")
    assert flush_log_files()
    out = io.StringIO()
    stop = threading.Event()
    follower = threading.Thread(
        target=tail,
        args=("r1", str(tmp_path), True, out),
        kwargs={"poll": 0.01, "stop": stop.is_set},
    )
    follower.start()
    try:
        for i in range(200):
            log.write("output", f"line {i:03d} " + "z" * 40)
            if i % 20 == 0:
                assert flush_log_files()
                time.sleep(0.02)
        log.close()
        assert flush_log_files()
        deadline = time.monotonic() + 10
        while "line 199" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(5)
    rotated = [p for p in tmp_path.iterdir() if p.name != "r1.log"]
    assert len(rotated) >= 5  # it did rotate, several times
    texts = [line.split(" | ", 1)[1] for line in out.getvalue().splitlines()]
    assert texts == ["first"] + [f"line {i:03d} " + "z" * 40 for i in range(200)]


def test_follow_keeps_up_with_many_rotations_between_polls(tmp_path: Path) -> None:
    """A slow follower (one look every 50 ms) and a writer that rotates the file many
    times meanwhile: every line once, in order."""
    log = open_runner_log(tmp_path, "r1", incarnation=1, pid=1, rotation="1 KB", retention=1000)
    log.write("output", "first")
    assert flush_log_files()
    out = io.StringIO()
    stop = threading.Event()
    follower = threading.Thread(
        target=tail,
        args=("r1", str(tmp_path), True, out),
        kwargs={"poll": 0.05, "stop": stop.is_set},
    )
    follower.start()
    try:
        for i in range(600):
            log.write("output", f"line {i:03d} " + "z" * 40)
            if i % 15 == 0:
                assert flush_log_files()  # one rotation per batch, several per poll
        log.close()
        assert flush_log_files()
        deadline = time.monotonic() + 15
        while "line 599" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(5)
    assert len(list(tmp_path.iterdir())) >= 20
    texts = [line.split(" | ", 1)[1] for line in out.getvalue().splitlines()]
    assert texts == ["first"] + [f"line {i:03d} " + "z" * 40 for i in range(600)]
