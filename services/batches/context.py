"""What the Batches API handlers share, under one app key: stores, the events publisher, model rules."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from schemas.inference import CHAT_DS_TEST
from services.inference.registry import load_registry
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.files import FileStore
from services.state.outbox import EventPublisher
from services.state.projects import ProjectStore
from services.stores.s3 import ObjectStore


@dataclass(frozen=True)
class LimitedModels:
    """The models that get the test-model limits (registry `test_limits = true`), and the model
    that serves the test endpoint `/v1/chat/ds-test` when exactly one does."""

    names: frozenset[str]
    ds_test_model: str | None

    @classmethod
    def from_registry(cls, settings: Settings) -> LimitedModels:
        specs = load_registry(settings.models_file)
        serving = [s.name for s in specs.values() if s.endpoints and CHAT_DS_TEST in s.endpoints]
        return cls(
            names=frozenset(s.name for s in specs.values() if s.test_limits),
            ds_test_model=serving[0] if len(serving) == 1 else None,
        )


@dataclass(frozen=True)
class BatchesContext:
    settings: Settings
    store: BatchStore
    files: FileStore
    objects: ObjectStore
    publisher: EventPublisher
    limited_models: LimitedModels
    projects: ProjectStore  # per-project limits and quotas, set by the operator (offhours projects)


BATCHES_KEY = web.AppKey("batches", BatchesContext)
