"""The console in a real headless Chromium against the service as real processes.

`offhours api` serves the console, the dispatcher and a `batch-test-model` worker run the batches,
and the page follows them over its event stream. Every test ends by checking the page saw no
uncaught exception, no console error and no dialog (tests/support/browser.py).

Screenshots: `OFFHOURS_CONSOLE_SCREENSHOTS=docs/console` writes each page's picture there
(docs/console.md shows them); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
import yaml
from playwright.async_api import Page, expect

from tests.console.conftest import ConsoleStack
from tests.support.browser import Watched
from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.processes import upload, wait_status
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

DS_TEST = "/v1/chat/ds-test"
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 60_000


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("OFFHOURS_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def sign_in(page: Page, url: str, key: str) -> None:
    await page.goto(f"{url}/")
    await page.locator("#api-key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)


def _project() -> str:
    return f"console-{uuid.uuid4().hex[:8]}"


async def test_upload_create_watch_and_download(
    console_stack: ConsoleStack, page: Watched, tmp_path: Path
) -> None:
    shots = _shots(tmp_path)
    project = _project()
    key = await console_stack.key(project)
    p = page.page
    await sign_in(p, console_stack.url, key)
    await expect(p.locator("#project")).to_have_text(f"project {project}")
    assert await p.evaluate("sessionStorage.getItem('offhours.apiKey')") == key
    assert await p.evaluate("document.cookie") == ""
    assert key not in p.url

    # Files: drop a JSONL file on the drop zone, as a user drags it from their desktop.
    ids = [f"row-{i}" for i in range(12)]
    content = jsonl(chat_line(c, model="batch-test-model", url=DS_TEST) for c in ids).decode()
    await p.get_by_role("link", name="Files").click()
    transfer = await p.evaluate_handle(
        """(text) => { const dt = new DataTransfer();
                       dt.items.add(new File([text], 'questions.jsonl', { type: 'application/jsonl' }));
                       return dt; }""",
        content,
    )
    await p.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    uploaded = p.locator("#upload-outcome [data-file-id]")
    await expect(uploaded).to_contain_text("Uploaded questions.jsonl as file-", timeout=TIMEOUT_MS)
    file_id = await uploaded.get_attribute("data-file-id")
    assert file_id is not None
    await expect(p.locator(f'#files tr[data-file-id="{file_id}"] .filename')).to_have_text("questions.jsonl")
    await _shot(p, shots, "files")

    # Batches: create one from that file and watch its bar fill without reloading the page.
    await p.get_by_role("link", name="Batches").click()
    await p.evaluate("window.__sameDocument = true")
    requests: list[str] = []
    p.on("request", lambda r: requests.append(r.url))
    form = p.locator("#create-batch")
    await expect(form.locator(f'select[name=input_file_id] option[value="{file_id}"]')).to_have_count(1)
    await form.locator("select[name=input_file_id]").select_option(file_id)
    await form.locator("select[name=endpoint]").select_option(DS_TEST)
    await form.locator("input[name=ds_name]").fill(XSS)
    await form.locator("input[name=ds_description]").fill("made in the browser")
    await form.locator("textarea[name=metadata]").fill("team=search")
    await form.get_by_role("button", name="Create batch").click()
    created = form.locator(".notice a")
    await expect(created).to_contain_text("batch_", timeout=TIMEOUT_MS)
    batch_id = (await created.text_content() or "").strip()

    row = p.locator(f'#batches tr[data-batch-id="{batch_id}"]')
    await expect(row.locator(".status")).to_have_attribute("data-status", "completed", timeout=TIMEOUT_MS)
    progress = row.locator(".progress")
    await expect(progress).to_have_attribute("data-completed", str(len(ids)))
    await expect(progress).to_have_attribute("data-total", str(len(ids)))
    await expect(row.locator(".counts")).to_have_text(f"{len(ids)} completed · 0 failed · {len(ids)} total")
    assert await p.evaluate("window.__sameDocument === true"), "the page reloaded"
    # Followed over the event stream: the page never asked for the batch itself.
    assert not [u for u in requests if f"/v1/batches/{batch_id}" in u], requests
    # The ds_name is shown as text; no element was made from it.
    await expect(row.locator(".ds-name")).to_have_text(XSS)
    assert await p.locator("img[src=x]").count() == 0
    await _shot(p, shots, "batches")

    # The batch: timeline, usage, download of its output.
    await row.locator("a").first.click()
    await expect(p.locator("#timeline [data-step=completed] .when")).not_to_have_text("—")
    await expect(p.locator("#usage")).to_contain_text("tokens")
    await expect(p.locator("#metadata")).to_contain_text(XSS)
    async with p.expect_download() as download_info:
        await p.get_by_role("button", name="Download output").click()
    download = await download_info.value
    saved = tmp_path / "output.jsonl"
    await download.save_as(saved)
    lines = [orjson.loads(x) for x in saved.read_bytes().splitlines() if x.strip()]
    assert [line["custom_id"] for line in lines] == ids
    assert all(line["response"]["status_code"] == 200 for line in lines)
    await _shot(p, shots, "batch")
    page.assert_clean()

    # The key never reaches a log line, not even the event stream's (logged when the page goes away).
    await p.close()

    def logs() -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in console_stack.services.logs.glob("*.log")
        )

    await wait_for(
        lambda: "GET /console/events 200" in logs(), 30, what="the closed stream's access log line"
    )
    assert key not in logs()


async def test_failing_batch_and_bad_upload_show_their_lines(
    console_stack: ConsoleStack, page: Watched, tmp_path: Path
) -> None:
    project = _project()
    key = await console_stack.key(project)
    client = openai.AsyncOpenAI(base_url=f"{console_stack.url}/v1", api_key=key, max_retries=0)
    try:
        good = chat_line("a", model="batch-test-model")
        lines = [good, b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}', good]
        failing = await client.batches.create(
            input_file_id=await upload(client, jsonl(lines)), endpoint=CHAT, completion_window="24h"
        )
        failed = await wait_status(client, failing.id)
        assert failed.status == "failed" and failed.errors is not None
        assert [(e.line, e.code) for e in failed.errors.data] == [
            (2, "missing_custom_id"),
            (3, "duplicate_custom_id"),
        ]
    finally:
        await client.close()

    p = page.page
    await sign_in(p, console_stack.url, key)
    await p.goto(f"{console_stack.url}/#/batches/{failing.id}")
    await expect(p.locator("#batch .status")).to_have_attribute("data-status", "failed", timeout=TIMEOUT_MS)
    errors = p.locator("#batch-errors tbody tr")
    await expect(errors).to_have_count(2)
    await expect(errors.nth(0).locator(".line")).to_have_text("2")
    await expect(errors.nth(0).locator(".code")).to_have_text("missing_custom_id")
    await expect(errors.nth(1).locator(".line")).to_have_text("3")
    await expect(errors.nth(1).locator(".code")).to_have_text("duplicate_custom_id")
    await expect(p.locator("#timeline [data-step=failed]")).to_have_class("reached bad")
    await _shot(p, _shots(tmp_path), "batch-errors")

    # A file that is not JSONL: the API's message, with the line, is what the page shows.
    page.expect_status(400)
    await p.get_by_role("link", name="Files").click()
    await p.locator("#upload-input").set_input_files(
        files=[{"name": "broken.jsonl", "mimeType": "application/jsonl", "buffer": b'{"ok": 1}\n[1, 2]\n'}]
    )
    await expect(p.locator("#upload-outcome .error")).to_contain_text(
        "Line 2 must be a JSON object", timeout=TIMEOUT_MS
    )
    await expect(p.locator("#upload-outcome .error")).to_contain_text("broken.jsonl")
    page.assert_clean()


async def test_wrong_key_is_refused_clearly(
    console_stack: ConsoleStack, page: Watched, tmp_path: Path
) -> None:
    page.expect_status(401)
    p = page.page
    await p.goto(f"{console_stack.url}/")
    await p.locator("#api-key").fill("sk-oh-this-key-does-not-exist-0000")
    await p.get_by_role("button", name="Sign in").click()
    message = p.locator("#signin-error [role=alert]")
    await expect(message).to_contain_text("This API key was not accepted", timeout=TIMEOUT_MS)
    await expect(message).to_contain_text("Incorrect API key provided")
    assert await p.evaluate("sessionStorage.getItem('offhours.apiKey')") is None
    await expect(p.locator("#nav")).to_be_hidden()
    await _shot(p, _shots(tmp_path), "sign-in")
    page.assert_clean()


async def test_webhooks_and_models_pages(console_stack: ConsoleStack, page: Watched, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    key = await console_stack.key(_project())
    p = page.page
    await sign_in(p, console_stack.url, key)

    await p.get_by_role("link", name="Webhooks").click()
    form = p.locator("#create-endpoint")
    await form.locator("input[name=url]").fill("http://127.0.0.1:9/hooks/offhours")
    await form.locator("input[name=name]").fill(XSS)
    await form.get_by_role("button", name="Create endpoint").click()
    secret = p.locator("#secret .secret")
    await expect(secret).to_contain_text("whsec_", timeout=TIMEOUT_MS)
    first_secret = await secret.text_content()
    endpoint = p.locator("#endpoints tbody tr").first
    await expect(endpoint.locator(".ep-name")).to_have_text(XSS)
    await endpoint.get_by_role("button", name="Rotate secret").click()
    await expect(secret).not_to_have_text(first_secret or "")
    await expect(secret).to_contain_text("whsec_")
    await endpoint.get_by_role("button", name="Disable").click()
    await expect(p.locator("#endpoints tbody tr").first).to_contain_text("disabled")
    await _shot(p, shots, "webhooks")

    await p.get_by_role("link", name="Models").click()
    model = p.locator('#models tr[data-model="batch-test-model"]')
    await expect(model).to_contain_text("/v1/chat/ds-test", timeout=TIMEOUT_MS)
    await expect(model.locator("td").nth(2)).to_have_text("1")
    await _shot(p, shots, "models")
    assert await p.locator("img[src=x]").count() == 0
    page.assert_clean()


_METRIC = re.compile(r"\b(offhours_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(offhours_[a-z0-9_]+)\{([^}]*)\}")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\w+)$", re.MULTILINE)
_SAMPLE_LINE = re.compile(r"^(offhours_[a-z0-9_]+)(?:\{([^}]*)\})? ", re.MULTILINE)
ROOT = Path(__file__).resolve().parents[2]
OPERATOR_FILES = [
    ROOT / "infra/grafana/offhours-dashboard.json",
    ROOT / "infra/prometheus/offhours-alerts.yaml",
]


def _expressions() -> list[str]:
    dashboard = orjson.loads(OPERATOR_FILES[0].read_bytes())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load(OPERATOR_FILES[1].read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs and all(isinstance(e, str) and e.strip() for e in exprs)
    return exprs


async def test_operator_metrics_exist_on_the_running_services(console_stack: ConsoleStack) -> None:
    """Every metric the Grafana dashboard and the alert rules query is served by a running process,
    and every label a selector filters on is one the metric has."""
    services = console_stack.services
    processes = [services.dispatcher, *services.workers, console_stack.notifier]
    assert services.api is not None
    texts = [await p.metrics_text() for p in processes if p is not None]
    async with aiohttp.ClientSession() as http, http.get(f"{console_stack.url}/metrics") as resp:
        texts.append(await resp.text())
    served: set[str] = set()
    labels: dict[str, set[str]] = {}
    for text in texts:
        for name, kind in _TYPE_LINE.findall(text):
            served.add(name)
            if kind == "histogram":
                served.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        for name, label_text in _SAMPLE_LINE.findall(text):
            served.add(name)
            found = {part.split("=", 1)[0].strip() for part in label_text.split(",") if "=" in part}
            labels.setdefault(name, set()).update(found)

    used = {m for expr in _expressions() for m in _METRIC.findall(expr)}
    assert used, "no offhours metric in the operator files"
    assert not sorted(used - served), f"queried but served by no process: {sorted(used - served)}"
    for expr in _expressions():
        for name, selector in _SELECTOR.findall(expr):
            wanted = {
                re.split(r"[!=~]", part, maxsplit=1)[0].strip()
                for part in selector.split(",")
                if part.strip()
            }
            if name in labels:  # a labelled metric shows its labels once it has a sample
                assert wanted <= labels[name] | {"le"}, (name, wanted, labels[name])
