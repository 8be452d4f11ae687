"""`offhours projects set|list|show` — a project's share, priority and quotas (docs/scheduling.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from services.settings import get_settings

if TYPE_CHECKING:
    from services.state.projects import ProjectSettings, ProjectStore

T = TypeVar("T")

HELP = "Set or show a project's weight, highest priority and quotas."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "projects",
        help=HELP,
        description=(
            "A project's weight is its share of a model when several projects have work queued (deficit "
            "round robin by lines); max-priority is the highest metadata.priority its batches may ask for; "
            "max-enqueued caps its unfinished requests per model and max-running its batches not yet ended. "
            "Unset values take the defaults (OFFHOURS_PROJECT_DEFAULT_*). Services read changes within "
            "OFFHOURS_PROJECT_SETTINGS_TTL_SECONDS, without a restart."
        ),
    )
    sub = parser.add_subparsers(dest="projects_command", metavar="ACTION")
    sub.required = True

    setter = sub.add_parser("set", help="set some of a project's settings (the others are left as they are)")
    setter.add_argument("project", metavar="NAME")
    setter.add_argument("--weight", type=float, default=None, help="share of a model against other projects (> 0)")
    setter.add_argument("--max-priority", choices=("high", "normal", "low"), default=None,
                        help="highest metadata.priority the project's batches may ask for")
    setter.add_argument("--max-enqueued", type=int, default=None,
                        help="unfinished requests per model (0 = no limit)")
    setter.add_argument("--max-running", type=int, default=None, help="batches not yet ended")
    setter.add_argument("--reset", action="store_true", help="drop every setting of the project first (defaults)")
    setter.set_defaults(func=_set)

    listing = sub.add_parser("list", help="the projects with settings of their own")
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="a project's effective settings (its own or the defaults)")
    show.add_argument("project", metavar="NAME")
    show.set_defaults(func=_show)


async def _with_store(action: Callable[[ProjectStore], Awaitable[T]]) -> T:
    from services.state.projects import ProjectStore
    from services.stores.mongo import close_database, open_database

    settings = get_settings()
    db = open_database(settings)
    try:
        return await action(ProjectStore(db, settings))
    finally:
        await close_database(db)


def _line(p: ProjectSettings) -> str:
    def mark(name: str, value: object) -> str:
        return f"{value}" if name in p.custom else f"{value} (default)"

    enqueued = "no limit" if p.max_enqueued <= 0 else p.max_enqueued
    return (f"{p.project}: weight {mark('weight', f'{p.weight:g}')}, max-priority {mark('max_priority', p.max_priority)}, "
            f"max-enqueued {mark('max_enqueued', enqueued)}, max-running {mark('max_running', p.max_running)}")


def _checked(project: str) -> str | None:
    from services.http.auth import validate_project_name

    try:
        validate_project_name(project)
    except ValueError as exc:
        print(f"offhours projects: {exc}", file=sys.stderr)
        return None
    return project


def _set(args: argparse.Namespace) -> int:
    if _checked(args.project) is None:
        return 2
    fields = {"weight": args.weight, "max_priority": args.max_priority, "max_enqueued": args.max_enqueued,
              "max_running": args.max_running}
    if not args.reset and all(v is None for v in fields.values()):
        print("offhours projects set: give at least one of --weight, --max-priority, --max-enqueued, "
              "--max-running (or --reset)", file=sys.stderr)
        return 2

    async def apply(store: ProjectStore) -> ProjectSettings:
        if args.reset:
            await store.reset(args.project)
        return await store.set(args.project, **fields)

    try:
        result = asyncio.run(_with_store(apply))
    except ValueError as exc:
        print(f"offhours projects set: {exc}", file=sys.stderr)
        return 2
    print(_line(result))
    return 0


def _list(args: argparse.Namespace) -> int:
    records = asyncio.run(_with_store(lambda store: store.list()))
    for r in records:
        print(_line(r))
    if not records:
        print("no project has settings of its own; every project uses the defaults", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    if _checked(args.project) is None:
        return 2
    print(_line(asyncio.run(_with_store(lambda store: store.get(args.project, fresh=True)))))
    return 0
