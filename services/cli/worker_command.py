"""`offhours worker --model NAME` — runs one model's engine on its work topic."""

from __future__ import annotations

import argparse
import asyncio

from services.settings import get_settings

HELP = "Run an inference worker for one model of the registry (services/inference/models.toml)."

DESCRIPTION = """\
Loads the model's engine, joins the consumer group of {prefix}.work.<model>, and runs the chunks
the dispatcher publishes: reads each chunk's byte range from S3, runs its lines through the
engine, writes the output and error parts, reports on {prefix}.work.results, then commits.
Start more workers for the same model to share the load (up to the topic's partition count,
settings.work_topic_partitions). SIGTERM: no new chunks; the chunk in hand gets
OFFHOURS_WORKER_SHUTDOWN_GRACE_SECONDS to finish, else it is left to be redelivered.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="the model's name in the registry, e.g. null-model")
    parser.add_argument(
        "--concurrency", type=int, default=None,
        help="requests in flight (default: settings.worker_concurrency, else the engine's own)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="port of /healthz and /metrics (default: settings.worker_metrics_port; 0 = any free port)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.http.logging_setup import configure_logging
    from services.inference.registry import RegistryError
    from services.worker.main import run_worker

    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit("offhours worker: --concurrency must be at least 1")
    settings = get_settings()
    configure_logging(settings)
    try:
        return asyncio.run(run_worker(settings, args.model, concurrency=args.concurrency,
                                      metrics_port=args.metrics_port))
    except RegistryError as exc:
        raise SystemExit(f"offhours worker: {exc}") from None
