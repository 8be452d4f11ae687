"""The model registry: one TOML file maps a served model name to an engine and its options.

Engine classes are imported only when a model is instantiated, so listing models or running
the test model never loads torch or llama.cpp.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.worker.engines.base import Engine

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "models.toml"

# engine kind -> "module:Class"
ENGINE_KINDS: dict[str, str] = {
    "test": "services.worker.engines.test_model:TestEngine",
}

_RESERVED = {"engine", "endpoints", "description", "test_limits"}


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    engine: str
    endpoints: tuple[str, ...] | None = None
    description: str = ""
    test_limits: bool = False
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
            options={k: v for k, v in table.items() if k not in _RESERVED},
        )
    return specs


def get_model(name: str, path: Path | None = None) -> ModelSpec:
    specs = load_registry(path)
    try:
        return specs[name]
    except KeyError:
        raise RegistryError(f"model {name!r} is not in the registry (known: {', '.join(sorted(specs))})") from None
