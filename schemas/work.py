"""The two internal Kafka messages between the dispatcher and the workers, and the S3 keys they name.

- `WorkChunk` on `{prefix}.work.<model>`: one per chunk of a batch's input file. It carries a byte
  range of the stored input, never request bodies, so a 6 MB line never meets a broker message
  limit (docs/architecture.md, "Invariants").
- `WorkResult` on `{prefix}.work.results`: one per processed chunk *attempt*. The dispatcher's ledger
  CAS lets only the first result of a chunk count (docs/architecture.md).

Keys and line ids are pure functions of the batch id, chunk index and attempt id, so a redelivered
chunk, a re-run finalize or a restarted process writes exactly the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class WorkChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batch_id: str
    project: str
    chunk: int  # 0-based index, also the order of its lines in the output files
    start: int  # byte offset of the chunk's first line in the input object
    end: int  # byte offset just past its last line
    first_line: int  # 1-based number of the line at `start`
    line_count: int  # request lines (blank lines inside the range are not counted)
    input_key: str
    endpoint: str
    model: str


ChunkOutcome = Literal["done", "skipped"]


class WorkResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batch_id: str
    chunk: int
    attempt: str
    outcome: ChunkOutcome
    output_key: str | None = None  # None: the attempt produced no successful line
    error_key: str | None = None  # None: no failed line
    succeeded: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    worker: str | None = None


def chunk_id(batch_id: str, chunk: int) -> str:
    """The ledger document id and the Kafka key of a chunk (spreads one batch over partitions)."""
    return f"{batch_id}:{chunk}"


def url_input_key(batch_id: str) -> str:
    """Where the dispatcher stores the copy of a batch's URL input."""
    return f"batches/{batch_id}/input.jsonl"


def input_object_key(batch: Mapping[str, Any]) -> str:
    """The S3 object a batch's chunks are byte ranges of: the stored file, or the copy of its URL input."""
    source = batch.get("input") or {}
    return url_input_key(batch["_id"]) if source.get("kind") == "url" else str(source["key"])


def parts_prefix(batch_id: str) -> str:
    return f"batches/{batch_id}/parts/"


def part_keys(batch_id: str, chunk: int, attempt: str) -> tuple[str, str]:
    """(output part, error part) of one attempt at one chunk."""
    base = f"{parts_prefix(batch_id)}{chunk:06d}/{attempt}"
    return f"{base}.output.jsonl", f"{base}.errors.jsonl"


def line_id_prefix(batch_id: str) -> str:
    """The Pipeline `id_prefix` of a batch: line ids become `batch_req_<batch hex>_<line:08d>`."""
    return f"{batch_id.removeprefix('batch_')}_"


def line_id(batch_id: str, number: int) -> str:
    """The output/error line id of input line `number` — the same one the worker's Pipeline writes."""
    return f"batch_req_{line_id_prefix(batch_id)}{number:08d}"
