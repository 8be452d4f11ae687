"""The models tests run: names of the real CPU models, and registry files with test-sized chunks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

from services.inference.registry import DEFAULT_MODELS_FILE
from tests.support.lines import CHAT

CHAT_MODEL = "smollm2-135m-instruct"  # llama.cpp
EMBEDDINGS_MODEL = "all-minilm-l6-v2"  # sentence-transformers
GATED = "gated-model"  # the `upstream` engine against tests/support/upstream.py's GatedUpstream


def write_models_file(path: Path, upstream_url: str | None, **chunk_lines: int) -> Path:
    """The default registry plus `gated-model` (pointing at `upstream_url`), with chunk sizes for tests
    (`null_model=1000`: underscores stand for the hyphens of the model name)."""
    with open(DEFAULT_MODELS_FILE, "rb") as f:
        registry = tomllib.load(f)
    models = registry["models"]
    if upstream_url is not None:
        models[GATED] = {
            "engine": "upstream", "base_url": upstream_url, "endpoints": [CHAT], "max_concurrency": 4,
            "max_retries": 0, "chunk_lines": 2, "description": "test upstream the test releases request by request",
        }
    for name, lines in chunk_lines.items():
        models[name.replace("_", "-")]["chunk_lines"] = lines
    path.write_text(tomli_w.dumps(registry))
    return path
