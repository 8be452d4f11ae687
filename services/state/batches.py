"""The batch store: one MongoDB document per batch; status moves only forward, by compare-and-set.

Every process that changes a batch (the API, the dispatcher) goes through `BatchStore`, so the
rules of docs/architecture.md live in one place:

- A status change is one `find_one_and_update` whose filter is the compare-and-set
  (`{_id, status in <from>}`): of two racing writers (a cancel and a finalize) exactly one wins.
- The same single-document write pushes the CloudEvent of the change into the batch's `outbox`
  array. `EventPublisher` (outbox.py) sends it and pulls it; a crash in between only delays the
  event. The event carries the batch *as it is after the write*: the new document is built in
  Python first, and the write is also conditioned on the revision (`rev`) it was built from, so
  a concurrent field update makes the writer rebuild rather than publish stale data.
- Timestamps are stored as float epoch seconds (fine ordering of batches created within one
  second); `to_api` rounds them down to the integer seconds OpenAI returns.

Document fields (`_id` = `batch_<24 hex>`):
    project, status, endpoint, model, input_file_id, input {kind: "file"|"url", key, url, bytes},
    completion_window, created_at, expires_at, <status>_at, request_counts {total, completed, failed},
    usage (BatchUsage shape or None), errors (list of {code, message, param, line} or None),
    output_file_id, error_file_id, metadata, output_expires_after {anchor, seconds} (or None: the output
    and error files never expire), retried_by (the newest retry's batch id), chunks_total,
    outbox (pending CloudEvent dicts),
    dispatch_plan {model, chunks_total, requests, chunk_lines, chunk_max_bytes} (the validation pass's
    result, recorded before its chunks: a redelivered `batch.created` finishes from it), cleanup_pending,
    outbox_at (when the oldest pending event was pushed; absent when the outbox is empty),
    updated_at, rev (incremented by every write that changes what the API shows).
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from schemas.events import batch_event
from schemas.openai_objects import (
    TERMINAL_STATUSES,
    Batch,
    BatchErrors,
    BatchStatus,
    bounded_errors,
    bounded_model,
    dump,
    fit_batch_object,
)

BATCHES_COLLECTION = "batches"
BATCH_STATUSES: tuple[str, ...] = BatchStatus.__args__  # type: ignore[attr-defined]
# Statuses that count as "running" (for the test model's per-project limit, for expiry scans).
ACTIVE_STATUSES: tuple[str, ...] = tuple(s for s in BATCH_STATUSES if s not in TERMINAL_STATUSES)
# Fields that hold epoch seconds in the document and integer seconds on the wire.
TIME_FIELDS: tuple[str, ...] = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at",
)
# Set (True) by the write that makes a batch terminal, cleared once what it held is released
# (input pin, chunk ledger, URL copy, parts): a process that dies in between leaves the flag for the sweep.
CLEANUP_FIELD = "cleanup_pending"
# A writer whose CAS keeps losing to field updates (not to a status change) retries this often.
_MAX_CAS_ATTEMPTS = 50

Doc = dict[str, Any]
Docs = list[Doc]


class CursorNotFound(LookupError):
    """`after` names no batch of the project (the list cursor is unknown)."""


class ConcurrentUpdateError(RuntimeError):
    """A writer lost its revision check too many times in a row (pathological contention)."""


def new_batch_id() -> str:
    """`batch_` + 24 hex digits. An ObjectId: unique across processes and roughly time-ordered."""
    return f"batch_{ObjectId()}"


def _seconds(value: Any) -> int | None:
    return None if value is None else int(value)


def to_api(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The Batch object exactly as the API returns it (and as events carry it in `data`)."""
    # Bounded here, not only by the writers: every read and every event carries this object.
    errors = bounded_errors(doc.get("errors"))
    fields: dict[str, Any] = {
        "id": doc["_id"],
        "endpoint": doc["endpoint"],
        "model": bounded_model(doc.get("model")),
        "errors": BatchErrors(data=errors) if errors else None,
        "input_file_id": doc["input_file_id"],
        "completion_window": doc["completion_window"],
        "status": doc["status"],
        "output_file_id": doc.get("output_file_id"),
        "error_file_id": doc.get("error_file_id"),
        "request_counts": doc.get("request_counts") or {},
        "usage": doc.get("usage"),
        "metadata": doc.get("metadata"),
        "output_expires_after": doc.get("output_expires_after"),
        "retried_by": doc.get("retried_by"),
    }
    for name in TIME_FIELDS:
        fields[name] = _seconds(doc.get(name))
    return fit_batch_object(dump(Batch.model_validate(fields)))


