"""`offhours` — one command, one subcommand per module.

Each subcommand module exposes `register(subparsers)`; adding a command is adding its
module to COMMANDS, nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Imported lazily so `offhours --help` does not pay for torch or llama.cpp.
COMMANDS: tuple[str, ...] = (
    "services.cli.dev_command",
    "services.cli.run_batch_command",
    "services.cli.infra_command",
    "services.cli.models_command",
    "services.cli.api_command",
    "services.cli.keys_command",
    "services.cli.projects_command",
    "services.cli.dispatcher_command",
    "services.cli.worker_command",
    "services.cli.notifier_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offhours",
        description="Self-hosted, OpenAI-compatible Batch inference: services and offline runner.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
