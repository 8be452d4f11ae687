"""Finalize: turn a batch's ledger into its output and error files and its terminal status.

Steps (docs/architecture.md, "Lifecycle" 5), each safe to repeat after a crash:
1. CAS `in_progress -> finalizing` (completed, expired) — or stay in `cancelling` (cancelled). The
   target outcome is stored on the document, so a resumed finalize knows what it was doing.
2. CAS every still-pending chunk to `abandoned`: a result arriving now loses its ledger CAS.
3. Stream, in chunk order, the winning attempt's parts of each done chunk into the output and error
   files (S3 multipart); for skipped/abandoned chunks re-read their byte range and write each line to
   the error file as `batch_expired` / `batch_cancelled`. Keys and file ids derive from the batch
   id, so a second run overwrites the first with the same bytes.
4. Register the files (`batch_output`; with the batch's `output_expires_after`, each expires that many
   seconds after its own `created_at`), then CAS to the terminal status with counts, usage and file
   ids, flagged `cleanup_pending`.
5. Clean up (`clean_up`): release the input pin, delete the parts (a losing attempt's too), the URL
   input's copy and the chunk ledger, then clear the flag. A process that dies before that leaves
   the flag, and the sweep cleans up.

Memory: a few chunks' result parts and one multipart part per file, whatever the batch size.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from schemas.batch_lines import error_line
from schemas.line_validation import LineValidator
from schemas.work import input_object_key, line_id, parts_prefix
from services.state.batches import CLEANUP_FIELD, BatchStore
from services.state.chunk_objects import PartWriter, iter_raw_lines
from services.state.files import FileStore, object_key
from services.state.ledger import PENDING, ChunkLedger
from services.state.outbox import EventPublisher
from services.stores.s3 import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

Outcome = Literal["completed", "expired", "cancelled"]
OUTCOME_FIELD = "finalize_outcome"
UNFINISHED: dict[str, tuple[str, str]] = {
    "expired": ("batch_expired", "the batch expired before this request was processed"),
    "cancelled": ("batch_cancelled", "the batch was cancelled before this request was processed"),
    # Not reachable in the normal flow (completed means no chunk was pending); kept so a broken
    # invariant still yields a located line rather than a lost one.
    "completed": ("request_not_processed", "this request was not processed"),
}
BATCH_OUTPUT = "batch_output"
_WRITE_EVERY = 512  # unfinished lines buffered per write to the multipart writer
_READ_AHEAD = 4  # result parts fetched ahead of the writer


def output_file_id(batch_id: str, kind: Literal["output", "error"]) -> str:
    """The batch's output/error file id: `file-<24 hex>` like any file, but derived from the batch id.

    The first 8 hex digits are the batch's ObjectId timestamp, so these ids sort (and page) near the
    batch's own creation; the rest is a hash, so a re-run of finalize names the same file.
    """
    hex_id = batch_id.removeprefix("batch_")
    digest = hashlib.sha1(f"{batch_id}:{kind}".encode()).hexdigest()
    return f"file-{hex_id[:8]}{digest[:16]}"


@dataclass(slots=True)
class Assembly:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_bytes: int = 0
    error_bytes: int = 0


async def _write_unfinished(
    store: ObjectStore, batch: dict[str, Any], chunk: dict[str, Any], outcome: str, sink: PartWriter,
    max_line_bytes: int,
) -> int:
    """Every request line of the chunk as an error line; returns how many."""
    code, message = UNFINISHED[outcome]
    batch_id = batch["_id"]
    validator = LineValidator(endpoint=batch["endpoint"], model=batch.get("model"), max_line_bytes=max_line_bytes)
    buf: list[bytes] = []
    count = 0
    async for raw in iter_raw_lines(store, input_object_key(batch), int(chunk["start"]), int(chunk["end"]),
                                    int(chunk["first_line"]), max_line_bytes):
        item = validator.validate(raw)
        if item is None:
            continue
        count += 1
        buf.append(orjson.dumps(error_line(line_id(batch_id, item.number), item.custom_id, code, message,
                                           line=item.number)))
        if len(buf) >= _WRITE_EVERY:
            await sink.write(b"\n".join(buf) + b"\n")
            buf.clear()
    if buf:
        await sink.write(b"\n".join(buf) + b"\n")
    return count


async def assemble(
    store: ObjectStore, ledger: ChunkLedger, batch: dict[str, Any], outcome: str, *,
    output_key: str, error_key: str, max_line_bytes: int,
) -> tuple[Assembly, str | None, str | None]:
    """Write the output and error files; returns the counts and the keys actually written (None = empty).

    Parts are fetched `_READ_AHEAD` chunks ahead of the writer (each part is one chunk's results, so
    memory stays a few chunks' worth) and written strictly in chunk order.
    """
    result = Assembly()
    chunks = await ledger.chunks(batch["_id"])
    fetches: dict[int, asyncio.Task[tuple[bytes, bytes]]] = {}

    async def fetch(chunk: dict[str, Any]) -> tuple[bytes, bytes]:
        out_key, err_key = chunk.get("output_key"), chunk.get("error_key")
        return (await store.get_bytes(out_key) if out_key else b"",
                await store.get_bytes(err_key) if err_key else b"")

    def prefetch(upto: int) -> None:
        for i in range(upto, min(upto + _READ_AHEAD, len(chunks))):
            if i not in fetches and chunks[i]["status"] == "done":
                fetches[i] = asyncio.create_task(fetch(chunks[i]))

    out, err = PartWriter(store, output_key), PartWriter(store, error_key)
    try:
        async with out, err:
            for i, chunk in enumerate(chunks):
                prefetch(i)
                lines = int(chunk.get("line_count") or 0)
                result.total += lines
                if chunk["status"] == "done":
                    output, errors = await fetches.pop(i)
                    await out.write(output)
                    await err.write(errors)
                    succeeded, failed = int(chunk.get("succeeded") or 0), int(chunk.get("failed") or 0)
                    if succeeded + failed != lines:
                        log.error("chunk %s reports %d+%d lines, the ledger planned %d",
                                  chunk["_id"], succeeded, failed, lines)
                    result.succeeded += succeeded
                    result.failed += failed
                    result.input_tokens += int(chunk.get("input_tokens") or 0)
                    result.output_tokens += int(chunk.get("output_tokens") or 0)
                else:  # skipped, abandoned (pending only if an invariant broke)
                    if chunk["status"] == PENDING:
                        log.error("finalizing %s with chunk %s still pending", batch["_id"], chunk["_id"])
                    result.unfinished += await _write_unfinished(store, batch, chunk, outcome, err, max_line_bytes)
            result.output_bytes, result.error_bytes = out.bytes_written, err.bytes_written
    finally:
        for task in fetches.values():
            task.cancel()
        await asyncio.gather(*fetches.values(), return_exceptions=True)
    return result, out.key, err.key


def output_ttl_seconds(batch: dict[str, Any]) -> int | None:
    """Seconds the batch's output and error files live (its `output_expires_after`); None: forever."""
    policy = batch.get("output_expires_after")
    seconds = policy.get("seconds") if isinstance(policy, dict) else None
    return int(seconds) if isinstance(seconds, int | float) else None


def usage_of(a: Assembly) -> dict[str, Any]:
    return {
        "input_tokens": a.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": a.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": a.input_tokens + a.output_tokens,
    }


async def release_input(files: FileStore, doc: dict[str, Any]) -> None:
    """Drop the batch's pin on its input file: a terminal batch no longer reads it, so a delete
    or expiry that happened meanwhile may now remove the bytes."""
    if (doc.get("input") or {}).get("kind") == "file":
        await files.unpin(doc["input_file_id"], doc["_id"])


async def clean_up(
    *, batches: BatchStore, ledger: ChunkLedger, store: ObjectStore, files: FileStore, doc: dict[str, Any]
) -> None:
    """Release what a terminal batch held: input pin, result parts, URL input copy, chunk ledger.

    Every step is idempotent; the flag goes last, so a failure here (raised) leaves the work to the
    sweep. The ledger goes after the parts: a late result then finds no pending chunk and counts nothing.
    """
    batch_id = doc["_id"]
    await release_input(files, doc)
    await store.delete_prefix(parts_prefix(batch_id))
    if (doc.get("input") or {}).get("kind") == "url":
        await store.delete(input_object_key(doc))
    await ledger.delete_batch(batch_id)
    await batches.cleanup_done(batch_id)


class Finalizer:
    def __init__(
        self, *, batches: BatchStore, ledger: ChunkLedger, store: ObjectStore, files: FileStore,
        publisher: EventPublisher, max_line_bytes: int,
    ) -> None:
        self.batches = batches
        self.ledger = ledger
        self.store = store
        self.files = files
        self.publisher = publisher
        self.max_line_bytes = max_line_bytes

    async def _enter(self, batch_id: str, outcome: Outcome) -> tuple[dict[str, Any], str, Outcome] | None:
        """Claim the batch for finalizing; (doc, status to CAS from at the end, outcome) or None if lost."""
        doc = await self.batches.get(batch_id)
        if doc is None:
            return None
        status = doc["status"]
        if outcome == "cancelled":
            return (doc, "cancelling", outcome) if status == "cancelling" else None
        if status == "in_progress":
            new = await self.batches.transition(batch_id, "in_progress", "finalizing", set={OUTCOME_FIELD: outcome})
            if new is None:
                return None  # a cancel (or another finalizer) won the CAS
            await self.publisher.publish_outbox(new)
            return new, "finalizing", outcome
        if status == "finalizing":  # resume what a dead dispatcher started
            return doc, "finalizing", doc.get(OUTCOME_FIELD) or outcome
        return None

    async def finalize(self, batch_id: str, outcome: Outcome) -> bool:
        """Run finalize to the terminal status; False when another writer owns the batch's fate."""
        claimed = await self._enter(batch_id, outcome)
        if claimed is None:
            return False
        doc, from_status, outcome = claimed
        started = time.perf_counter()
        abandoned = await self.ledger.abandon_pending(batch_id)
        out_id, err_id = output_file_id(batch_id, "output"), output_file_id(batch_id, "error")
        out_key, err_key = object_key(out_id), object_key(err_id)
        try:
            a, wrote_out, wrote_err = await assemble(
                self.store, self.ledger, doc, outcome, output_key=out_key, error_key=err_key,
                max_line_bytes=self.max_line_bytes,
            )
        except ObjectNotFound:
            # A part vanished: only a finalize that already completed deletes parts. Check, don't guess.
            current = await self.batches.get(batch_id)
            if current is not None and current["status"] == outcome:
                return False
            raise
        project = doc["project"]
        # OpenAI's rule: an output file when any request succeeded, an error file when any failed.
        out_file = err_file = None
        ttl = output_ttl_seconds(doc)
        if wrote_out is not None:
            await self._register(project, out_key, f"{batch_id}_output.jsonl", a.output_bytes, out_id, ttl)
            out_file = out_id
        if wrote_err is not None:
            await self._register(project, err_key, f"{batch_id}_error.jsonl", a.error_bytes, err_id, ttl)
            err_file = err_id
        counts = {"total": a.total, "completed": a.succeeded, "failed": a.failed + a.unfinished}
        new = await self.batches.transition(batch_id, from_status, outcome, set={
            "request_counts": counts,
            "usage": usage_of(a),
            "output_file_id": out_file,
            "error_file_id": err_file,
            CLEANUP_FIELD: True,
        })
        if new is None:
            return False
        await self.publisher.publish_outbox(new)
        log.info("batch %s %s: %d ok, %d failed, %d unfinished (%d chunks abandoned) in %.2fs",
                 batch_id, outcome, a.succeeded, a.failed, a.unfinished, abandoned,
                 time.perf_counter() - started)
        await self.clean_up(new)
        return True

    async def _register(self, project: str, key: str, filename: str, size: int, file_id: str,
                        ttl: int | None) -> None:
        # OpenAI's anchor is the file's own creation, so each file gets `created_at + ttl` from the
        # moment it is registered (a re-run after a crash finds the file and keeps its first times).
        now = time.time()
        await self.files.register_existing(project, key, filename, BATCH_OUTPUT, size, file_id=file_id,
                                           expires_at=None if ttl is None else int(now) + ttl, now=now)

    async def clean_up(self, doc: dict[str, Any]) -> bool:
        """`clean_up` for a terminal batch; False (logged) when it failed and is left to the sweep."""
        try:
            await clean_up(batches=self.batches, ledger=self.ledger, store=self.store, files=self.files, doc=doc)
        except Exception:  # the batch is final already; what is left is garbage the sweep removes
            log.warning("cleaning up after %s failed; the sweep retries", doc["_id"], exc_info=True)
            return False
        return True
