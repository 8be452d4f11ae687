"""FileStore: the `files` collection (metadata) beside the S3 bucket (bytes).

S3 holds only bytes, under `files/<file id>`; everything else lives in MongoDB, because S3
clones (rclone) forget metadata on restart. A document moves through three states:

    uploading -> active -> deleting -> (document removed)

- `uploading` is written before the first byte goes to S3 and `active` only after the object is
  complete, so a process killed mid-upload leaves a document the sweeper finds and removes
  (with any bytes), never bytes nobody knows about.
- `deleting` hides a file at once; its bytes go next and the document last. A crash in between
  leaves a `deleting` document the sweeper finishes.
- An `active` file past `expires_at` is invisible at once (every read filters on it) and is
  swept like a deleted one.
- A file may be *pinned* by a reader that needs its bytes for a while (a batch reads its input file
  by byte ranges until it finishes): `pin` is atomic with the visibility check, and a deleted or
  expired file keeps its bytes, hidden, until the last pin is released; then the sweeper removes it.

Every read takes the project, so another project's file id is simply not found (404, never 403).
Ids are `file-<ObjectId>`: unique across processes and time-ordered, which is what the cursor
paging in services/http/pagination.py relies on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from schemas.api_params import FileListParams
from schemas.openai_objects import FileObject, dump
from services.http.pagination import fetch_page
from services.stores.s3 import ObjectStore

log = logging.getLogger(__name__)

FILES_COLLECTION = "files"
KEY_PREFIX = "files/"
UPLOADING, ACTIVE, DELETING = "uploading", "active", "deleting"
PINS = "pins"  # holders (batch ids) that still read the file's bytes

Doc = dict[str, Any]


def new_file_id() -> str:
    return f"file-{ObjectId()}"


def object_key(file_id: str) -> str:
    return f"{KEY_PREFIX}{file_id}"


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A visible file: what the API returns plus where its bytes are."""

    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    key: str
    lines: int | None = None  # request lines of a `batch` upload (counted while it streamed)

    @classmethod
    def from_doc(cls, doc: Doc) -> FileRecord:
        return cls(
            id=doc["_id"],
            project=doc["project"],
            filename=doc["filename"],
            purpose=doc["purpose"],
            bytes=int(doc["bytes"]),
            created_at=int(doc["created_at"]),
            expires_at=None if doc.get("expires_at") is None else int(doc["expires_at"]),
            key=doc["key"],
            lines=None if doc.get("lines") is None else int(doc["lines"]),
        )

    def to_api(self) -> dict[str, Any]:
        return dump(
            FileObject(
                id=self.id,
                bytes=self.bytes,
                created_at=self.created_at,
                filename=self.filename,
                purpose=self.purpose,
                status="processed",
                expires_at=self.expires_at,
            )
        )


def _doc_to_api(doc: Doc) -> dict[str, Any]:
    return FileRecord.from_doc(doc).to_api()


