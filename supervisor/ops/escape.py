"""Text from configuration or from a runner, made safe to render in an HTTP body or a
Prometheus label.

A runner id (or a give-up reason quoting a runner) may hold control bytes, line
breaks or lone surrogates. Rendered raw, they forge lines in ``/readyz``, inject
escape sequences into whatever terminal shows the body, or make the UTF-8 encoding
of a response fail (an endless 500). `printable` shows each such character as its
Python escape and leaves ordinary text, non-ASCII letters included, as it is.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with backslashes doubled and non-printable characters escaped
    (``"\\x1b"``, ``"\\n"``, ``"\\ud800"``): one line, always encodable as UTF-8.

    Non-printable is what `str.isprintable` says: control and format characters,
    surrogates, unassigned code points, line and paragraph separators, and every
    space but the plain one. Doubling the backslash keeps the rendering unambiguous.
    """
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do, no copy
    return "".join(
        ch if ch != "\\" and ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


__all__ = ["printable"]
