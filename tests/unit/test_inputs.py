"""The CLI's stdin parser: one line in, one task or one `InputError` out, whatever the line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cli.inputs import TASK_KINDS, InputError, parse_line, parse_task, prompt_tasks
from supervisor.protocol import BaseTask, Embed, Generate, Probe


def parse(text: str, line: int = 7) -> BaseTask | InputError:
    return parse_line(text, line=line, max_tokens=16)


def error(text: str) -> str:
    out = parse(text)
    assert isinstance(out, InputError), out
    assert out.line == 7
    return out.error


def test_a_generate_line() -> None:
    assert parse('{"type": "Generate", "task_id": "t1", "prompt": "hi", "max_tokens": 8}') == (
        Generate(task_id="t1", prompt="hi", max_tokens=8)
    )


def test_defaults_task_id_from_the_line_and_max_tokens_from_the_cli() -> None:
    assert parse('{"type": "Generate", "prompt": "hi"}', line=3) == Generate(
        task_id="line-3", prompt="hi", max_tokens=16
    )


def test_embed_and_probe_lines() -> None:
    assert parse('{"type": "Embed", "task_id": "e", "texts": ["a", "b"]}') == Embed(
        task_id="e", texts=("a", "b")
    )
    assert parse('{"type": "Probe", "task_id": "p"}') == Probe(task_id="p")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "malformed JSON: "),
        ("[" * 100_000, "malformed JSON: nested too deeply"),
        ('"Generate"', "expected a JSON object, got str"),
        ("{}", 'missing "type"'),
        ('{"type": "LoadModel"}', "unknown task type 'LoadModel'"),
        ('{"type": "Generate", "task_id": ""}', "task_id must be a non-empty string"),
        ('{"type": "Generate", "task_id": 5}', "Generate.task_id must be a string, got int"),
        ('{"type": "Generate", "max_tokens": 1e3}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": NaN}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": -Infinity}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": false}', "Generate.max_tokens must be an integer"),
        ('{"type": "Generate", "max_tokens": -1}', "Generate.max_tokens must be an int >= 0"),
        ('{"type": "Embed", "texts": ["a", 1]}', "Embed.texts must be a list of strings"),
        ('{"type": "Embed", "texts": "ab"}', "Embed.texts must be a list of strings"),
        ('{"type": "Probe", "x": 1, "a": 2}', "unknown field(s) for Probe: a, x"),
    ],
)
def test_bad_lines_are_one_line_errors(text: str, expected: str) -> None:
    assert error(text).startswith(expected)


def test_a_huge_integer_is_an_input_error_not_a_crash() -> None:
    # Python refuses to convert integers of more than 4300 digits from text: json
    # raises a plain ValueError for them, not a JSONDecodeError.
    message = error('{"type": "Generate", "max_tokens": ' + "9" * 5000 + "}")
    assert message.startswith("malformed JSON: ")
    assert "4300" in message


def test_a_lone_surrogate_in_a_string_is_refused() -> None:
    # "\ud800" is valid JSON but no UTF-8 can carry it: the runner's output of it
    # could not be printed. Refuse the task where the input is read.
    assert "Generate.prompt is not valid Unicode" in error(
        '{"type": "Generate", "prompt": "a\\ud800b"}'
    )
    assert "Embed.texts is not valid Unicode" in error('{"type": "Embed", "texts": ["\\udfff"]}')


def test_a_surrogate_pair_is_one_valid_character() -> None:
    task = parse('{"type": "Generate", "prompt": "\\ud83d\\ude00"}')
    assert isinstance(task, Generate)
    assert task.prompt == "\U0001f600"


def test_errors_show_unprintable_field_names_escaped() -> None:
    message = error('{"type": "Probe", "\\ud800": 1}')
    assert "\\ud800" in message
    message.encode("utf-8")


def test_parse_task_takes_decoded_values() -> None:
    task = parse_task({"type": "Probe"}, default_task_id="d", max_tokens=1)
    assert task == Probe(task_id="d")
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_task([1], default_task_id="d", max_tokens=1)


def test_prompt_tasks_are_numbered_from_one() -> None:
    assert prompt_tasks(["a", "b"], max_tokens=3) == [
        Generate(task_id="prompt-1", prompt="a", max_tokens=3),
        Generate(task_id="prompt-2", prompt="b", max_tokens=3),
    ]


def check_one_outcome(text: str) -> None:
    out = parse(text)
    if isinstance(out, InputError):
        assert out.line == 7
        assert "\n" not in out.error
        # What the CLI prints must be printable, whatever the input held.
        str(out).encode("utf-8")
    else:
        assert type(out) in TASK_KINDS.values()
        assert out.task_id
        for value in vars_of(out):
            if isinstance(value, str):
                value.encode("utf-8")


def vars_of(task: BaseTask) -> list[Any]:
    values: list[Any] = []
    for name in task.__dataclass_fields__:
        value = getattr(task, name)
        values.extend(value if isinstance(value, tuple) else [value])
    return values


#: Any code point, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()))


@settings(max_examples=300)
@given(any_text)
def test_any_text_is_one_task_or_one_input_error(text: str) -> None:
    check_one_outcome(text)


# Task-shaped JSON lines whose values are the awkward ones: numbers past Python's
# 4300-digit limit, lone surrogates, NaN and infinities, wrong types.
strings = any_text.map(json.dumps)
awkward = (
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1", "0", "1.5", "true", "null"])
    | st.sampled_from(['"\\ud800"', '"x\\udc00"', '"\\ud83d\\ude00"', '"a\\nb"'])
    | st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n)
    | st.integers().map(str)
    | strings
)
values = awkward | st.lists(awkward, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
keys = st.sampled_from(["task_id", "prompt", "max_tokens", "texts", "type"]).map(json.dumps)
kinds = st.sampled_from(['"Generate"', '"Embed"', '"Probe"', '"Shutdown"', "7"])
json_lines = st.builds(
    lambda kind, members: "{" + ", ".join([f'"type": {kind}', *members]) + "}",
    kinds,
    st.lists(st.builds("{}: {}".format, keys | strings, values), max_size=4),
)


@settings(max_examples=300)
@given(json_lines)
def test_any_task_shaped_line_is_one_task_or_one_input_error(text: str) -> None:
    check_one_outcome(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: Python's json writes and reads them
    | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children),
    max_leaves=6,
)
fields = st.sampled_from(["type", "task_id", "prompt", "max_tokens", "texts"]) | any_text
task_like = st.dictionaries(fields, json_values, max_size=5).map(
    lambda d: {"type": "Generate", **d} if len(d) % 2 else d
)


@given(task_like)
def test_any_json_object_is_one_task_or_one_input_error(obj: dict[str, Any]) -> None:
    check_one_outcome(json.dumps(obj))


@given(st.sampled_from(sorted(TASK_KINDS)), st.integers(), any_text, st.lists(any_text))
def test_typed_fields_of_every_kind(kind: str, n: int, text: str, texts: list[str]) -> None:
    obj: dict[str, Any] = {"type": kind, "task_id": text or "t"}
    if kind == "Generate":
        obj.update(prompt=text, max_tokens=n)
    elif kind == "Embed":
        obj.update(texts=texts)
    check_one_outcome(json.dumps(obj))


@given(st.integers(min_value=0, max_value=10**4000))
def test_any_non_negative_integer_that_json_can_carry_is_a_max_tokens(n: int) -> None:
    task = parse(f'{{"type": "Generate", "max_tokens": {n}}}')
    assert task == Generate(task_id="line-7", max_tokens=n)


def test_a_task_chooses_its_recovery_but_never_its_resume_point() -> None:
    task = parse_line(
        '{"type": "Generate", "prompt": "a", "recovery": "resume"}', line=1, max_tokens=4
    )
    assert isinstance(task, Generate)
    assert task.recovery == "resume"
    embed = parse_line('{"type": "Embed", "texts": ["x"], "recovery": null}', line=2, max_tokens=4)
    assert isinstance(embed, Embed)
    assert embed.recovery is None
    bad = parse_line('{"type": "Generate", "recovery": "twice"}', line=3, max_tokens=4)
    assert isinstance(bad, InputError)
    assert "recovery must be one of fail, replay, resume" in str(bad)
    forged = parse_line('{"type": "Generate", "resume_from": ["a "]}', line=4, max_tokens=4)
    assert isinstance(forged, InputError)
    assert "resume_from" in str(forged)
