"""Events fitted to a size limit: only the errors list gives way, marked as cut (pure functions)."""

from __future__ import annotations

from typing import Any

import orjson

from schemas.events import (
    ERRORS_LEFT_OUT_CODE,
    OUTBOX_EVENT_MAX_BYTES,
    TRUNCATED_ATTRIBUTE,
    CloudEvent,
    batch_event,
    event_size,
    fit_event,
)
from schemas.openai_objects import BatchErrors


def batch(errors: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "batch_1", "object": "batch", "status": "failed", "request_counts": {"total": 3},
            "errors": {"object": "list", "data": errors} if errors is not None else None, **extra}


def error(message: str, line: int) -> dict[str, Any]:
    return {"code": "invalid_method", "message": message, "param": "method", "line": line}


def test_an_event_that_fits_is_left_alone() -> None:
    event = batch_event("batch.failed", batch([error("bad", 1)])).model_dump(mode="json")
    assert fit_event(event, 64 * 1024) == event
    assert TRUNCATED_ATTRIBUTE not in event


def test_huge_quoted_strings_are_cut_and_every_error_kept() -> None:
    huge = "x" * 5_000_000
    event = CloudEvent(id="batch_1.failed", type="batch.failed", data=batch([error(huge, n) for n in (1, 2, 3)]))
    fitted = fit_event(event.model_dump(mode="json"), 64 * 1024)
    assert fitted is not None and event_size(fitted) <= 64 * 1024
    assert fitted[TRUNCATED_ATTRIBUTE] is True
    entries = fitted["data"]["errors"]["data"]
    assert [e["line"] for e in entries] == [1, 2, 3]
    assert all(e["message"].endswith("…[cut: 5000000 characters]") for e in entries)
    BatchErrors.model_validate(fitted["data"]["errors"])  # still the Batch object's shape


def test_too_many_errors_end_in_a_summary_entry() -> None:
    entries = [error("y" * 190, n) for n in range(1, 101)]
    event = CloudEvent(id="batch_1.failed", type="batch.failed", data=batch(entries)).model_dump(mode="json")
    limit = 4096
    fitted = fit_event(event, limit)
    assert fitted is not None and event_size(fitted) <= limit
    shown = fitted["data"]["errors"]["data"]
    assert shown[-1]["code"] == ERRORS_LEFT_OUT_CODE
    kept = shown[:-1]
    assert kept == entries[: len(kept)] and len(kept) < 100
    assert f"{100 - len(kept)} more errors" in shown[-1]["message"]
    BatchErrors.model_validate(fitted["data"]["errors"])


def test_an_event_with_nothing_to_cut_cannot_be_fitted() -> None:
    event = CloudEvent(id="batch_1.created", type="batch.created",
                       data=batch(metadata={"k": "z" * 10_000})).model_dump(mode="json")
    assert fit_event(event, 4096) is None


def test_a_batch_event_is_bounded_whatever_its_errors_quote() -> None:
    # 3 lines quoting 5 MB each: the event the store pushes into the outbox stays small.
    event = batch_event("batch.failed", batch([error("m" * 5_000_000, n) for n in (1, 2, 3)]))
    dumped = event.model_dump(mode="json")
    assert len(orjson.dumps(dumped)) <= OUTBOX_EVENT_MAX_BYTES
    assert dumped[TRUNCATED_ATTRIBUTE] is True and dumped["id"] == "batch_1.failed"