def new_batch_document(
    *,
    project: str,
    endpoint: str,
    input_file_id: str,
    input: Mapping[str, Any],
    completion_window: str,
    expires_in_s: float,
    metadata: Mapping[str, str] | None = None,
    model: str | None = None,
    batch_id: str | None = None,
    output_expires_after: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> Doc:
    """A new batch in `validating`, with its `batch.created` event already in the outbox.

    input: `{"kind": "file", "key": <S3 key>, "bytes": n}` or `{"kind": "url", "url": ...}`.
    output_expires_after: `{"anchor": "created_at", "seconds": n}`, applied by finalize to the output
    and error files (None: they never expire).
    """
    now = time.time() if now is None else now
    doc: Doc = {
        "_id": batch_id or new_batch_id(),
        "project": project,
        "status": "validating",
        "endpoint": endpoint,
        "model": model,
        "input_file_id": input_file_id,
        "input": dict(input),
        "completion_window": completion_window,
        "created_at": now,
        "expires_at": now + expires_in_s,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None,
        "errors": None,
        "output_file_id": None,
        "error_file_id": None,
        "metadata": dict(metadata) if metadata is not None else None,
        "output_expires_after": dict(output_expires_after) if output_expires_after is not None else None,
        "chunks_total": None,
        "updated_at": now,
        "rev": 0,
    }
    doc["outbox"] = [batch_event("batch.created", to_api(doc), at=now).model_dump(mode="json")]
    doc["outbox_at"] = now
    return doc


def _apply_set(doc: Mapping[str, Any], fields: Mapping[str, Any]) -> Doc:
    """`doc` after `{"$set": fields}` (dotted paths included), computed in Python."""
    out = copy.deepcopy(dict(doc))
    for path, value in fields.items():
        target = out
        *parents, leaf = path.split(".")
        for name in parents:
            child = target.get(name)
            if not isinstance(child, dict):
                child = target[name] = {}
            target = child
        target[leaf] = copy.deepcopy(value)
    return out


def _rev_filter(doc: Mapping[str, Any]) -> Any:
    return doc.get("rev", {"$exists": False})


def _statuses(value: str | Collection[str]) -> list[str]:
    statuses = [value] if isinstance(value, str) else list(value)
    unknown = [s for s in statuses if s not in BATCH_STATUSES]
    if unknown:
        raise ValueError(f"unknown batch status {unknown}")
    return statuses


async def _backoff(attempt: int) -> None:
    # Tiny jittered pause so two writers retrying on one document do not keep colliding.
    await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))


