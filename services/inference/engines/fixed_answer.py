"""`batch-test-model`: the test model of `/v1/chat/ds-test` — no inference, a fixed answer.

It lets a user check a file, the endpoint wiring and their download code at zero cost. The
same engine is registered as `null-model` for load tests and benchmarks, without the
test model's per-batch limits (docs/architecture.md, "The test model").
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

from schemas.inference import CHAT_COMPLETIONS, CHAT_DS_TEST, COMPLETIONS, RESPONSES
from schemas.responses import response_object
from services.inference.engines.base import Engine, EngineRequest, EngineResult, bad_request
from services.inference.engines.openai_params import parse_responses

ANSWER = "This is a test result."
# What a BPE tokenizer makes of ANSWER ("This", " is", " a", " test", " result", ".").
ANSWER_TOKENS = 6
# Per-message framing tokens as OpenAI counts them for chat models.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3
# Every answer's choices are the same, so all answers share one read-only list: building it
# per request was a third of this engine's cost, and this engine is the pipeline's I/O floor.
_CHAT_CHOICES: list[dict[str, Any]] = [{
    "index": 0,
    "message": {"role": "assistant", "content": ANSWER},
    "finish_reason": "stop",
    "logprobs": None,
}]
_COMPLETION_CHOICES: list[dict[str, Any]] = [
    {"index": 0, "text": ANSWER, "finish_reason": "stop", "logprobs": None},
]


def estimate_tokens(text: str) -> int:
    """About four characters per token for English under a BPE tokenizer; at least one."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def chat_prompt_tokens(messages: list[Any]) -> int:
    total = _TOKENS_PER_REPLY
    for m in messages:
        if type(m) is dict:
            content = m.get("content")
            text = content if type(content) is str else _content_text(content)
            # estimate_tokens inlined (this runs for every message): (len + 3) // 4 is 0 only for "".
            total += _TOKENS_PER_MESSAGE + (len(text) + 3) // 4
    return total


class FixedAnswerEngine(Engine):
    kind = "test"
    __test__ = False  # not a pytest test class

    def __init__(self, model: str, **options: Any) -> None:
        options.setdefault("batch_size", 512)
        options.setdefault("max_concurrency", 4096)
        super().__init__(model, **options)
        self._ids = itertools.count()
        self._prefix = os.urandom(4).hex()

    @classmethod
    def default_endpoints(cls) -> frozenset[str]:
        return frozenset({CHAT_COMPLETIONS, CHAT_DS_TEST, COMPLETIONS, RESPONSES})

    def _answer(self, request: EngineRequest, created: int) -> EngineResult:
        n = next(self._ids)
        suffix = self._prefix + hex(n)[2:].zfill(8)  # == f"{prefix}{n:08x}", at half the cost
        body = request.body
        if request.endpoint == COMPLETIONS:
            prompt = body.get("prompt")
            text = prompt if isinstance(prompt, str) else " ".join(str(p) for p in prompt or ())
            prompt_tokens = estimate_tokens(text)
            return EngineResult(200, {
                "id": "cmpl-" + suffix,
                "object": "text_completion",
                "created": created,
                "model": self.model,
                "choices": _COMPLETION_CHOICES,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ANSWER_TOKENS,
                          "total_tokens": prompt_tokens + ANSWER_TOKENS},
            }, "req_" + suffix)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            # A Responses body has no messages: tested here, off the chat path, which stays one dict lookup.
            if request.endpoint == RESPONSES:
                return self._response(request, created, suffix)
            return bad_request(f"req_{suffix}", "messages must be a non-empty array", param="messages")
        prompt_tokens = chat_prompt_tokens(messages)
        return EngineResult(200, {
            "id": "chatcmpl-" + suffix,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "choices": _CHAT_CHOICES,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ANSWER_TOKENS,
                      "total_tokens": prompt_tokens + ANSWER_TOKENS},
        }, "req_" + suffix)

    def _response(self, request: EngineRequest, created: int, suffix: str) -> EngineResult:
        """The chat path's answer as a Response object, the prompt counted as chat counts it."""
        parsed = parse_responses(request.body, "req_" + suffix)
        if isinstance(parsed, EngineResult):
            return parsed
        return EngineResult(200, response_object(
            parsed, model=self.model, created_at=created, text=ANSWER, finish_reason="stop",
            input_tokens=chat_prompt_tokens(parsed.messages), output_tokens=ANSWER_TOKENS,
            response_id="resp_" + suffix), "req_" + suffix)

    async def infer(self, request: EngineRequest) -> EngineResult:
        return self._answer(request, int(time.time()))

    async def infer_many(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        # One loop, no task per request: this engine is the I/O floor of the pipeline.
        created = int(time.time())
        return [self._answer(r, created) for r in requests]
