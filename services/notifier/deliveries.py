"""The delivery schedule: one MongoDB document per (event, target), the single source of truth.

A notifier may die at any moment; everything it must remember lives here, so a restarted one (or
another instance) carries on. `webhook_deliveries` documents:

    _id            `msg_<32 hex>` = the `webhook-id` header, derived from (CloudEvent id, target):
                   a redelivered Kafka event upserts onto the same document, never a second one
    project, endpoint_id (None for a callback), callback_url (callback only), target (pool key),
    event_id (`evt_…`), source_event_id (the CloudEvent id), event_type, batch_id,
    body           the exact JSON payload: every attempt sends the same bytes
    status         pending -> delivered | dead    (redeliver: -> pending again)
    next_attempt_at  present only while pending (a sparse index: finished deliveries cost the
                   scheduler's index nothing)
    deadline (retry horizon), lease_until, claim (who is sending it now), attempt_count,
    attempts (the last ATTEMPTS_KEPT), last_error, created_at, delivered_at, dead_at
    ended_at       a BSON date, present only once delivered or dead: a TTL index on it removes the
                   delivery `webhook_delivery_ttl_seconds` later (a redeliver unsets it)

Claiming is a compare-and-set (`status: pending, next_attempt_at <= now, lease_until <= now` ->
`claim = token, lease_until = now + lease`): two notifiers never send the same attempt at once, and
a crashed notifier's claim lapses when its lease does. An attempt's result is written only under
the claim that made it (`{_id, claim: token}`). A delivery whose first attempt finished before its
document was written is inserted with that outcome already in it (`with_outcome`): one write for
the common case. Times are epoch seconds (floats), like the batches.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure

log = logging.getLogger(__name__)

DELIVERIES_COLLECTION = "webhook_deliveries"
ATTEMPTS_KEPT = 25
CALLBACK_TARGET = "callback"
ENDED_TTL_INDEX = "ended_at_ttl"
# What MongoDB answers when an index exists under the same name or keys with other options.
_INDEX_OPTIONS_CONFLICT = frozenset({85, 86})

Doc = dict[str, Any]


class DeliveryInFlight(RuntimeError):
    """A redeliver asked for a delivery that is being sent right now."""


def webhook_id(source_event_id: str, target: str) -> str:
    """Stable per (event, endpoint): receivers de-duplicate on it across retries and redeliveries."""
    return "msg_" + hashlib.sha256(f"{source_event_id}\n{target}".encode()).hexdigest()[:32]


def webhook_event_id(source_event_id: str) -> str:
    """The payload's `evt_…` id: the same for every endpoint and every re-publication of the event."""
    return "evt_" + hashlib.sha256(source_event_id.encode()).hexdigest()[:32]


def retry_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2^(attempt-1))).

    Full jitter spreads the retries of many deliveries that failed together (a receiver's outage)
    instead of bringing them back in one wave.
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 62))
    return (rng or random).uniform(0.0, ceiling)