class BatchStore:
    """Async access to the `batches` collection. Cheap to construct; share the database handle."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._collection: AsyncCollection[Any] = db[BATCHES_COLLECTION]

    async def ensure_indexes(self) -> None:
        """Idempotent; every process that uses the store may call it at start-up."""
        await self._collection.create_indexes([
            # GET /v1/batches: one project's batches, newest first, cursor on (created_at, _id).
            IndexModel([("project", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]),
            # Expiry scans and running counts.
            IndexModel([("status", ASCENDING), ("expires_at", ASCENDING)]),
            # republish_stale: only batches with pending events carry outbox_at.
            IndexModel([("outbox_at", ASCENDING)], sparse=True),
            # with_pending_cleanup: only terminal batches whose cleanup has not run carry the flag.
            IndexModel([(CLEANUP_FIELD, ASCENDING)], sparse=True),
        ])

    # -- reads --

    async def get(self, batch_id: str, project: str | None = None) -> Doc | None:
        """The batch document; None when it does not exist or (project given) belongs to another project."""
        query: Doc = {"_id": batch_id}
        if project is not None:
            query["project"] = project
        return await self._collection.find_one(query)

    async def list(
        self,
        project: str,
        *,
        after: str | None = None,
        limit: int = 20,
        statuses: Collection[str] | None = None,
        ds_name: str | None = None,
        input_file_ids: Collection[str] | None = None,
        create_after: float | None = None,
        create_before: float | None = None,
    ) -> tuple[Docs, bool]:
        """One page of the project's batches, newest first (OpenAI's order), and `has_more`.

        after: the last id of the previous page (raises CursorNotFound if the project has no such batch).
        ds_name: substring of `metadata.ds_name`. input_file_ids: any of these inputs.
        create_after / create_before: epoch seconds, `create_after <= created_at < create_before`.
        Documents come without their `outbox`.
        """
        query: Doc = {"project": project}
        if statuses:
            query["status"] = {"$in": _statuses(statuses)}
        if ds_name:
            query["metadata.ds_name"] = {"$regex": re.escape(ds_name)}
        if input_file_ids:
            query["input_file_id"] = {"$in": list(input_file_ids)}
        created: Doc = {}
        if create_after is not None:
            # `$gt` the float just below == `$gte`, spelled so because SecantusDB scans an inclusive
            # bound on a non-leading key of a compound index as exclusive (verified by
            # test_list_paging_and_filters, which has a batch exactly on the bound).
            created["$gt"] = math.nextafter(create_after, -math.inf)
        if create_before is not None:
            created["$lt"] = create_before
        if created:
            query["created_at"] = created
        if after is not None:
            cursor_doc = await self._collection.find_one({"_id": after, "project": project}, {"created_at": 1})
            if cursor_doc is None:
                raise CursorNotFound(after)
            at = cursor_doc["created_at"]
            query["$or"] = [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": after}}]
        cursor = (
            self._collection.find(query, {"outbox": 0})
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
        )
        docs = await cursor.to_list(length=limit + 1)
        return docs[:limit], len(docs) > limit

    async def status(self, batch_id: str) -> str | None:
        """The batch's status alone (None: no such batch): the workers' check before each chunk."""
        doc = await self._collection.find_one({"_id": batch_id}, {"status": 1})
        return None if doc is None else str(doc["status"])

    async def projects_of(self, batch_ids: Collection[str]) -> dict[str, str]:
        """batch id -> project, for the ids that exist."""
        cursor = self._collection.find({"_id": {"$in": list(batch_ids)}}, {"project": 1})
        return {doc["_id"]: str(doc["project"]) async for doc in cursor}

    async def in_statuses(
        self, statuses: Collection[str], fields: Collection[str], *, project: str | None = None,
        model: str | None = None, limit: int = 0,
    ) -> AsyncIterator[Doc]:
        """Every batch in one of `statuses` (of `project` and `model`, when given), with only `fields`:
        the dispatcher's sweep, quota arithmetic, the fleet gauges."""
        query: dict[str, Any] = {"status": {"$in": _statuses(statuses)}}
        if project is not None:
            query["project"] = project
        if model is not None:
            query["model"] = model
        async for doc in self._collection.find(query, dict.fromkeys(fields, 1)).limit(limit):
            yield doc

    async def count_running(self, project: str, model: str | None = None) -> int:
        """How many of the project's batches (of `model`, when given) are not terminal yet."""
        query: dict[str, Any] = {"project": project, "status": {"$in": list(ACTIVE_STATUSES)}}
        if model is not None:
            query["model"] = model
        return await self._collection.count_documents(query)

    async def with_pending_cleanup(self, limit: int = 100) -> Docs:
        """Terminal batches whose clean-up (input pin, ledger, copies) has not finished: its process died."""
        cursor = self._collection.find(
            {CLEANUP_FIELD: True, "status": {"$in": list(TERMINAL_STATUSES)}},
            {"outbox": 0, "errors": 0, "metadata": 0},
        ).limit(limit)
        return await cursor.to_list(length=limit)

    async def cleanup_done(self, batch_id: str) -> None:
        """Clear the clean-up flag (see `with_pending_cleanup`); not an API change, so no `rev` bump."""
        await self._collection.update_one({"_id": batch_id}, {"$unset": {CLEANUP_FIELD: ""}})

    async def with_stale_outbox(self, older_than_s: float, limit: int = 500) -> Docs:
        """Batches whose oldest pending event was pushed more than `older_than_s` seconds ago."""
        cutoff = time.time() - older_than_s
        cursor = self._collection.find({"outbox_at": {"$lt": cutoff}}).sort("outbox_at", ASCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    # -- writes --

    async def insert(self, doc: Doc) -> Doc:
        """Insert a new batch (see `new_batch_document`); DuplicateKeyError if the id exists."""
        await self._collection.insert_one(doc)
        return doc

    async def delete(self, batch_id: str) -> bool:
        """Remove a batch outright — only for a create that is refused after its insert."""
        result = await self._collection.delete_one({"_id": batch_id})
        return result.deleted_count == 1

    async def transition(
        self,
        batch_id: str,
        from_status: str | Collection[str],
        to_status: str,
        *,
        set: Mapping[str, Any] | None = None,
        event: bool = True,
    ) -> Doc | None:
        """CAS `status: <from> -> <to>`; sets `<to>_at` and `updated_at` to now, plus `set`.

        event: also push `batch.<to>` (carrying the post-update batch) into the outbox, in the same
        write. Returns the new document (publish it with `EventPublisher.publish_outbox`), or None
        when the batch does not exist or its status is not in `from_status` (the CAS lost).
        """
        froms = _statuses(from_status)
        _statuses(to_status)
        if any(s in TERMINAL_STATUSES for s in froms) or to_status in froms:
            raise ValueError(f"status cannot move from {froms} to {to_status!r}")
        if set and "status" in set:
            raise ValueError("set the status through to_status")
        for attempt in range(_MAX_CAS_ATTEMPTS):
            current = await self._collection.find_one({"_id": batch_id}, {"outbox": 0})
            if current is None or current["status"] not in froms:
                return None
            now = time.time()
            fields = {**(set or {}), "status": to_status, f"{to_status}_at": now, "updated_at": now}
            update: Doc = {"$set": fields, "$inc": {"rev": 1}}
            if event:
                after = _apply_set(current, fields)
                ev = batch_event(f"batch.{to_status}", to_api(after), at=now)
                update["$push"] = {"outbox": ev.model_dump(mode="json")}
                update["$min"] = {"outbox_at": now}
            new = await self._collection.find_one_and_update(
                {"_id": batch_id, "status": {"$in": froms}, "rev": _rev_filter(current)},
                update,
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return new
            await _backoff(attempt)
        raise ConcurrentUpdateError(f"transition of {batch_id} to {to_status} kept losing its revision check")

    async def update_fields(
        self,
        batch_id: str,
        set: Mapping[str, Any],
        *,
        only_status: str | Collection[str] | None = None,
        progress_seq: int | None = None,
    ) -> Doc | None:
        """`$set` fields without a status change (counts, usage, errors, file ids, model, chunks_total).

        only_status: apply only while the batch is in one of these statuses.
        progress_seq: also push `batch.progress` (event id `<id>.progress.<seq>`, carrying the
        post-update batch) in the same write.
        Returns the new document, or None when the batch is missing or not in `only_status`.
        """
        if "status" in set:
            raise ValueError("change the status with transition()")
        query: Doc = {"_id": batch_id}
        if only_status is not None:
            query["status"] = {"$in": _statuses(only_status)}
        if progress_seq is None:
            now = time.time()
            return await self._collection.find_one_and_update(
                query,
                {"$set": {**set, "updated_at": now}, "$inc": {"rev": 1}},
                return_document=ReturnDocument.AFTER,
            )
        for attempt in range(_MAX_CAS_ATTEMPTS):
            current = await self._collection.find_one(query, {"outbox": 0})
            if current is None:
                return None
            now = time.time()
            fields = {**set, "updated_at": now}
            ev = batch_event("batch.progress", to_api(_apply_set(current, fields)), seq=progress_seq, at=now)
            new = await self._collection.find_one_and_update(
                {**query, "rev": _rev_filter(current)},
                {
                    "$set": fields,
                    "$inc": {"rev": 1},
                    "$push": {"outbox": ev.model_dump(mode="json")},
                    "$min": {"outbox_at": now},
                },
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return new
            await _backoff(attempt)
        raise ConcurrentUpdateError(f"progress update of {batch_id} kept losing its revision check")

    async def push_progress(self, batch_id: str, seq: int) -> Doc | None:
        """Push `batch.progress` (id `<id>.progress.<seq>`) carrying the batch as it is now.

        Returns the new document, or None when the batch does not exist.
        """
        for attempt in range(_MAX_CAS_ATTEMPTS):
            current = await self._collection.find_one({"_id": batch_id}, {"outbox": 0})
            if current is None:
                return None
            now = time.time()
            ev = batch_event("batch.progress", to_api(current), seq=seq, at=now)
            new = await self._collection.find_one_and_update(
                {"_id": batch_id, "rev": _rev_filter(current)},
                {"$push": {"outbox": ev.model_dump(mode="json")}, "$min": {"outbox_at": now}},
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return new
            await _backoff(attempt)
        raise ConcurrentUpdateError(f"progress event of {batch_id} kept losing its revision check")

    async def pull_outbox(self, batch_id: str, event_ids: Collection[str]) -> Doc | None:
        """Remove sent events from the outbox (by CloudEvent id); clears `outbox_at` once it is empty."""
        if not event_ids:
            return await self._collection.find_one({"_id": batch_id})
        new = await self._collection.find_one_and_update(
            {"_id": batch_id},
            {"$pull": {"outbox": {"id": {"$in": list(event_ids)}}}},
            return_document=ReturnDocument.AFTER,
        )
        if new is not None and not new.get("outbox") and "outbox_at" in new:
            # Conditional on the outbox still being empty: a writer may have pushed meanwhile.
            await self._collection.update_one({"_id": batch_id, "outbox": {"$size": 0}}, {"$unset": {"outbox_at": ""}})
        return new
