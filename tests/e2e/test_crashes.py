"""Invariant 1 under crashes: SIGKILL a worker mid-chunk, SIGKILL the dispatcher mid-batch, restart them;
every custom_id still ends up exactly once across the output and error files, and the counts match.
Also: two workers of one model share a batch, and a worker leaves cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.metrics import worker_chunk_counts
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


async def gated_batch_mid_run(stack: ServiceStack, upstream: GatedUpstream) -> tuple[Any, str]:
    """10 lines in 5 chunks: chunk one done, chunk two in flight (its requests held by the upstream)."""
    client = await stack.client()
    file_id = await upload(client, jsonl(chat_line(c, model=GATED) for c in IDS))
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    await upstream.allow(2)
    await upstream.wait_received(4)
    return client, batch.id


async def check_complete(client: Any, batch_id: str, ids: list[str]) -> Any:
    batch = await wait_status(client, batch_id, timeout_s=120)
    assert batch.status == "completed", batch.errors
    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert_exactly_once(output, errors, ids)
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        len(ids), len(output), len(errors))
    succeeded = {o["custom_id"] for o in output}
    assert [o["custom_id"] for o in output] == [c for c in ids if c in succeeded]  # input order
    return batch


async def test_worker_sigkilled_mid_chunk_is_redone_by_its_successor(
    make_stack: MakeStack, upstream: GatedUpstream
) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1,
                             scheduling_window_margin_chunks=WHOLE_BATCH)
    client, batch_id = await gated_batch_mid_run(stack, upstream)
    killed = stack.workers[0]

    async def counted() -> list[int]:
        return [c["index"] for c in await stack.ledger.chunks(batch_id) if c["status"] == "done"]

    # Chunk one's result is published before chunk two's requests are sent; the dispatcher counts it a
    # moment later.
    done_before = await wait_for(counted, what="chunk one counted")
    killed.kill()  # mid-chunk: its requests are in flight, nothing was committed for that chunk
    await upstream.release_all()
    successor = await stack.start_worker(GATED)

    batch = await check_complete(client, batch_id, IDS)
    assert batch.request_counts.failed == 0
    # The killed worker finished exactly the chunk it was allowed to; its successor did the other four,
    # including the one that was in flight at the kill (redelivered, new attempt). The ledger is gone
    # after finalize, so the successor's own count says it.
    assert len(done_before) == 1
    assert (await worker_chunk_counts(successor)).get("done") == 4


async def test_dispatcher_sigkilled_mid_batch_recovers_on_restart(
    make_stack: MakeStack, upstream: GatedUpstream
) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1,
                             scheduling_window_margin_chunks=WHOLE_BATCH)
    client, batch_id = await gated_batch_mid_run(stack, upstream)
    assert stack.dispatcher is not None
    stack.dispatcher.kill()
    # The workers carry on: their results wait in the results topic, uncounted (the dispatcher is dead:
    # the ledger moves only for results it counted).
    await upstream.release_all()
    await wait_for(lambda: upstream.answered >= 10, 60, interval=0.2, what="the worker to run every request")
    assert (await client.batches.retrieve(batch_id)).status == "in_progress"
    await stack.dispatcher.start()

    await check_complete(client, batch_id, IDS)


async def test_dispatcher_sigkilled_during_validation_recovers(make_stack: MakeStack) -> None:
    stack = await make_stack(workers=("null-model",))
    client = await stack.client()
    ids = [f"r{i:05d}" for i in range(20_000)]
    file_id = await upload(client, jsonl(chat_line(c) for c in ids))
    assert stack.dispatcher is not None
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    # Kill it as soon as the batch is no longer untouched (validating or beyond): wherever that lands
    # — mid-validation, mid-dispatch, mid-results or mid-finalize — the restart must finish the job.
    async def touched() -> bool:
        current = await client.batches.retrieve(batch.id)
        return current.status != "validating" or bool(await stack.ledger.chunks(batch.id))

    await wait_for(touched, 30, interval=0.01, what="the dispatcher to start on the batch")
    stack.dispatcher.kill()
    await stack.dispatcher.start()
    await check_complete(client, batch.id, ids)


async def test_two_workers_share_one_batch(make_stack: MakeStack) -> None:
    stack = await make_stack(workers=("null-model", "null-model"), chunk_lines={"null_model": 100},
                             scheduling_window_margin_chunks=WHOLE_BATCH)
    # Wait until the group has settled with both members owning partitions.
    owned: list[set[int]] = []

    async def shared() -> bool:
        docs = await stack.db["workers"].find({"model": "null-model"}).to_list(None)
        owned[:] = [set(d.get("stats", {}).get("partitions") or ()) for d in docs]
        return len(owned) == 2 and all(owned) and not (owned[0] & owned[1]) and len(owned[0] | owned[1]) == 8

    await wait_for(shared, 60, interval=0.2, what=lambda: f"the workers to share the topic (owned: {owned})")
    client = await stack.client()
    ids = [f"s{i:04d}" for i in range(3000)]  # 30 chunks over 8 partitions
    batch = await client.batches.create(input_file_id=await upload(client, jsonl(chat_line(c) for c in ids)),
                                        endpoint=CHAT, completion_window="24h")
    done = await check_complete(client, batch.id, ids)
    assert done.request_counts.total == 3000
    counts = [(await worker_chunk_counts(w)).get("done", 0) for w in stack.workers]
    assert sum(counts) >= 30 and all(counts), counts  # both workers ran chunks of the batch


async def test_worker_sigterm_finishes_the_chunk_in_hand_and_takes_no_more(
    make_stack: MakeStack, upstream: GatedUpstream
) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1,
                             scheduling_window_margin_chunks=WHOLE_BATCH)
    client, batch_id = await gated_batch_mid_run(stack, upstream)
    leaving = stack.workers[0]
    leaving.signal(signal.SIGTERM)
    await upstream.allow(2)  # the chunk in hand may finish within the grace period
    assert await asyncio.to_thread(leaving.proc.wait, 30) == 0  # type: ignore[union-attr]
    # A clean exit removes the worker's heartbeat at once (no 30 s of being listed while gone).
    assert await stack.db["workers"].count_documents({"pid": leaving.pid}) == 0
    assert upstream.received == 4  # it took no new chunk after SIGTERM

    await upstream.release_all()
    successor = await stack.start_worker(GATED)
    await check_complete(client, batch_id, IDS)
    assert (await worker_chunk_counts(successor)).get("done") == 3  # the leaving worker did the other 2
