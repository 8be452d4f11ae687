"""`offhours api` — serve the public HTTP API (files, and batches once mounted) on one port."""

from __future__ import annotations

import argparse

from services.settings import get_settings

HELP = "Serve the OpenAI-compatible HTTP API (Files, Batches) on one port."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "api",
        help=HELP,
        description=(
            "Serve /v1/files (and the other mounted APIs), /healthz, /metrics and /openapi.json. "
            "MongoDB and S3 come from the settings (MONGODB_URI, S3_ENDPOINT_URL, ...); clients "
            "authenticate with keys from `offhours keys create`."
        ),
    )
    parser.add_argument("--host", default=None, help="address to bind (default: settings.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to bind (default: settings.port, 8000)")
    parser.add_argument(
        "--only",
        default=None,
        metavar="API[,API]",
        help="serve only these APIs (files, batches, webhooks, console), e.g. to run them as separate processes",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from services.api.app import MOUNTERS, create_api_app, mounters_for
    from services.http.logging_setup import configure_logging
    from services.http.service import serve

    mounters = MOUNTERS
    if args.only is not None:
        try:
            mounters = mounters_for(name.strip() for name in args.only.split(",") if name.strip())
        except ValueError as exc:
            raise SystemExit(f"offhours api: {exc}") from None
    settings = get_settings()
    configure_logging(settings)
    serve(create_api_app(settings, mounters), host=args.host or settings.host, port=args.port or settings.port)
    return 0
