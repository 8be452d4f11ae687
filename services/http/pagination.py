"""OpenAI cursor paging over a MongoDB collection: `after`, `limit`, `order` -> one page.

Pages are ordered by `_id`. Ids this project mints start with an ObjectId-like time prefix, so
`_id` order is creation order, and a cursor is a plain comparison: an `after` object that was
deleted in the meantime still works (the SDK's auto-paging loop that deletes as it goes keeps
going), and no lookup is needed. `limit + 1` documents are read to learn `has_more`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from schemas.api_params import PageParams

__all__ = ["PageParams", "cursor_query", "fetch_page", "page_body", "sort_order"]


def cursor_query(page: PageParams) -> dict[str, Any]:
    """The `_id` condition for the page after `page.after` in `page.order`."""
    if page.after is None:
        return {}
    return {"_id": {"$gt" if page.order == "asc" else "$lt": page.after}}


def sort_order(page: PageParams) -> list[tuple[str, int]]:
    return [("_id", ASCENDING if page.order == "asc" else DESCENDING)]


def page_body(items: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """The list envelope (`schemas.openai_objects.ListEnvelope`) around already-serialized objects."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


async def fetch_page(
    collection: AsyncCollection[Any],
    query: Mapping[str, Any],
    page: PageParams,
    to_api: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """One page of `query`'s documents, each turned into its API object by `to_api`."""
    cursor = cursor_query(page)
    # Never let the cursor silently replace an `_id` condition of the caller's query.
    full = {"$and": [dict(query), cursor]} if cursor and "_id" in query else {**query, **cursor}
    docs = await collection.find(full).sort(sort_order(page)).limit(page.limit + 1).to_list()
    has_more = len(docs) > page.limit
    return page_body([to_api(d) for d in docs[: page.limit]], has_more=has_more)
