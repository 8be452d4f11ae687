"""A dispatcher SIGKILLed while it admits chunks: its successor rebuilds the queues from the ledger,
re-publishes admitted chunks whose message may be lost (killed between the admission CAS and the
publish), and the batch completes with every line exactly once."""

from __future__ import annotations

from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.models import GATED
from tests.support.processes import MakeStack, assert_exactly_once, download_lines, upload, wait_status
from tests.support.upstream import GatedUpstream
from tests.support.wait import wait_for

IDS = [f"k-{i:03d}" for i in range(60)]  # 30 chunks of 2 lines, a window of 2


async def test_dispatcher_sigkilled_while_admitting_recovers(make_stack: MakeStack, upstream: GatedUpstream) -> None:
    stack = await make_stack(workers=(GATED,), worker_chunks_in_flight=1, scheduling_window_margin_chunks=1,
                             chunk_republish_min_seconds=2.0)
    client = await stack.client()
    file_id = await upload(client, jsonl(chat_line(c, model=GATED) for c in IDS))
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")

    async def admitted() -> int:
        return sum(1 for c in await stack.ledger.chunks(batch.id) if c.get("admitted"))

    await wait_for(lambda: stack.ledger.count(batch.id), 60, what="the batch's chunks in the ledger")
    await upstream.release_all()  # results stream back and every one of them admits the next chunk
    async def under_way() -> bool:
        return await admitted() >= 6

    await wait_for(under_way, 60, interval=0.005, what="admissions under way")
    assert stack.dispatcher is not None
    stack.dispatcher.kill()
    left = await admitted()
    assert left < len(IDS) // 2, "killed too late: every chunk was already admitted"
    await stack.dispatcher.start()

    done = await wait_status(client, batch.id, timeout_s=180)
    assert done.status == "completed", done.errors
    output = await download_lines(client, done.output_file_id)
    errors = await download_lines(client, done.error_file_id)
    assert_exactly_once(output, errors, IDS)
    assert [o["custom_id"] for o in output] == IDS and errors == []
    assert done.request_counts.completed == len(IDS)
