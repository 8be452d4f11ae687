"""The console over plain HTTP: its page and files, its headers, and its live event stream.

The stream is fed by real batch events: batches are moved through their statuses by the real store
and outbox (tests/support/notifier.py), which publish to the session's Kafka, and the api app's own
reader hands them out per project.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from services.console.app import CONTENT_SECURITY_POLICY
from services.console.fleet import FleetMetrics
from services.state.workers import WorkerStore
from tests.support.api import Api
from tests.support.notifier import open_batches
from tests.support.sse import ServerEvent, server_events


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


async def test_page_is_served_with_a_strict_policy(console_api: Api) -> None:
    async with console_api.http.get(f"{console_api.url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        html = await resp.text()
        headers = resp.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"

    tags = _Tags()
    tags.feed(html)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts and all(attrs.get("src", "").startswith("/console/") for attrs in scripts)
    assert tags.script_text.strip() == ""
    for tag, attrs in tags.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)


async def test_static_files_and_revalidation(console_api: Api) -> None:
    expected = {"console.js": "text/javascript", "console.css": "text/css", "icon.svg": "image/svg+xml"}
    for name, content_type in expected.items():
        async with console_api.http.get(f"{console_api.url}/console/{name}") as resp:
            assert resp.status == 200, name
            assert resp.content_type == content_type
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            etag = resp.headers["ETag"]
            assert len(await resp.read()) > 0
        async with console_api.http.get(
            f"{console_api.url}/console/{name}", headers={"If-None-Match": etag}
        ) as resp:
            assert resp.status == 304
    for missing in ("nope.js", "..%2Fapp.py", "app.py"):
        async with console_api.http.get(f"{console_api.url}/console/{missing}") as resp:
            assert resp.status == 404, missing


async def test_script_never_parses_strings_as_html(console_api: Api) -> None:
    """The page builds DOM with textContent only; the policy's Trusted Types would make these throw anyway."""
    async with console_api.http.get(f"{console_api.url}/console/console.js") as resp:
        script = await resp.text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "localStorage" not in script and "document.cookie" not in script
    assert re.search(r"sessionStorage\.setItem\(KEY_STORAGE", script)


@pytest.mark.parametrize("authorization", [None, "Bearer sk-oh-not-a-real-key-at-all", "Basic abc"])
async def test_event_stream_needs_a_key(console_api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body = await console_api.call("GET", "/console/events", headers=headers)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "not-a-real-key" not in body["error"]["message"]


async def _next(events: AsyncIterator[ServerEvent], timeout_s: float = 30) -> ServerEvent:
    return await asyncio.wait_for(anext(events), timeout_s)


async def _until(events: AsyncIterator[ServerEvent], batch_id: str, event_type: str) -> list[ServerEvent]:
    """Every event up to and including `event_type` of `batch_id`."""
    seen = []
    while True:
        event = await _next(events)
        seen.append(event)
        if event.event == "batch" and event.data["subject"] == batch_id and event.data["type"] == event_type:
            return seen


async def _open(api: Api, key: str) -> aiohttp.ClientResponse:
    resp = await api.http.get(
        f"{api.url}/console/events",
        headers={"Authorization": f"Bearer {key}"},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
    )
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    return resp


async def test_stream_carries_only_the_projects_batch_events(console_api: Api) -> None:
    key_a, project_a = await console_api.key()
    key_b, project_b = await console_api.key()
    resp_a, resp_b = await _open(console_api, key_a), await _open(console_api, key_b)
    try:
        events_a, events_b = server_events(resp_a), server_events(resp_b)
        ready_a, ready_b = await _next(events_a), await _next(events_b)
        assert (ready_a.event, ready_a.data) == ("ready", {"project": project_a})
        assert (ready_b.event, ready_b.data) == ("ready", {"project": project_b})

        async with open_batches(console_api.settings) as batches:
            b_id = await batches.complete(project_b, {"ds_name": "<img src=x onerror=alert(1)>"})
            seen_b = await _until(events_b, b_id, "batch.completed")
            a_id = await batches.create(project_a)
            await batches.advance(a_id, ["in_progress", "finalizing", "completed"])
            seen_a = await _until(events_a, a_id, "batch.completed")
            # Everything the reader handed out before B's last event is in A's stream by now; one
            # more A event proves nothing of B's is queued behind.
            last_a = await batches.create(project_a)
            seen_a += await _until(events_a, last_a, "batch.created")

        assert [e.data["type"] for e in seen_b if e.data["subject"] == b_id] == [
            "batch.created",
            "batch.in_progress",
            "batch.finalizing",
            "batch.completed",
        ]
        assert seen_b[-1].data["data"]["metadata"] == {"ds_name": "<img src=x onerror=alert(1)>"}
        assert {e.data["subject"] for e in seen_a} == {a_id, last_a}
        assert [e.data["type"] for e in seen_a if e.data["subject"] == a_id] == [
            "batch.created",
            "batch.in_progress",
            "batch.finalizing",
            "batch.completed",
        ]
        final = seen_a[-2]
        assert final.id == f"{a_id}.completed" and final.data["data"]["status"] == "completed"
    finally:
        resp_a.close()
        resp_b.close()


async def test_metrics_carry_fleet_gauges(console_api: Api) -> None:
    async with console_api.http.get(f"{console_api.url}/metrics") as resp:
        text = await resp.text()
    for name in (
        "offhours_batches_active",
        "offhours_batch_idle_seconds_max",
        "offhours_workers_live",
        "offhours_fleet_refreshed_timestamp_seconds",
    ):
        assert f"# TYPE {name} gauge" in text, name
    assert 'offhours_batches_active{status="in_progress"}' in text


async def test_fleet_gauges_count_what_waits(console_api: Api) -> None:
    """The gauges read the shared state: active batches by status, how long the oldest sat still, workers."""
    _, project = await console_api.key()
    async with open_batches(console_api.settings) as batches:
        waiting = await batches.create(project)
        running = await batches.create(project)
        await batches.advance(running, ["in_progress"])
        await batches.complete(project)
    await WorkerStore(console_api.db).beat(
        "w-console-1",
        {"model": "null-model", "endpoints": ["/v1/chat/completions"], "last_seen": time.time()},
    )
    fleet = FleetMetrics(CollectorRegistry(), console_api.db, liveness_seconds=30)
    await fleet.refresh()
    assert fleet.active.labels("validating")._value.get() == 1
    assert fleet.active.labels("in_progress")._value.get() == 1
    assert fleet.active.labels("finalizing")._value.get() == 0
    assert fleet.idle.labels("validating")._value.get() >= 0
    assert fleet.workers.labels("null-model")._value.get() == 1

    await WorkerStore(console_api.db).remove("w-console-1")
    await fleet.refresh()
    assert fleet.workers.labels("null-model")._value.get() == 0  # a lost model stays listed, at 0
    del waiting