def _visible(project: str, now: float) -> Doc:
    """Files the project can see at `now`: active and not expired."""
    return {"project": project, "state": ACTIVE, "$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


@dataclass(frozen=True, slots=True)
class PendingUpload:
    file_id: str
    key: str
    created_at: int  # the anchor of `expires_after`


@dataclass(frozen=True, slots=True)
class SweepReport:
    expired: int = 0
    deleted: int = 0
    stale_uploads: int = 0

    @property
    def total(self) -> int:
        return self.expired + self.deleted + self.stale_uploads


class FileStore:
    """Metadata in MongoDB, bytes in S3. Cheap to construct; share the database and bucket handles."""

    def __init__(self, db: AsyncDatabase[Any], objects: ObjectStore) -> None:
        self._collection = db[FILES_COLLECTION]
        self.objects = objects

    async def ensure_indexes(self) -> None:
        """Idempotent; every process that uses the store may call it at start-up."""
        await self._collection.create_indexes([
            # GET /v1/files: one project's files in id (= creation) order.
            IndexModel([("project", ASCENDING), ("_id", ASCENDING)]),
            # The sweeper: expired active files, stale uploads, unfinished deletes.
            IndexModel([("state", ASCENDING), ("expires_at", ASCENDING)]),
            IndexModel([("state", ASCENDING), ("updated_at", ASCENDING)]),
        ])

    # -- reads --

    async def get(self, project: str, file_id: str, *, now: float | None = None) -> FileRecord | None:
        """The file if `project` can see it now; None if missing, foreign, expired or being deleted."""
        query = {"_id": file_id, **_visible(project, time.time() if now is None else now)}
        doc = await self._collection.find_one(query)
        return None if doc is None else FileRecord.from_doc(doc)

    async def list_page(self, project: str, params: FileListParams, *, now: float | None = None) -> dict[str, Any]:
        """One page of the project's visible files, as the list envelope the API returns."""
        query = _visible(project, time.time() if now is None else now)
        if params.purpose is not None:
            query["purpose"] = params.purpose
        return await fetch_page(self._collection, query, params, _doc_to_api)

    # -- uploads --

    async def begin_upload(
        self, project: str, file_id: str, filename: str, *, now: float | None = None
    ) -> PendingUpload:
        """Record an upload about to start. Invisible until `finish_upload`."""
        now = time.time() if now is None else now
        pending = PendingUpload(file_id, object_key(file_id), int(now))
        await self._collection.insert_one({
            "_id": file_id,
            "project": project,
            "state": UPLOADING,
            "filename": filename,
            "purpose": None,
            "bytes": 0,
            "created_at": pending.created_at,
            "expires_at": None,
            "key": pending.key,
            "updated_at": now,
        })
        return pending

    async def finish_upload(
        self, pending: PendingUpload, *, purpose: str, size: int, expires_at: int | None, now: float | None = None,
        lines: int | None = None,
    ) -> FileRecord | None:
        """Make a completed upload visible. None if the sweeper already reclaimed it as stale."""
        doc = await self._collection.find_one_and_update(
            {"_id": pending.file_id, "state": UPLOADING},
            {"$set": {
                "state": ACTIVE,
                "purpose": purpose,
                "bytes": size,
                "expires_at": expires_at,
                "lines": lines,
                "updated_at": time.time() if now is None else now,
            }},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else FileRecord.from_doc(doc)

    async def discard_upload(self, file_id: str) -> None:
        """Forget a failed upload (its S3 multipart upload is aborted by the writer)."""
        await self._collection.delete_one({"_id": file_id, "state": UPLOADING})

    async def register_existing(
        self,
        project: str,
        key: str,
        filename: str,
        purpose: str,
        size: int,
        *,
        file_id: str | None = None,
        expires_at: int | None = None,
        now: float | None = None,
    ) -> FileRecord:
        """Make an S3 object another service already wrote (a batch's output) a file of `project`.

        Idempotent when `file_id` is given: a second call (a re-run after a crash) returns the file
        the first one registered. Deleting the file later deletes the object at `key`.
        """
        now = time.time() if now is None else now
        file_id = file_id or new_file_id()
        doc = await self._collection.find_one_and_update(
            {"_id": file_id},
            {"$setOnInsert": {
                "project": project,
                "state": ACTIVE,
                "filename": filename,
                "purpose": purpose,
                "bytes": size,
                "created_at": int(now),
                "expires_at": expires_at,
                "key": key,
                "updated_at": now,
            }},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        if doc["project"] != project or doc["key"] != key:
            raise ValueError(f"file id {file_id} is already registered for another project or object")
        return FileRecord.from_doc(doc)

    # -- pins --

    async def pin(self, project: str, file_id: str, holder: str, *, now: float | None = None) -> FileRecord | None:
        """Keep the file's bytes while `holder` (e.g. a batch id) needs them; None if the file is not visible.

        Idempotent per holder. Deleting a pinned file hides it at once but defers its bytes.
        """
        doc = await self._collection.find_one_and_update(
            {"_id": file_id, **_visible(project, time.time() if now is None else now)},
            {"$addToSet": {PINS: holder}},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else FileRecord.from_doc(doc)

    async def unpin(self, file_id: str, holder: str) -> None:
        """Release `holder`'s pin; a file deleted or expired meanwhile goes at the next sweep."""
        await self._collection.update_one({"_id": file_id}, {"$pull": {PINS: holder}})

    # -- deletes --

    async def delete(self, project: str, file_id: str, *, now: float | None = None) -> bool:
        """Delete a visible file: hidden at once, bytes then document. False if not visible."""
        now = time.time() if now is None else now
        doc = await self._collection.find_one_and_update(
            {"_id": file_id, **_visible(project, now)},
            {"$set": {"state": DELETING, "updated_at": now}},
        )
        if doc is None:
            return False
        await self._remove(doc)
        return True

    async def _remove(self, doc: Doc) -> bool:
        """Bytes first, then the document; on an S3 failure the `deleting` document stays for the sweeper.

        `doc` is the document as it was claimed: its pins are final, since a `deleting` file cannot be
        pinned any more. A pinned file keeps everything until the sweeper finds it unpinned.
        """
        if doc.get(PINS):
            return False
        try:
            await self.objects.delete(doc["key"])
            if doc.get("state") == UPLOADING:
                await self._abort_multipart_uploads(doc["key"])
        except (ClientError, BotoCoreError, OSError):
            log.warning("could not delete the bytes of %s yet; the sweeper will retry", doc["_id"], exc_info=True)
            return False
        await self._collection.delete_one({"_id": doc["_id"], "state": DELETING})
        return True

    async def _abort_multipart_uploads(self, key: str) -> None:
        """Parts of an upload whose process died; S3 would otherwise keep (and bill) them."""
        client, bucket = self.objects.client, self.objects.bucket
        try:
            resp = await client.list_multipart_uploads(Bucket=bucket, Prefix=key)
        except ClientError:
            return  # not every S3 clone lists uploads; a bucket lifecycle rule covers the rest
        for upload in resp.get("Uploads", []) or []:
            if upload.get("Key") == key:
                await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])

    # -- the sweeper --

    async def sweep(
        self, *, stale_upload_seconds: float, now: float | None = None, batch_size: int = 500
    ) -> SweepReport:
        """Remove expired files, finish interrupted deletes, reclaim uploads abandoned by a dead process."""
        now = time.time() if now is None else now
        counts = {ACTIVE: 0, DELETING: 0, UPLOADING: 0}
        query = {"$or": [
            {"state": ACTIVE, "expires_at": {"$ne": None, "$lte": now}},
            # A live delete finishes in moments; an older `deleting` document lost its process.
            {"state": DELETING, "updated_at": {"$lte": now - 60}, f"{PINS}.0": {"$exists": False}},
            {"state": UPLOADING, "updated_at": {"$lte": now - stale_upload_seconds}},
        ]}
        docs = await self._collection.find(query, projection={"state": 1}).limit(batch_size).to_list()
        for doc in docs:
            # Claim by compare-and-set, so two sweepers (two api processes) remove each file once.
            claimed = await self._collection.find_one_and_update(
                {"_id": doc["_id"], "state": doc["state"]},
                {"$set": {"state": DELETING, "updated_at": now}},
            )
            if claimed is not None and await self._remove(claimed):
                counts[claimed["state"]] += 1
        return SweepReport(expired=counts[ACTIVE], deleted=counts[DELETING], stale_uploads=counts[UPLOADING])
