"""Dispatch happens once: a dispatcher SIGKILLed after its pass recorded the plan, before `in_progress`,
is finished by its successor from that plan. The input URL, changed meanwhile, is not fetched again."""

from __future__ import annotations

from services.state.batches import BatchStore
from tests.support.inputs import InputServer
from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.processes import MakeStack, download_lines, wait_status
from tests.support.wait import wait_for

LINES = 600  # one line per chunk: hundreds of chunk messages keep the dispatch window open to kill in


async def test_a_dispatcher_killed_before_in_progress_finishes_the_first_plan(make_stack: MakeStack) -> None:
    stack = await make_stack(workers=("null-model",), chunk_lines={"null_model": 1})
    first = [f"first-{i}" for i in range(LINES)]
    inputs = await InputServer(jsonl(chat_line(c) for c in first)).start()
    try:
        client = await stack.client()
        batch = await client.batches.create(input_file_id=f"{inputs.base}/input.jsonl", endpoint=CHAT,
                                            completion_window="24h")
        batches = BatchStore(stack.db)

        async def planned() -> bool:
            doc = await batches.get(batch.id)
            return doc is not None and bool(doc.get("dispatch_plan"))

        await wait_for(planned, 60, interval=0.005, what="the pass to record its plan")
        assert stack.dispatcher is not None
        stack.dispatcher.kill()
        doc = await batches.get(batch.id)
        assert doc is not None and doc["status"] == "validating", "killed too late to test the window"
        inputs.body = jsonl(chat_line(f"second-{i}") for i in range(5))  # the URL changes before the restart
        await stack.dispatcher.start()

        done = await wait_status(client, batch.id, timeout_s=240)
        assert done.status == "completed", done.errors
        output = await download_lines(client, done.output_file_id)
        assert [o["custom_id"] for o in output] == first
        assert done.request_counts.total == LINES and done.request_counts.completed == LINES
        assert inputs.gets == 1
    finally:
        await inputs.stop()
