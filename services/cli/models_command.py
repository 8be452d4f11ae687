"""`offhours models` — list the model registry (services/inference/models.toml or OFFHOURS_MODELS_FILE)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import orjson

HELP = "List the models this deployment serves: name, engine, endpoints, description."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("models", help=HELP, description=HELP)
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    parser.add_argument("--models-file", type=Path, default=None,
                        help="registry file to read (default: OFFHOURS_MODELS_FILE or the built-in models.toml)")
    parser.set_defaults(func=run)


def _rows(models_file: Path | None) -> list[dict[str, Any]]:
    # Lazy: listing must not import torch or llama.cpp, and the registry module does not.
    from services.inference.registry import ENGINE_KINDS, load_registry

    rows = []
    for spec in load_registry(models_file).values():
        endpoints = list(spec.endpoints) if spec.endpoints is not None else None
        if endpoints is None and spec.engine in ENGINE_KINDS:
            module, _, cls = ENGINE_KINDS[spec.engine].partition(":")
            # Default endpoints live on the engine class; engine modules import their heavy
            # libraries (torch, llama.cpp) only when a model starts, so this stays cheap.
            endpoints = sorted(getattr(importlib.import_module(module), cls).default_endpoints())
        rows.append({"name": spec.name, "engine": spec.engine, "endpoints": endpoints or [],
                     "description": spec.description})
    return rows


def run(args: argparse.Namespace) -> int:
    from services.inference.registry import RegistryError
    from services.settings import get_settings

    try:
        rows = _rows(args.models_file or get_settings().models_file)
    except RegistryError as exc:
        print(f"offhours models: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    headers = ("NAME", "ENGINE", "ENDPOINTS", "DESCRIPTION")
    table = [(r["name"], r["engine"], ",".join(r["endpoints"]), r["description"]) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers[:3])]
    for row in (headers, *table):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    return 0
