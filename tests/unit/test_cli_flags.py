"""Hostile flag values: each is a one-line usage error (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli.app import main
from supervisor.cli.fields import parse_count, parse_port, parse_seconds, parse_size

HUGE = "9" * 400


@pytest.mark.parametrize(
    "argv",
    [
        ["--memory-limit", HUGE],
        ["--memory-limit", "0"],
        ["--health-port", "99999"],
        ["--health-port", "-1"],
        ["--token-delay", "inf"],
        ["--token-delay", "nan"],
        ["--max-tokens", "9" * 5000],
        ["--decode-timeout", "-1"],
        ["--engine", "nope"],
        ["--engine", "no_such_module_here:Engine"],
        ["--engine", "os:no_such_attr"],
        ["--containment", "sometimes"],
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv, "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last
    assert len(last) < 300, last  # the 400-digit value is not echoed whole


def test_stdin_closed_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", "--stdin"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        # fd 0 closed in the child, as `2<&- 0<&-` in a shell would
        preexec_fn=lambda: os.close(0),
    )
    assert proc.returncode == 2, proc.stderr
    assert "standard input is closed" in proc.stderr
    assert "Traceback" not in proc.stderr


@given(st.text(max_size=60))
def test_flag_parsers_raise_only_usage_errors(text: str) -> None:
    for parse in (parse_size, parse_count, parse_seconds, parse_port):
        with contextlib.suppress(argparse.ArgumentTypeError):  # anything else fails the test
            parse(text)


def test_sizes_parse_exactly() -> None:
    assert parse_size("512M") == 512 * 2**20
    assert parse_size("1.5K") == 1536
    assert parse_size("2GiB") == 2 * 2**30
