"""Invariant 1 across a broker crash: SIGKILL the Kafka broker (Tansu, persisting onto its S3) mid-batch,
start it again on its port; the services reconnect, the dispatcher's sweep publishes again the chunks
that have gone without a result (docs/security.md, "Lost work is driven again") on the new broker, and
every custom_id still ends up exactly once.

With persistence the broker loses nothing it acknowledged, so the batch would finish without the sweep
too; what this shows is that the reconnected services, the re-sent chunks and the duplicate work they
make still add up to every line once.

The broker is a private one (its own launcher in tmp_path), so killing it harms no other test; MongoDB
and S3 are the session's shared servers, as for every other test.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from infra.launcher import InfraInfo, Launcher, is_ours
from infra.ports import port_in_use
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.local_servers import recorded_pid
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

IDS = [f"line-{i}" for i in range(10)]  # gated-model cuts 2 lines a chunk: 5 chunks


def _kafka_launcher(state_dir: Path) -> Launcher:
    # A new Launcher per call, as each `offhours infra up` is a new process; Kafka persists onto the
    # launcher's own S3, which is why this launcher starts all three servers.
    return Launcher(Settings(state_dir=state_dir, s3_bucket="kafka-restart"), state_dir=state_dir,
                    free_ports=True, persist=True, startup_timeout=90)


async def _kill_kafka(state_dir: Path, info: InfraInfo) -> None:
    os.kill(recorded_pid(state_dir, "kafka"), signal.SIGKILL)
    # Its PID turns zombie before its last thread has closed the listening socket: wait for both.
    await wait_for(lambda: not is_ours(info.processes["kafka"]) and not port_in_use("127.0.0.1", info.ports.kafka),
                   what="the killed Kafka to be gone")


async def _republished(dispatcher: ServiceProcess) -> float:
    """Pending chunks the dispatcher's sweep published again for want of a result (its metric)."""
    found = re.search(r'offhours_dispatcher_chunks_republished_total\{why="lost"\} (\S+)', await dispatcher.metrics_text())
    return float(found[1]) if found else 0.0


@pytest.mark.slow  # starts a second stack of servers and SIGKILLs its broker
async def test_batch_completes_exactly_once_across_a_kafka_sigkill_and_restart(
    make_stack: MakeStack, upstream: GatedUpstream, tmp_path: Path
) -> None:
    state_dir = tmp_path / "kafka-infra"
    first = await _kafka_launcher(state_dir).up()
    stack: ServiceStack | None = None
    try:
        assert first.persist
        stack = await make_stack(
            workers=(GATED,), worker_chunks_in_flight=1, scheduling_window_margin_chunks=WHOLE_BATCH,
            kafka_bootstrap_servers=first.kafka_bootstrap_servers,
            # A pending chunk without a result for 2 s is published again (lost work or a slow chunk:
            # the ledger's compare-and-set refuses the duplicate run either way).
            chunk_republish_min_seconds=2.0, chunk_republish_factor=1.0,
        )
        client = await stack.client()
        file_id = await upload(client, jsonl(chat_line(c, model=GATED) for c in IDS))
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")

        # Two chunks answered and counted, the third in flight (its requests held by the upstream).
        await upstream.allow(4)
        await upstream.wait_received(6)

        async def two_counted() -> list[int] | None:
            assert stack is not None
            done = [c["index"] for c in await stack.ledger.chunks(batch.id) if c["status"] == "done"]
            return done if len(done) >= 2 else None

        done_before = await wait_for(two_counted, 60, what="two chunks counted")
        assert len(done_before) == 2  # the third is held by the upstream; the worker takes one chunk at a time

        await _kill_kafka(state_dir, first)
        # The in-flight chunk finishes while the broker is down: its result waits in the worker's producer.
        await upstream.allow(2)

        again = await _kafka_launcher(state_dir).up()
        assert again.started == ["kafka"] and sorted(again.already_running) == ["mongo", "s3"]
        assert again.ports == first.ports and again.persist

        # The last two chunks stay without a result while the upstream holds their requests: the sweep
        # publishes them again (pending past 2 s), which takes a producer reconnected to the new broker.
        # Counted from here on, so a publish the old broker acknowledged does not count.
        assert stack.dispatcher is not None
        dispatcher = stack.dispatcher
        before = await _republished(dispatcher)

        async def republished_since() -> bool:
            return await _republished(dispatcher) > before

        await wait_for(republished_since, 120, interval=0.2,
                       what=lambda: f"the sweep to publish a pending chunk again\n{stack and stack.log_tail()}")
        await upstream.release_all()

        done = await wait_status(client, batch.id, timeout_s=180)
        assert done.status == "completed", (done.errors, stack.log_tail())
        output = await download_lines(client, done.output_file_id)
        errors = await download_lines(client, done.error_file_id)
        assert_exactly_once(output, errors, IDS)
        assert not errors
        assert [o["custom_id"] for o in output] == IDS  # input order
        counts = done.request_counts
        assert (counts.total, counts.completed, counts.failed) == (10, 10, 0)
    finally:
        try:
            if stack is not None:
                await stack.close()  # before its broker goes: a service stops at once with Kafka up
        finally:
            await _kafka_launcher(state_dir).down()

