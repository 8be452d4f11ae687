"""The embeddings engine on the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from schemas.inference import CreateEmbeddingResponse
from services.inference.engines.base import EngineRequest
from services.inference.engines.embeddings import EmbeddingsEngine
from tests.support.models import EMBEDDINGS_MODEL

pytestmark = pytest.mark.slow  # a real model

EMBEDDINGS = "/v1/embeddings"


def embed(input_: Any, **params: Any) -> EngineRequest:
    return EngineRequest(EMBEDDINGS, {"model": EMBEDDINGS_MODEL, "input": input_, **params})


def vectors(body: dict[str, Any]) -> np.ndarray:
    rows = []
    for item in body["data"]:
        e = item["embedding"]
        rows.append(np.frombuffer(base64.b64decode(e), dtype="<f4") if isinstance(e, str) else np.array(e))
    return np.stack(rows)


async def test_single_string_gives_one_normalised_384_vector(embeddings_engine: EmbeddingsEngine) -> None:
    result = await embeddings_engine.infer(embed("hello world"))
    assert result.status_code == 200
    body = CreateEmbeddingResponse.model_validate(result.body)
    assert body.model == EMBEDDINGS_MODEL
    assert [d.index for d in body.data] == [0]
    v = vectors(result.body)
    assert v.shape == (1, 384)
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5)
    # BERT's uncased WordPiece: "hello", "world" — the [CLS]/[SEP] the model adds are not billed.
    assert result.body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


async def test_list_input_keeps_order_and_matches_single_inputs(embeddings_engine: EmbeddingsEngine) -> None:
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A cat is sitting on a mat."]
    batch = await embeddings_engine.infer(embed(texts))
    v = vectors(batch.body)
    assert [d["index"] for d in batch.body["data"]] == [0, 1, 2]
    singles = [vectors((await embeddings_engine.infer(embed(t))).body)[0] for t in texts]
    np.testing.assert_allclose(v, np.stack(singles), atol=1e-4)
    # The model means something: the two cat sentences are closer than cat and stocks.
    assert float(v[0] @ v[2]) > float(v[0] @ v[1]) + 0.3
    tokens = sum([(await embeddings_engine.infer(embed(t))).body["usage"]["prompt_tokens"] for t in texts])
    assert batch.body["usage"]["prompt_tokens"] == tokens


async def test_base64_is_little_endian_float32_of_the_same_vector(embeddings_engine: EmbeddingsEngine) -> None:
    as_float = await embeddings_engine.infer(embed(["alpha", "beta"], encoding_format="float"))
    as_b64 = await embeddings_engine.infer(embed(["alpha", "beta"], encoding_format="base64"))
    raw = as_b64.body["data"][0]["embedding"]
    assert isinstance(raw, str) and len(base64.b64decode(raw)) == 384 * 4
    np.testing.assert_allclose(vectors(as_b64.body), vectors(as_float.body), atol=1e-6)


async def test_dimensions_equal_to_the_model_size_is_accepted(embeddings_engine: EmbeddingsEngine) -> None:
    result = await embeddings_engine.infer(embed("x", dimensions=384))
    assert result.status_code == 200


async def test_infer_many_batches_requests_and_keeps_bad_ones_in_place(embeddings_engine: EmbeddingsEngine) -> None:
    requests = [embed("first"), embed([1, 2, 3]), embed(["second", "third"], encoding_format="base64"),
                embed(""), embed("fourth")]
    results = await embeddings_engine.infer_many(requests)
    assert [r.status_code for r in results] == [200, 400, 200, 400, 200]
    assert len(results[2].body["data"]) == 2
    assert len({r.request_id for r in results}) == 5
    one = vectors((await embeddings_engine.infer(embed("fourth"))).body)
    np.testing.assert_allclose(vectors(results[4].body), one, atol=1e-4)


LONG = "token " * 300  # the model's window is 256 word pieces


@pytest.mark.parametrize(
    ("request_", "param", "code"),
    [
        (embed("x", dimensions=128), "dimensions", "unsupported_value"),
        (embed([101, 2023, 102]), "input", "unsupported_value"),
        (embed([[101, 2023]]), "input", "unsupported_value"),
        (embed(""), "input", "invalid_value"),
        (embed(["ok", ""]), "input[1]", "invalid_value"),
        (embed(["x"] * 2049), "input", "invalid_value"),
        (embed(LONG), "input", "context_length_exceeded"),
        (embed(["short", LONG]), "input[1]", "context_length_exceeded"),
        (embed("x", encoding_format="int8"), "encoding_format", "invalid_value"),
        (embed("x", truncate=True), "truncate", "unsupported_parameter"),
        (EngineRequest("/v1/chat/completions", {"model": EMBEDDINGS_MODEL, "messages": []}), "url",
         "unsupported_endpoint"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_requests_get_a_located_400(embeddings_engine: EmbeddingsEngine, request_: EngineRequest,
                                              param: str, code: str) -> None:
    result = await embeddings_engine.infer(request_)
    assert result.status_code == 400, result.body
    assert (result.body["error"]["param"], result.body["error"]["code"]) == (param, code)


async def test_truncate_option_embeds_long_inputs_and_bills_the_window() -> None:
    engine = EmbeddingsEngine(EMBEDDINGS_MODEL, truncate=True)
    async with engine:
        result = await engine.infer(embed(LONG))
    assert result.status_code == 200
    assert result.body["usage"]["prompt_tokens"] == engine.max_seq_length - 2
