"""Request lines and JSONL files of them, as a client writes them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, model: str = "null-model", url: str = CHAT, **body: Any) -> bytes:
    """One batch request line (no newline); `body` keywords add to or replace the chat body."""
    body = {"model": model, "messages": [{"role": "user", "content": f"hello {custom_id}"}], **body}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def jsonl(lines: Iterable[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def request_lines(n: int, *, model: str = "batch-test-model", url: str = CHAT) -> bytes:
    """A JSONL file of `n` chat requests, custom ids `req-0`..."""
    return jsonl(chat_line(f"req-{i}", model=model, url=url) for i in range(n))
