"""CLI output never fails on text its stream cannot encode, and JSON stays JSON.

A lone surrogate (what undecodable input bytes become) in a prompt comes back in the
echoed text; writing it to a strict UTF-8 stdout raises UnicodeEncodeError, which
once read as "stdout closed" and dropped the rest of the run.
"""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli.output import HumanOutput, JsonOutput, encodable
from supervisor.protocol import ChunkGenerated, TaskStatus, TaskStatusUpdated

# Every code point, lone surrogates included (hypothesis leaves them out by default).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)


def _strict(encoding: str = "utf-8") -> tuple[io.TextIOWrapper, io.BytesIO]:
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="\n"), raw


def test_human_output_escapes_a_lone_surrogate_and_keeps_going() -> None:
    stream, raw = _strict()
    out = HumanOutput(stream)
    out.event(ChunkGenerated("t1", 0, "a\ud800b"))
    out.event(ChunkGenerated("t1", 1, " é"))
    out.event(TaskStatusUpdated("t1", TaskStatus.Complete))
    out.event(ChunkGenerated("t2", 0, "next task"))
    out.finished(0, 0)
    assert not out.broken
    assert raw.getvalue().decode("utf-8") == "a\\ud800b é\nnext task\n"


def test_human_output_on_an_ascii_stream_escapes_what_ascii_lacks() -> None:
    stream, raw = _strict("ascii")
    out = HumanOutput(stream)
    out.event(ChunkGenerated("t", 0, "héllo \U0001f600 \udcff"))
    out.finished(0, 0)
    assert not out.broken
    assert raw.getvalue() == b"h\\xe9llo \\U0001f600 \\udcff\n"


def test_json_output_is_valid_ascii_json_that_round_trips() -> None:
    stream, raw = _strict("ascii")
    out = JsonOutput(stream)
    out.started(1, "r\ud800")
    out.event(ChunkGenerated("t\udcff", 0, "a\ud800b é"))
    out.rejected(3, "bad \udc80 line")
    out.finished(0, None)
    assert not out.broken
    lines = raw.getvalue().decode("ascii").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == [
        "RunnerStarted",
        "ChunkGenerated",
        "InputRejected",
        "RunFinished",
    ]
    assert records[0]["runner_id"] == "r\ud800"
    assert (records[1]["task_id"], records[1]["text"]) == ("t\udcff", "a\ud800b é")
    assert records[2]["error"] == "bad \udc80 line"


def test_a_closed_stream_still_means_nobody_listens() -> None:
    stream, _ = _strict()
    out = HumanOutput(stream)
    stream.close()
    out.event(ChunkGenerated("t", 0, "x"))
    assert out.broken


def test_encodable_with_an_unknown_encoding_falls_back_to_ascii() -> None:
    assert encodable("é\ud800", "no-such-codec") == "\\xe9\\ud800"
    assert encodable("é", None) == "é"


@given(texts=st.lists(ANY_TEXT, max_size=5))
def test_human_output_writes_any_text_losing_only_the_unencodable(texts: list[str]) -> None:
    stream, raw = _strict()
    out = HumanOutput(stream)
    for i, text in enumerate(texts):
        out.event(ChunkGenerated("t", i, text))
    out.finished(0, 0)
    assert not out.broken
    written = raw.getvalue().decode("utf-8")  # strict: whatever was written is valid UTF-8
    expected = "".join(texts)
    if all(not 0xD800 <= ord(c) <= 0xDFFF for c in expected):
        assert written == expected + ("\n" if texts else "")


@given(text=ANY_TEXT, task_id=ANY_TEXT)
def test_json_output_round_trips_any_text(text: str, task_id: str) -> None:
    stream, raw = _strict()
    out = JsonOutput(stream)
    out.event(ChunkGenerated(task_id, 0, text))
    assert not out.broken
    (line,) = raw.getvalue().decode("utf-8").splitlines()
    record = json.loads(line)
    assert (record["task_id"], record["text"]) == (task_id, text)
