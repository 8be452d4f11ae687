"""Real engines, loaded once per test session (the models are small, but loading is not free)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from services.inference.engines.embeddings import EmbeddingsEngine
from services.inference.engines.llama_cpp import LlamaCppEngine
from services.inference.registry import get_model
from tests.support.models import CHAT_MODEL, EMBEDDINGS_MODEL


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def llama_engine() -> AsyncIterator[LlamaCppEngine]:
    engine = get_model(CHAT_MODEL).create_engine()
    assert isinstance(engine, LlamaCppEngine)
    async with engine:
        yield engine


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embeddings_engine() -> AsyncIterator[EmbeddingsEngine]:
    engine = get_model(EMBEDDINGS_MODEL).create_engine()
    assert isinstance(engine, EmbeddingsEngine)
    async with engine:
        yield engine
