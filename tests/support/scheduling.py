"""Helpers for scheduling tests: batches of a project with metadata, and the order of admissions
read back from the chunk ledger (`admitted_at`), so tests assert on order, never on times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.state.batches import new_batch_document
from services.state.ledger import CHUNKS_COLLECTION
from tests.support.lines import CHAT, chat_line
from tests.support.stack import Stack
from tests.support.wait import wait_for


async def create_batch(stack: Stack, lines: int, *, project: str, model: str, prefix: str,
                       metadata: dict[str, str] | None = None, window_s: float = 86400.0) -> str:
    """Upload `lines` chat lines (`<prefix>-<i>`) of `project` and create a batch of them, the way the
    batches service does (document with its outbox entry, then the outbox published)."""
    file_id = await stack.upload([chat_line(f"{prefix}-{i}", model=model) for i in range(lines)], project=project)
    record = await stack.files.get(project, file_id)
    assert record is not None
    doc = new_batch_document(project=project, endpoint=CHAT, input_file_id=file_id,
                             input={"kind": "file", "key": record.key, "bytes": record.bytes},
                             completion_window="24h", expires_in_s=window_s, metadata=metadata, model=model)
    await stack.batches.insert(doc)
    await stack.publisher.publish_outbox(doc)
    return str(doc["_id"])


async def ledger_docs(stack: Stack, batch_ids: Sequence[str]) -> list[dict[str, Any]]:
    return await stack.db[CHUNKS_COLLECTION].find({"batch_id": {"$in": list(batch_ids)}}).to_list(None)


async def admission_order(stack: Stack, batch_ids: Sequence[str], after: float = 0.0) -> list[str]:
    """The batch id of every chunk admitted after `after` (epoch seconds), in admission order."""
    docs = [d for d in await ledger_docs(stack, batch_ids) if d.get("admitted") and d["admitted_at"] > after]
    return [d["batch_id"] for d in sorted(docs, key=lambda d: (d["admitted_at"], d["_id"]))]


async def wait_queued(stack: Stack, batch_id: str, chunks: int) -> None:
    """Until the batch's `chunks` chunks are in the ledger (validated; admitted or waiting)."""
    await wait_for(lambda: _count(stack, batch_id, chunks), 60, what=f"{chunks} ledger chunks of {batch_id}")


async def _count(stack: Stack, batch_id: str, chunks: int) -> bool:
    return await stack.ledger.count(batch_id) >= chunks


async def wait_admitted(stack: Stack, batch_ids: Sequence[str], n: int) -> list[dict[str, Any]]:
    """Until at least `n` chunks of these batches were admitted; returns their ledger documents."""
    seen: list[dict[str, Any]] = []
    every: list[dict[str, Any]] = []

    async def enough() -> bool:
        every[:] = await ledger_docs(stack, batch_ids)
        seen[:] = [d for d in every if d.get("admitted")]
        return len(seen) >= n

    await wait_for(enough, 60, what=lambda: f"{n} admitted chunks (saw {len(seen)}: " + ", ".join(
        f"{d['_id'][-8:]}={d['status']}" for d in sorted(seen, key=lambda d: d["admitted_at"])) + ")")
    return seen
