"""The chunk ledger: one MongoDB document per `(batch, chunk)` in `batch_chunks`.

It is what makes at-least-once delivery safe (docs/architecture.md): a chunk leaves `pending`
exactly once, by compare-and-set, and only the attempt that won that CAS is ever read back into
the output files. A redelivered or late result loses the CAS and changes nothing.

    _id: "<batch_id>:<index>"   batch_id, index, start, end, first_line, line_count, model, project
    status: pending -> done | skipped | abandoned
    admitted: False while the chunk waits in the ledger for the scheduler (docs/scheduling.md); set
        True by the compare-and-set that admits it, whose winner alone publishes its work message.
        A document without the field (written before admission existed) counts as admitted.
    admitted_at, published_at: when it was admitted; when its work message was last sent (admission
        and every re-publication). Only admitted chunks can be "lost"; a queued one is just waiting.
    attempt, output_key, error_key, succeeded, failed, input_tokens, output_tokens, worker,
    finished_at (once done)

A batch's documents are deleted once it is terminal (`delete_batch`): a result arriving after
that finds no pending chunk and counts nothing, as for any late result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from schemas.work import WorkResult, chunk_id

CHUNKS_COLLECTION = "batch_chunks"
PENDING = "pending"
FINISHED_STATUSES = ("done", "skipped", "abandoned")
_ID_BATCH = 1000  # chunk ids per `$in` (a republication of a huge batch stays a few small queries)


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """One byte range of the input, as the validation pass cut it."""

    index: int
    start: int
    end: int
    first_line: int
    line_count: int


@dataclass(frozen=True, slots=True)
class Settled:
    """A result that won its chunk's CAS; `seconds` from the chunk's last publication to this result."""

    seconds: float | None


@dataclass(slots=True)
class LedgerSummary:
    chunks: int = 0
    pending: int = 0
    finished: int = 0  # done + skipped + abandoned
    total_lines: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished_lines: int = 0  # lines of skipped/abandoned chunks: they never ran
    input_tokens: int = 0
    output_tokens: int = 0


class ChunkLedger:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._collection: AsyncCollection[Any] = db[CHUNKS_COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._collection.create_indexes([
            IndexModel([("batch_id", ASCENDING), ("index", ASCENDING)]),
            IndexModel([("batch_id", ASCENDING), ("status", ASCENDING)]),
            IndexModel([("model", ASCENDING), ("status", ASCENDING), ("admitted", ASCENDING)]),
        ])

    async def upsert(self, batch_id: str, chunks: Sequence[ChunkPlan], *, model: str | None = None,
                     project: str | None = None, admitted: bool = True) -> None:
        """Create the chunks as `pending`; an existing chunk (a re-run of the same pass) is left as it is.

        `admitted=False`: they wait for the scheduler (`admit`) instead of counting as published now."""
        if not chunks:
            return
        now = time.time()
        stamps: dict[str, Any] = {"admitted": True, "admitted_at": now, "published_at": now} if admitted else {
            "admitted": False}
        ops = [
            UpdateOne(
                {"_id": chunk_id(batch_id, c.index)},
                {"$setOnInsert": {
                    "batch_id": batch_id, "index": c.index, "start": c.start, "end": c.end,
                    "first_line": c.first_line, "line_count": c.line_count, "status": PENDING,
                    "model": model, "project": project, "created_at": now, **stamps,
                }},
                upsert=True,
            )
            for c in chunks
        ]
        await self._collection.bulk_write(ops, ordered=False)

    async def get(self, batch_id: str, index: int) -> dict[str, Any] | None:
        return await self._collection.find_one({"_id": chunk_id(batch_id, index)})

    async def chunks(self, batch_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """The batch's chunks in input order (optionally only those in `status`)."""
        query: dict[str, Any] = {"batch_id": batch_id}
        if status is not None:
            query["status"] = status
        return await self._collection.find(query).sort("index", ASCENDING).to_list(None)

    async def count(self, batch_id: str) -> int:
        return await self._collection.count_documents({"batch_id": batch_id})

    async def count_pending(self, batch_id: str) -> int:
        return await self._collection.count_documents({"batch_id": batch_id, "status": PENDING})

    async def pending_published_before(self, batch_id: str, cutoff: float) -> list[dict[str, Any]]:
        """The batch's admitted pending chunks last published before `cutoff` (epoch seconds), in input order."""
        return await self._collection.find(
            {"batch_id": batch_id, "status": PENDING, "admitted": {"$ne": False}, "published_at": {"$lt": cutoff}}
        ).sort("index", ASCENDING).to_list(None)

    async def admitted_pending(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's chunks that were admitted (published) and have no counted result, in input order."""
        return await self._collection.find(
            {"batch_id": batch_id, "status": PENDING, "admitted": {"$ne": False}}
        ).sort("index", ASCENDING).to_list(None)

    async def queued(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's chunks waiting for admission, in input order (index and line count only)."""
        return await self._collection.find(
            {"batch_id": batch_id, "status": PENDING, "admitted": False}, {"index": 1, "line_count": 1},
        ).sort("index", ASCENDING).to_list(None)

    async def in_flight(self, model: str) -> list[dict[str, Any]]:
        """The model's admitted chunks without a counted result (the scheduler's window), with their project."""
        return await self._collection.find(
            {"model": model, "status": PENDING, "admitted": True}, {"project": 1, "batch_id": 1},
        ).to_list(None)

    async def admit(self, batch_id: str, index: int) -> dict[str, Any] | None:
        """CAS a queued chunk to admitted (stamping admitted_at and published_at); the chunk if this call
        won, None if another dispatcher admitted it first or it left `pending` (cancel, expiry)."""
        now = time.time()
        return await self._collection.find_one_and_update(
            {"_id": chunk_id(batch_id, index), "status": PENDING, "admitted": False},
            {"$set": {"admitted": True, "admitted_at": now, "published_at": now}},
            return_document=ReturnDocument.AFTER,
        )

    async def abandon_queued(self, batch_id: str) -> int:
        """Close the batch's chunks that were never admitted (a cancel): they never ran, so nothing waits on them."""
        res = await self._collection.update_many(
            {"batch_id": batch_id, "status": PENDING, "admitted": False},
            {"$set": {"status": "abandoned", "finished_at": time.time()}},
        )
        return res.modified_count

    async def mark_published(self, batch_id: str, indexes: Sequence[int] | None = None) -> None:
        """Stamp `published_at` = now on the batch's admitted pending chunks (all of them, or these indexes)."""
        query: dict[str, Any] = {"batch_id": batch_id, "status": PENDING, "admitted": {"$ne": False}}
        update = {"$set": {"published_at": time.time()}}
        if indexes is None:
            await self._collection.update_many(query, update)
            return
        ids = [chunk_id(batch_id, i) for i in indexes]
        for i in range(0, len(ids), _ID_BATCH):
            await self._collection.update_many({**query, "_id": {"$in": ids[i:i + _ID_BATCH]}}, update)

    async def settle(self, result: WorkResult) -> Settled | None:
        """CAS the chunk `pending -> done|skipped` with this attempt's keys and counts; None if it lost."""
        now = time.time()
        fields: dict[str, Any] = {"status": result.outcome, "attempt": result.attempt, "worker": result.worker,
                                  "finished_at": now}
        if result.outcome == "done":
            fields.update(
                output_key=result.output_key, error_key=result.error_key, succeeded=result.succeeded,
                failed=result.failed, input_tokens=result.input_tokens, output_tokens=result.output_tokens,
            )
        before = await self._collection.find_one_and_update(
            {"_id": chunk_id(result.batch_id, result.chunk), "status": PENDING}, {"$set": fields},
            projection={"published_at": 1, "created_at": 1}, return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return None
        published = before.get("published_at") or before.get("created_at")
        return Settled(None if published is None else max(0.0, now - float(published)))

    async def record(self, result: WorkResult) -> bool:
        """CAS the chunk `pending -> done|skipped` with this attempt's keys and counts; True if it won."""
        return await self.settle(result) is not None

    async def chunk_seconds(self, batch_id: str, limit: int = 50) -> list[float]:
        """Publication-to-result times of the batch's most recently finished chunks (a seed for estimates)."""
        docs = await self._collection.find(
            {"batch_id": batch_id, "status": "done"}, {"published_at": 1, "created_at": 1, "finished_at": 1},
        ).sort("finished_at", DESCENDING).limit(limit).to_list(None)
        out = []
        for d in docs:
            published, finished = d.get("published_at") or d.get("created_at"), d.get("finished_at")
            if published is not None and finished is not None:
                out.append(max(0.0, float(finished) - float(published)))
        return out

    async def delete_batch(self, batch_id: str) -> int:
        """Drop every chunk document of a terminal batch; returns how many went."""
        res = await self._collection.delete_many({"batch_id": batch_id})
        return res.deleted_count

    async def abandon_pending(self, batch_id: str) -> int:
        """Close every still-pending chunk (expiry, cancel): a result arriving later loses its CAS."""
        res = await self._collection.update_many(
            {"batch_id": batch_id, "status": PENDING}, {"$set": {"status": "abandoned", "finished_at": time.time()}}
        )
        return res.modified_count

    async def summary(self, batch_id: str) -> LedgerSummary:
        docs = await self._collection.find(
            {"batch_id": batch_id},
            {"status": 1, "line_count": 1, "succeeded": 1, "failed": 1, "input_tokens": 1, "output_tokens": 1},
        ).to_list(None)
        return summarize(docs)


def summarize(docs: Sequence[dict[str, Any]]) -> LedgerSummary:
    s = LedgerSummary()
    for d in docs:
        s.chunks += 1
        lines = int(d.get("line_count") or 0)
        s.total_lines += lines
        status = d.get("status")
        if status == PENDING:
            s.pending += 1
            continue
        s.finished += 1
        if status == "done":
            s.succeeded += int(d.get("succeeded") or 0)
            s.failed += int(d.get("failed") or 0)
            s.input_tokens += int(d.get("input_tokens") or 0)
            s.output_tokens += int(d.get("output_tokens") or 0)
        else:
            s.unfinished_lines += lines
    return s
