"""`offhours dispatcher` — validates batches, dispatches their chunks, collects results, finalizes."""

from __future__ import annotations

import argparse
import asyncio

from services.settings import get_settings

HELP = "Run the dispatcher: batch events -> validation -> work chunks; results -> output files."

DESCRIPTION = """\
Consumes {prefix}.batch.events and {prefix}.work.results, validates each new batch's input in one
streaming pass, publishes its chunks to {prefix}.work.<model>, counts the workers' results, and
finalizes batches (completed, expired, cancelled) into their output and error files. Any number
of dispatchers may run; every step is idempotent (docs/architecture.md).

Configuration comes from the environment (services/settings.py): KAFKA_BOOTSTRAP_SERVERS,
MONGODB_URI, S3_ENDPOINT_URL, OFFHOURS_TOPIC_PREFIX, OFFHOURS_SWEEP_INTERVAL_SECONDS, ...
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dispatcher", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="port of /healthz and /metrics (default: settings.dispatcher_metrics_port; 0 = any free port, logged)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.dispatcher.main import run_dispatcher
    from services.http.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(settings)
    return asyncio.run(run_dispatcher(settings, metrics_port=args.metrics_port))
