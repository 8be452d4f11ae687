"""Cancel and expiry mid-run, on real processes. The gated upstream decides how far the batch has got:
10 lines in chunks of 2; the test lets exactly one chunk finish and holds the next one in flight (the
worker runs one chunk at a time here, so "the next one" is well defined).
"""

from __future__ import annotations

import re

from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.models import GATED
from tests.support.processes import (
    WHOLE_BATCH,
    MakeStack,
    ServiceStack,
    assert_exactly_once,
    download_lines,
    upload,
    wait_status,
)
from tests.support.upstream import GatedUpstream
from tests.support.wait import wait_for

IDS = [f"line-{i}" for i in range(10)]


async def start_gated_batch(stack: ServiceStack, upstream: GatedUpstream):  # type: ignore[no-untyped-def]
    """A 5-chunk batch with its first chunk done and its second one in flight (held by the upstream)."""
    client = await stack.client()
    file_id = await upload(client, jsonl(chat_line(c, model=GATED, max_tokens=5) for c in IDS))
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    await upstream.allow(2)
    await upstream.wait_received(4)
    return client, batch.id


async def worker_chunk_counts(stack: ServiceStack) -> dict[str, float]:
    text = await stack.workers[0].metrics_text()
    return {m[0]: float(m[1]) for m in re.findall(r'offhours_worker_chunks_total\{outcome="(\w+)"\} (\S+)', text)}


async def wait_worker_handled(stack: ServiceStack, n: int, timeout_s: float = 60) -> dict[str, float]:
    """The worker's chunk counts by outcome, once it has handled at least `n` chunks."""
    async def handled() -> dict[str, float] | None:
        counts = await worker_chunk_counts(stack)
        return counts if sum(counts.values()) >= n else None

    return await wait_for(handled, timeout_s, interval=0.1, what=f"the worker to handle {n} chunks")


async def refused_done_results(stack: ServiceStack) -> float:
    """`done` chunk results the dispatcher received and refused (the ledger had settled the chunk already)."""
    assert stack.dispatcher is not None
    text = await stack.dispatcher.metrics_text()
    found = re.search(r'offhours_dispatcher_results_total\{(?=[^}]*counted="false")(?=[^}]*outcome="done")[^}]*\} (\S+)',
                      text)
    return float(found.group(1)) if found else 0.0


async def test_cancel_mid_run_drains_in_flight_work_and_keeps_partial_output(
    make_stack: MakeStack, upstream: GatedUpstream
) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1,
                             scheduling_window_margin_chunks=WHOLE_BATCH)
    client, batch_id = await start_gated_batch(stack, upstream)

    cancelling = await client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    await upstream.allow(2)  # the chunk in flight finishes: in-flight work drains, it is not thrown away
    batch = await wait_status(client, batch_id)

    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 4, 6)
    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert len(output) == 4 and all(o["response"]["status_code"] == 200 for o in output)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and len(errors) == 6
    assert all(e["response"] is None and e["error"]["line"] for e in errors)
    assert_exactly_once(output, errors, IDS)
    # The three chunks not started were skipped by the worker, never sent to the engine.
    counts = await wait_worker_handled(stack, 5)
    assert counts == {"done": 2.0, "skipped": 3.0}
    assert upstream.received == 4
    # The chunk ledger is deleted once the batch is final (the worker's counts above say how it ended).
    await wait_for(lambda: _ledger_gone(stack, batch_id), 30, what=f"the ledger of {batch_id} to go")


async def _ledger_gone(stack: ServiceStack, batch_id: str) -> bool:
    return await stack.ledger.count(batch_id) == 0


async def test_cancel_racing_completion_has_one_winner(make_stack: MakeStack, upstream: GatedUpstream) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1,
                             scheduling_window_margin_chunks=WHOLE_BATCH)
    client, batch_id = await start_gated_batch(stack, upstream)
    await upstream.release_all()
    # Cancel while the last chunks finish: whichever CAS wins, the batch ends in one consistent state.
    result = None
    try:
        result = await client.batches.cancel(batch_id)
    except Exception as exc:  # the batch was already finalizing/completed: a clean 400, not a 500
        assert getattr(exc, "status_code", None) == 400, exc
    batch = await wait_status(client, batch_id)
    assert batch.status in ("completed", "cancelled")
    if result is not None and result.status == "cancelling":
        assert batch.status == "cancelled"
    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert_exactly_once(output, errors, IDS)
    assert batch.request_counts.completed == len(output) and batch.request_counts.failed == len(errors)


async def test_expiry_keeps_finished_lines_and_fails_the_rest(make_stack: MakeStack, upstream: GatedUpstream) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1,
                             scheduling_window_margin_chunks=WHOLE_BATCH, batch_window_override_seconds=6.0)
    client, batch_id = await start_gated_batch(stack, upstream)

    batch = await wait_status(client, batch_id, timeout_s=60)
    assert batch.status == "expired" and batch.expired_at is not None and batch.finalizing_at is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 2, 8)
    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert len(output) == 2
    assert {e["error"]["code"] for e in errors} == {"batch_expired"} and len(errors) == 8
    assert_exactly_once(output, errors, IDS)

    # The chunk that was in flight finishes after the expiry: its late result must not change anything.
    await upstream.release_all()
    counts = await wait_worker_handled(stack, 5)
    assert counts.get("done") == 2.0
    # Wait until the dispatcher has received the late result and refused it, then look again.
    await wait_for(lambda: refused_done_results(stack), what="the dispatcher to refuse the late result")
    again = await client.batches.retrieve(batch_id)
    assert again.status == "expired" and again.request_counts == batch.request_counts
    assert await download_lines(client, again.output_file_id) == output
