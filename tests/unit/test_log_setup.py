"""The supervisor's own log lines as text or as one JSON object per line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from loguru import logger

from supervisor.logs.setup import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    logger.remove()


def test_json_lines_carry_runner_id_and_incarnation_as_fields() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    logger.bind(runner_id="r1", incarnation=2, pid=77).warning("runner {} is slow", "r1")
    logger.debug("below the level")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("with a traceback")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["runner_id"] == "r1"
    assert first["incarnation"] == 2
    assert first["pid"] == 77
    assert first["level"] == "WARNING"
    assert first["message"] == "runner r1 is slow"
    assert first["time"].count(":") >= 2
    assert first["function"] == "test_json_lines_carry_runner_id_and_incarnation_as_fields"
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"]


def test_text_lines_for_people() -> None:
    stream = io.StringIO()
    configure_logging("text", "DEBUG", stream)
    logger.debug("hello {}", "there")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("DEBUG   | hello there")


def test_an_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("xml", "INFO", io.StringIO())  # type: ignore[arg-type]
