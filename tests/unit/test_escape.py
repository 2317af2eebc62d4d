"""`printable`: any text becomes one printable, UTF-8 encodable line, reversibly."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from supervisor.ops.escape import printable

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=60)

_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[\\nrt])")
_NAMED = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(shown: str) -> str:
    """The inverse, written independently: every backslash starts an escape."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return _NAMED[code] if code in _NAMED else chr(int(code[1:], 16))

    return _ESCAPE.sub(one, shown)


@given(ANY_TEXT)
def test_any_text_becomes_one_printable_encodable_line(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert "\n" not in shown
    assert "\r" not in shown
    shown.encode("utf-8")  # strict: no surrogate survives


@given(ANY_TEXT)
def test_nothing_is_lost(text: str) -> None:
    assert _unescape(printable(text)) == text


@given(st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))))
def test_ordinary_text_is_left_alone(text: str) -> None:
    if text.isprintable() and "\\" not in text:
        assert printable(text) is text


def test_examples() -> None:
    assert printable("r1") == "r1"
    assert printable("\x1b[31m\r\nX") == "\\x1b[31m\\r\\nX"
    assert printable("a\ud800b") == "a\\ud800b"
    assert printable("C:\\x1b") == "C:\\\\x1b"  # not to be confused with the escape
    assert printable("émoji 😀") == "émoji 😀"
    assert printable("rtl\u202eevil\xa0") == "rtl\\u202eevil\\xa0"
