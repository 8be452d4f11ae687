"""Quoting user-supplied text in messages without letting it grow them.

An error message that quotes what a user sent (a `method`, a `custom_id`, a URL) is stored on the
batch, sent in its events and returned by every read; a 5 MB string quoted whole would make all of
those 5 MB. Every quote is cut to a bounded length and says how long the original was.
"""

from __future__ import annotations

DEFAULT_QUOTE_CHARS = 200


def cut(text: str, limit: int = DEFAULT_QUOTE_CHARS) -> str:
    """`text` itself when it has at most `limit` characters, else its head marked as cut, with its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[cut: {len(text)} characters]"


def quote(value: object, limit: int = DEFAULT_QUOTE_CHARS) -> str:
    """`repr`-style quote of any value, cut like `cut` (the repr of a huge object is never built whole
    for strings; other values are rare in messages and small by construction of their validators)."""
    if isinstance(value, str):
        return repr(cut(value, limit))
    return cut(repr(value), limit)
