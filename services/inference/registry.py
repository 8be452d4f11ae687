"""The model registry: one TOML file maps a served model name to an engine and its options.

Engine classes are imported only when a model is instantiated, so listing models or running
the test model never loads torch or llama.cpp.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from services.inference.engines.base import Engine

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent / "models.toml"

# engine kind -> "module:Class"
ENGINE_KINDS: dict[str, str] = {
    "test": "services.inference.engines.fixed_answer:FixedAnswerEngine",
    "llama-cpp": "services.inference.engines.llama_cpp:LlamaCppEngine",
    "embeddings": "services.inference.engines.embeddings:EmbeddingsEngine",
    "upstream": "services.inference.engines.upstream:UpstreamEngine",
}

# chunk_lines: request lines per work chunk, read by the dispatcher (docs/architecture.md), not the engine.
_RESERVED = {"engine", "endpoints", "description", "test_limits", "chunk_lines"}


class RegistryError(ValueError):
    pass


class EngineOptions(BaseModel):
    """Base of each engine's typed options (the non-reserved keys of its models.toml table).

    Unknown keys are an error rather than ignored: a misspelt `n_thread = 2` must not
    silently run with the default.
    """

    model_config = ConfigDict(extra="forbid")

    endpoints: list[str] | None = None
    batch_size: int = 1
    max_concurrency: int = 1

    @classmethod
    def parse(cls, model: str, options: dict[str, Any]) -> Self:
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in exc.errors()
            )
            raise RegistryError(f"model {model!r}: invalid engine options: {problems}") from None

    def engine_kwargs(self) -> dict[str, Any]:
        return {"endpoints": self.endpoints, "batch_size": self.batch_size,
                "max_concurrency": self.max_concurrency}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    engine: str
    endpoints: tuple[str, ...] | None = None
    description: str = ""
    test_limits: bool = False
    chunk_lines: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def create_engine(self, **overrides: Any) -> Engine:
        target = ENGINE_KINDS.get(self.engine)
        if target is None:
            raise RegistryError(f"model {self.name!r}: unknown engine {self.engine!r} (known: {sorted(ENGINE_KINDS)})")
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        options = {**self.options, **overrides}
        if self.endpoints is not None:
            options.setdefault("endpoints", list(self.endpoints))
        return cls(self.name, **options)


def load_registry(path: Path | None = None) -> dict[str, ModelSpec]:
    path = path or DEFAULT_MODELS_FILE
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise RegistryError(f"models file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"models file {path} is not valid TOML: {exc}") from exc
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise RegistryError(f"models file {path} has no [models.NAME] tables")
    specs: dict[str, ModelSpec] = {}
    for name, table in models.items():
        if not isinstance(table, dict) or not isinstance(table.get("engine"), str):
            raise RegistryError(f"model {name!r} in {path} needs an `engine = \"...\"` key")
        endpoints = table.get("endpoints")
        specs[name] = ModelSpec(
            name=name,
            engine=table["engine"],
            endpoints=tuple(endpoints) if endpoints else None,
            description=str(table.get("description", "")),
            test_limits=bool(table.get("test_limits", False)),
            chunk_lines=_chunk_lines(name, table.get("chunk_lines")),
            options={k: v for k, v in table.items() if k not in _RESERVED},
        )
    return specs


def _chunk_lines(model: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RegistryError(f"model {model!r}: chunk_lines must be a positive integer, got {value!r}")
    return value


def get_model(name: str, path: Path | None = None) -> ModelSpec:
    specs = load_registry(path)
    try:
        return specs[name]
    except KeyError:
        raise RegistryError(f"model {name!r} is not in the registry (known: {', '.join(sorted(specs))})") from None