def next_attempt_after_failure(
    now: float, attempt: int, deadline: float, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float | None:
    """When to try again after failed attempt number `attempt`, or None: the horizon is reached (dead)."""
    at = now + retry_delay(attempt, base_s, cap_s, rng)
    return at if at <= deadline else None


def new_delivery(
    *,
    delivery_id: str,
    project: str,
    target: str,
    endpoint_id: str | None,
    callback_url: str | None,
    source_event_id: str,
    event_id: str,
    event_type: str,
    batch_id: str,
    body: bytes,
    now: float,
    horizon_s: float,
) -> Doc:
    # Fields without a value are left out rather than stored as null: every delivery is written at
    # least once, and with the local MongoDB stand-in each stored field costs every write.
    doc: Doc = {
        "_id": delivery_id,
        "project": project,
        "target": target,
        "source_event_id": source_event_id,
        "event_id": event_id,
        "event_type": event_type,
        "batch_id": batch_id,
        "body": body.decode(),
        "status": "pending",
        "created_at": now,
        "next_attempt_at": now,
        "deadline": now + horizon_s,
        "lease_until": 0.0,
        "attempt_count": 0,
    }
    if endpoint_id is not None:
        doc["endpoint_id"] = endpoint_id
    if callback_url is not None:
        doc["callback_url"] = callback_url
    return doc


def ended_at(now: float) -> datetime:
    """The TTL index's field: MongoDB expires documents by a BSON date only, not by epoch seconds."""
    return datetime.fromtimestamp(now, tz=UTC)


def outcome_fields(attempt: Mapping[str, Any], next_at: float | None, now: float) -> tuple[Doc, list[str]]:
    """The fields one attempt sets, and those it removes: succeeded -> delivered; failed with `next_at` ->
    pending again; failed without -> dead."""
    fields: Doc = {"lease_until": 0.0, "claim": None, "last_error": attempt.get("error")}
    if attempt["outcome"] == "succeeded":
        fields.update(status="delivered", delivered_at=now, last_error=None, ended_at=ended_at(now))
        return fields, ["next_attempt_at"]
    if next_at is not None:
        fields.update(status="pending", next_attempt_at=next_at)
        return fields, []
    fields.update(status="dead", dead_at=now, ended_at=ended_at(now))
    return fields, ["next_attempt_at"]


def with_outcome(doc: Mapping[str, Any], attempt: Mapping[str, Any], *, next_at: float | None, now: float) -> Doc:
    """A new delivery document that already records its first attempt (inserted in one write)."""
    fields, removed = outcome_fields(attempt, next_at, now)
    out = {**doc, **fields, "attempt_count": 1, "attempts": [dict(attempt)]}
    for name in (*removed, "claim"):
        out.pop(name, None)
    if out.get("last_error") is None:
        out.pop("last_error", None)
    return out


def finish_update(
    doc: Mapping[str, Any], claim: str, attempt: Mapping[str, Any], *, next_at: float | None, now: float
) -> UpdateOne:
    """The write that records one attempt, valid only while `claim` still holds the delivery."""
    fields, removed = outcome_fields(attempt, next_at, now)
    update: Doc = {
        "$set": fields,
        "$inc": {"attempt_count": 1},
        "$push": {"attempts": {"$each": [dict(attempt)], "$slice": -ATTEMPTS_KEPT}},
    }
    if removed:
        update["$unset"] = dict.fromkeys(removed, "")
    return UpdateOne({"_id": doc["_id"], "claim": claim}, update)


def delivery_to_api(doc: Mapping[str, Any]) -> dict[str, Any]:
    def seconds(value: Any) -> int | None:
        return None if value is None else int(value)

    return {
        "id": doc["_id"],
        "object": "webhook_delivery",
        "endpoint_id": doc.get("endpoint_id"),
        "callback_url": doc.get("callback_url"),
        "event_id": doc["event_id"],
        "event_type": doc["event_type"],
        "batch_id": doc["batch_id"],
        "status": doc["status"],
        "created_at": int(doc["created_at"]),
        "delivered_at": seconds(doc.get("delivered_at")),
        "dead_at": seconds(doc.get("dead_at")),
        "next_retry_at": seconds(doc.get("next_attempt_at")) if doc["status"] == "pending" else None,
        "attempt_count": int(doc.get("attempt_count") or 0),
        "last_error": doc.get("last_error"),
        "attempts": list(doc.get("attempts") or []),
    }


class DeliveryStore:
    def __init__(self, db: AsyncDatabase[Any], *, ended_ttl_s: float | None = None) -> None:
        """ended_ttl_s: how long a delivered or dead delivery is kept (`webhook_delivery_ttl_seconds`);
        None leaves the TTL index as it is (a process that does not own the schema)."""
        self._db = db
        self._collection = db[DELIVERIES_COLLECTION]
        self.ended_ttl_s = ended_ttl_s

    async def ensure_indexes(self) -> None:
        # Few indexes on purpose: every delivery is written at least once, and each index costs each write.
        await self._collection.create_indexes(
            [
                # the scheduler: due deliveries, oldest first (only pending ones have the field)
                IndexModel([("next_attempt_at", ASCENDING)], sparse=True),
                # listings, newest first: one endpoint's, or one batch's (callbacks included)
                IndexModel([("endpoint_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]),
                IndexModel([("batch_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]),
            ]
        )
        if self.ended_ttl_s is not None:
            await self._ensure_ttl(max(1, int(self.ended_ttl_s)))

    async def _ensure_ttl(self, ttl_s: int) -> None:
        """Deliveries end (delivered, dead) and are removed by the server `ttl_s` later: the history stays
        readable for that long and the collection does not grow forever. Sparse: pending ones have no
        `ended_at` and cost the index nothing."""
        index = IndexModel([("ended_at", ASCENDING)], name=ENDED_TTL_INDEX, expireAfterSeconds=ttl_s, sparse=True)
        try:
            await self._collection.create_indexes([index])
        except OperationFailure as exc:
            if exc.code not in _INDEX_OPTIONS_CONFLICT:
                raise
            # The setting changed since the index was made: change its expiry in place.
            await self._db.command("collMod", DELIVERIES_COLLECTION,
                                   index={"name": ENDED_TTL_INDEX, "expireAfterSeconds": ttl_s})
            log.info("delivery TTL changed to %d s", ttl_s)

    async def create_many(self, docs: Sequence[Mapping[str, Any]]) -> set[str]:
        """Insert the deliveries that do not exist yet (one round trip); returns the ids inserted now.

        The ids are deterministic, so an existing delivery (a redelivered event) makes its insert fail
        with a duplicate key and stays as it is: insert-or-ignore, cheaper than an upsert per document.
        """
        if not docs:
            return set()
        ids = [str(d["_id"]) for d in docs]
        try:
            await self._collection.insert_many([dict(d) for d in docs], ordered=False)
            return set(ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            existing = {ids[e["index"]] for e in errors}
            return set(ids) - existing

    async def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of these deliveries exist already."""
        if not ids:
            return set()
        return {str(d["_id"]) async for d in self._collection.find({"_id": {"$in": list(ids)}}, {"_id": 1})}

    async def claim_due(
        self, token: str, lease_s: float, *, now: float | None = None, skip_targets: Iterable[str] = ()
    ) -> Doc | None:
        """Claim the most overdue pending delivery (not leased, not for a target in `skip_targets`)."""
        at = time.time() if now is None else now
        query: Doc = {"status": "pending", "next_attempt_at": {"$lte": at}, "lease_until": {"$lte": at}}
        skip = list(skip_targets)
        if skip:
            query["target"] = {"$nin": skip}
        return await self._collection.find_one_and_update(
            query,
            {"$set": {"claim": token, "lease_until": at + lease_s}},
            sort=[("next_attempt_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

    async def renew_claim(self, delivery_id: str, claim: str, lease_until: float) -> bool:
        """Extend the lease of a claim; False: the claim was lost (it lapsed and another took it)."""
        renewed = await self._collection.update_one(
            {"_id": delivery_id, "claim": claim}, {"$set": {"lease_until": lease_until}}
        )
        return renewed.matched_count > 0

    async def write_results(self, ops: Sequence[UpdateOne]) -> int:
        """Record finished attempts (one round trip); returns how many still held their claim."""
        if not ops:
            return 0
        result = await self._collection.bulk_write(list(ops), ordered=False)
        return result.matched_count

    async def get(self, project: str, delivery_id: str, endpoint_id: str | None = None) -> Doc | None:
        query: Doc = {"_id": delivery_id, "project": project}
        if endpoint_id is not None:
            query["endpoint_id"] = endpoint_id
        return await self._collection.find_one(query, {"body": 0})

    async def for_batch(self, batch_id: str) -> Doc | None:
        """A delivery of this batch, body included (the one, for a batch that went to a single target)."""
        return await self._collection.find_one({"batch_id": batch_id})

    async def end_pending_for_endpoint(self, project: str, endpoint_id: str, reason: str) -> int:
        """Mark the endpoint's pending deliveries dead (it was deleted); those being sent right now are
        left to their attempt, which finds the endpoint gone. Returns how many ended."""
        now = time.time()
        result = await self._collection.update_many(
            {"project": project, "endpoint_id": endpoint_id, "status": "pending", "lease_until": {"$lte": now}},
            {"$set": {"status": "dead", "dead_at": now, "ended_at": ended_at(now), "last_error": reason},
             "$unset": {"next_attempt_at": ""}},
        )
        return result.modified_count

    async def list(
        self,
        project: str,
        *,
        limit: int,
        after: str | None = None,
        endpoint_id: str | None = None,
        batch_id: str | None = None,
        status: str | None = None,
    ) -> tuple[list[Doc], bool] | None:
        """Newest first; None when `after` names no delivery of this listing."""
        query: Doc = {"project": project}
        for key, value in (("endpoint_id", endpoint_id), ("batch_id", batch_id), ("status", status)):
            if value is not None:
                query[key] = value
        if after is not None:
            cursor_doc = await self._collection.find_one({**query, "_id": after}, {"created_at": 1})
            if cursor_doc is None:
                return None
            created = cursor_doc["created_at"]
            query["$or"] = [
                {"created_at": {"$lt": created}},
                {"created_at": created, "_id": {"$lt": after}},
            ]
        docs = (
            await self._collection.find(query, {"body": 0})
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
            .to_list()
        )
        return docs[:limit], len(docs) > limit

    async def redeliver(
        self, project: str, delivery_id: str, horizon_s: float, endpoint_id: str | None = None
    ) -> Doc | None:
        """Schedule the delivery again now, with the same webhook-id and a fresh retry horizon.

        None: no such delivery. DeliveryInFlight: it is being sent at this moment.
        """
        now = time.time()
        query: Doc = {"_id": delivery_id, "project": project, "lease_until": {"$lte": now}}
        if endpoint_id is not None:
            query["endpoint_id"] = endpoint_id
        doc = await self._collection.find_one_and_update(
            query,
            # Pending again: no `ended_at`, or the TTL index would remove it mid-retry.
            {"$set": {"status": "pending", "next_attempt_at": now, "deadline": now + horizon_s, "dead_at": None},
             "$unset": {"ended_at": ""}},
            projection={"body": 0},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None and await self.get(project, delivery_id, endpoint_id) is not None:
            raise DeliveryInFlight(delivery_id)
        return doc
