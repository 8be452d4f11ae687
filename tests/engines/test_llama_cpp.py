"""The llama-cpp engine on the real SmolLM2-135M model.

Generated text changes between llama.cpp builds, so these tests assert structure, token
accounting, finish reasons and parameter handling — and compare the engine with itself
(same seed -> same text; a stop sequence cuts a known output) rather than with fixed strings.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from schemas.inference import ChatCompletion, Completion
from services.inference.engines.base import EngineRequest, EngineResult
from services.inference.engines.llama_cpp import LlamaCppEngine
from services.inference.registry import RegistryError
from tests.support.models import CHAT_MODEL

pytestmark = pytest.mark.slow  # a real model

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(content: str = "Name a colour.", **params: Any) -> EngineRequest:
    return EngineRequest(CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}],
                                **params})


def completion(prompt: Any = "The sky is", **params: Any) -> EngineRequest:
    return EngineRequest(COMPLETIONS, {"model": CHAT_MODEL, "prompt": prompt, **params})


def assert_usage_adds_up(body: dict[str, Any]) -> None:
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_completion_shape_and_length_finish(llama_engine: LlamaCppEngine) -> None:
    result = await llama_engine.infer(chat(max_tokens=4, temperature=0))
    assert result.status_code == 200
    assert result.request_id.startswith("req_")
    body = ChatCompletion.model_validate(result.body)
    assert body.id.startswith("chatcmpl-")
    assert body.model == CHAT_MODEL
    assert len(body.choices) == 1
    choice = body.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    # A 135M chat model does not finish a sentence in 4 tokens: it is cut by max_tokens.
    assert choice.finish_reason == "length"
    assert body.usage.completion_tokens == 4
    assert_usage_adds_up(result.body)


async def test_max_completion_tokens_wins_over_max_tokens(llama_engine: LlamaCppEngine) -> None:
    result = await llama_engine.infer(chat(max_tokens=9, max_completion_tokens=3, temperature=0))
    assert result.body["usage"]["completion_tokens"] == 3


async def test_n_choices_sum_completion_tokens_and_count_the_prompt_once(llama_engine: LlamaCppEngine) -> None:
    one = await llama_engine.infer(chat(max_tokens=5, seed=1))
    three = await llama_engine.infer(chat(max_tokens=5, n=3, seed=1))
    assert three.status_code == 200
    choices = three.body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert three.body["usage"]["prompt_tokens"] == one.body["usage"]["prompt_tokens"]
    assert 3 <= three.body["usage"]["completion_tokens"] <= 15
    lengths_hit = sum(c["finish_reason"] == "length" for c in choices)
    # Every choice that ran to max_tokens contributed exactly 5 tokens.
    assert three.body["usage"]["completion_tokens"] >= 5 * lengths_hit
    assert_usage_adds_up(three.body)


async def test_same_seed_same_text_and_choices_get_different_seeds(llama_engine: LlamaCppEngine) -> None:
    params = {"max_tokens": 12, "temperature": 1.0, "seed": 1234}
    a = await llama_engine.infer(chat("Write a word.", **params))
    b = await llama_engine.infer(chat("Write a word.", **params))
    assert a.body["choices"][0]["message"]["content"] == b.body["choices"][0]["message"]["content"]
    # Choice i is sampled with seed + i, so choice 1 of seed s is choice 0 of seed s + 1.
    pair = await llama_engine.infer(chat("Write a word.", n=2, **params))
    shifted = await llama_engine.infer(chat("Write a word.", **{**params, "seed": 1235}))
    assert pair.body["choices"][0]["message"]["content"] == a.body["choices"][0]["message"]["content"]
    assert pair.body["choices"][1]["message"]["content"] == shifted.body["choices"][0]["message"]["content"]


async def test_stop_sequence_cuts_the_text_and_finishes_with_stop(llama_engine: LlamaCppEngine) -> None:
    params = {"max_tokens": 16, "temperature": 0}
    full = (await llama_engine.infer(chat("Count from one to ten.", **params))).body["choices"][0]["message"]["content"]
    # Stop at the second half of the greedy output: same prompt, same greedy text, cut earlier.
    stop = full[len(full) // 2:][:3]
    assert stop.strip(), full
    cut = (await llama_engine.infer(chat("Count from one to ten.", stop=[stop], **params))).body
    text = cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert stop not in text
    assert full.startswith(text)
    assert cut["usage"]["completion_tokens"] < 16


async def test_logit_bias_forces_a_token(llama_engine: LlamaCppEngine) -> None:
    assert llama_engine._llama is not None
    (token,) = llama_engine._llama.tokenize(b"!", add_bos=False, special=False)
    result = await llama_engine.infer(completion(max_tokens=4, temperature=0, logit_bias={str(token): 100}))
    assert result.body["choices"][0]["text"] == "!!!!"


async def test_json_object_response_format_constrains_output(llama_engine: LlamaCppEngine) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    result = await llama_engine.infer(chat(
        "Reply in JSON with a colour.", max_tokens=24, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}))
    assert result.status_code == 200
    content = result.body["choices"][0]["message"]["content"]
    assert content.lstrip().startswith('{')
    assert '"colour"' in content
    if result.body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content)["colour"], str)


async def test_completions_several_prompts_and_n(llama_engine: LlamaCppEngine) -> None:
    result = await llama_engine.infer(completion(["Once upon a time", "The capital of France is"], n=2,
                                                  max_tokens=3, temperature=0.7, seed=7))
    assert result.status_code == 200
    body = Completion.model_validate(result.body)
    assert body.id.startswith("cmpl-")
    assert [c.index for c in body.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason in ("length", "stop") for c in body.choices)
    assert body.usage.completion_tokens <= 12
    singles = [await llama_engine.infer(completion(p, max_tokens=1))
               for p in ("Once upon a time", "The capital of France is")]
    assert body.usage.prompt_tokens == sum(s.body["usage"]["prompt_tokens"] for s in singles)
    assert_usage_adds_up(result.body)


async def test_completions_default_to_16_tokens_and_echo(llama_engine: LlamaCppEngine) -> None:
    result = await llama_engine.infer(completion("A list of fruits: apple,", temperature=0, echo=True))
    choice = result.body["choices"][0]
    assert choice["text"].startswith("A list of fruits: apple,")
    assert result.body["usage"]["completion_tokens"] <= 16
    if choice["finish_reason"] == "length":
        assert result.body["usage"]["completion_tokens"] == 16
    nothing = await llama_engine.infer(completion("Echo me", max_tokens=0, echo=True))
    assert nothing.body["choices"][0]["text"] == "Echo me"
    assert nothing.body["usage"]["completion_tokens"] == 0


async def test_token_array_prompts(llama_engine: LlamaCppEngine) -> None:
    assert llama_engine._llama is not None
    tokens = llama_engine._llama.tokenize(b"Hello there", add_bos=False, special=False)
    single = await llama_engine.infer(completion(tokens, max_tokens=2, temperature=0))
    assert single.body["usage"]["prompt_tokens"] == len(tokens)
    several = await llama_engine.infer(completion([tokens, tokens[:1]], max_tokens=2, temperature=0))
    assert len(several.body["choices"]) == 2
    assert several.body["usage"]["prompt_tokens"] == len(tokens) + 1


async def test_generation_leaves_the_event_loop_free(llama_engine: LlamaCppEngine) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await llama_engine.infer(chat(max_tokens=24, temperature=0))
    finally:
        done.set()
        await task
    assert ticks >= 2  # the loop ran while llama.cpp generated on its own thread


LONG = "word " * 2100  # over the 2048-token window of the registry entry


@pytest.mark.parametrize(
    ("request_", "param", "code"),
    [
        (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "unsupported_parameter"),
        (chat(logprobs=True), "logprobs", "unsupported_parameter"),
        (chat(top_logprobs=2), "top_logprobs", "unsupported_parameter"),
        (chat(modalities=["text", "audio"]), "modalities", "unsupported_parameter"),
        (chat(frobnicate=1), "frobnicate", "unsupported_parameter"),
        (chat(response_format={"type": "xml"}), "response_format.type", "invalid_value"),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
         "response_format.json_schema.schema", "invalid_value"),
        (chat(temperature=2.5), "temperature", "invalid_value"),
        (chat(n=0), "n", "invalid_value"),
        (chat(logit_bias={"not-a-token": 5}), "logit_bias", "invalid_value"),
        (chat(logit_bias={"5": 500}), "logit_bias", "invalid_value"),
        (EngineRequest(CHAT, {"model": CHAT_MODEL}), "messages", "missing_required_parameter"),
        (EngineRequest(CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
         "messages[0].content[0]", "unsupported_content"),
        (EngineRequest(CHAT, {"model": CHAT_MODEL, "messages": [{"role": "tool", "content": "42",
                                                                  "tool_call_id": "c1"}]}),
         "messages[0].role", "unsupported_parameter"),
        (chat(LONG), "messages", "context_length_exceeded"),
        (chat(max_tokens=2040), "messages", "context_length_exceeded"),
        (completion(LONG), "prompt", "context_length_exceeded"),
        (completion(suffix="end"), "suffix", "unsupported_parameter"),
        (completion(logprobs=2), "logprobs", "unsupported_parameter"),
        (completion(best_of=3), "best_of", "unsupported_parameter"),
        (completion({"text": "x"}), "prompt", "invalid_value"),
        (completion([1, 2, 10**9]), "prompt", "invalid_value"),
        (completion(max_tokens=-1), "max_tokens", "invalid_value"),
        (EngineRequest("/v1/embeddings", {"model": CHAT_MODEL, "input": "x"}), "url", "unsupported_endpoint"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_requests_get_a_located_400(llama_engine: LlamaCppEngine, request_: EngineRequest,
                                              param: str, code: str) -> None:
    result = await llama_engine.infer(request_)
    assert isinstance(result, EngineResult)
    assert result.status_code == 400, result.body
    err = result.body["error"]
    assert (err["param"], err["code"]) == (param, code)
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    assert set(result.body) == {"error"}


async def test_context_error_reports_the_token_arithmetic(llama_engine: LlamaCppEngine) -> None:
    result = await llama_engine.infer(chat("hi", max_tokens=2040))
    message = result.body["error"]["message"]
    assert "maximum context length is 2048 tokens" in message
    assert "2040 in the completion" in message


async def test_ignored_fields_and_developer_role_are_accepted(llama_engine: LlamaCppEngine) -> None:
    result = await llama_engine.infer(EngineRequest(CHAT, {
        "model": CHAT_MODEL, "max_tokens": 2, "user": "u-1", "metadata": {"k": "v"}, "store": False,
        "tools": None, "response_format": {"type": "text"}, "logprobs": False,
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}]}))
    assert result.status_code == 200, result.body


def test_engine_options_are_checked_by_name_and_type() -> None:
    with pytest.raises(RegistryError, match=r"model 'x'.*n_thread"):
        LlamaCppEngine("x", n_thread=2)
    with pytest.raises(RegistryError, match="n_ctx"):
        LlamaCppEngine("x", n_ctx="big")
