"""`offhours keys create|list|revoke` — API keys and the projects they belong to."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from services.settings import get_settings

if TYPE_CHECKING:
    from services.http.auth import ApiKeyStore

T = TypeVar("T")

HELP = "Create, list or revoke API keys (each key belongs to one project)."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keys",
        help=HELP,
        description=(
            "API keys authenticate clients (Authorization: Bearer <key>) and decide which project's "
            "files and batches they see. Keys are stored only as SHA-256 hashes in MongoDB."
        ),
    )
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--project", required=True, help="the project the key belongs to")
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="list keys by hint and project (never the keys themselves)")
    listing.add_argument("--project", default=None, help="only this project's keys")
    listing.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke a key (read from stdin, so it stays out of shell history)")
    revoke.set_defaults(func=_revoke)


async def _with_store(action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    from services.http.auth import ApiKeyStore
    from services.stores.mongo import close_database, open_database

    db = open_database(get_settings())
    try:
        store = ApiKeyStore(db)
        await store.ensure_indexes()
        return await action(store)
    finally:
        await close_database(db)


def _create(args: argparse.Namespace) -> int:
    from services.http.auth import validate_project_name

    try:
        validate_project_name(args.project)
    except ValueError as exc:
        print(f"offhours keys create: {exc}", file=sys.stderr)
        return 2
    key, record = asyncio.run(_with_store(lambda store: store.create(args.project)))
    print(key)
    print(f"# project {record.project}; store this key now, it cannot be shown again", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    records = asyncio.run(_with_store(lambda store: store.list(args.project)))
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))
        print(f"{r.hint:<20} {r.project:<32} {created} UTC")
    if not records:
        print("no keys", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("offhours keys revoke: give the key on stdin", file=sys.stderr)
        return 2
    revoked = asyncio.run(_with_store(lambda store: store.revoke(key)))
    print("revoked" if revoked else "no such key")
    return 0 if revoked else 1
