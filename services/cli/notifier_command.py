"""`offhours notifier` — deliver signed webhooks for batch events (docs/webhooks.md)."""

from __future__ import annotations

import argparse

from services.settings import get_settings

HELP = "Consume batch events and deliver signed webhooks, with durable retries."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "notifier",
        help=HELP,
        description=(
            "Read {prefix}.batch.events in the consumer group {prefix}-notifier and POST each event a "
            "project's webhook endpoints subscribe to (and terminal events to a batch's "
            "metadata.callback_url), signed the Standard Webhooks way. Retries, with backoff and jitter "
            "for OFFHOURS_WEBHOOK_RETRY_HORIZON_SECONDS (24 h), are kept in MongoDB: any number of "
            "notifiers may run, and any may be killed. Serves /healthz and /metrics on "
            "OFFHOURS_NOTIFIER_METRICS_PORT (default 0: any free port, logged at start)."
        ),
    )
    parser.add_argument("--host", default=None, help="address for /healthz and /metrics (default: settings.host)")
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="port of /healthz and /metrics (default: settings.notifier_metrics_port; 0 = any free port, logged)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from services.http.logging_setup import configure_logging
    from services.http.service import serve
    from services.notifier.app import create_notifier_app

    settings = get_settings()
    configure_logging(settings)
    port = settings.notifier_metrics_port if args.metrics_port is None else args.metrics_port
    serve(create_notifier_app(settings), host=args.host or settings.host, port=port)
    return 0
