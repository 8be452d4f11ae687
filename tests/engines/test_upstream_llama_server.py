"""The upstream engine managing a real `python -m llama_cpp.server` (the `llama-cpp` preset).

This is the same code path a FastDeploy or vLLM deployment takes — spawn from a preset, wait
for health, supervise, retry — on a server that runs on a CPU.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from schemas.inference import ChatCompletion, Completion
from schemas.line_validation import ValidLine
from services.inference.engines.base import EngineRequest
from services.inference.engines.model_files import SMOLLM2_GGUF
from services.inference.engines.upstream import UpstreamEngine
from services.inference.pipeline import Pipeline, PipelineStats

pytestmark = pytest.mark.slow  # a real model behind a real llama.cpp server

MODEL = "smollm2-upstream"
N_CTX = 512
OVERFLOW = "word " * 600  # over the server's 512-token window


class ListSink:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data

    def lines(self) -> list[dict]:
        return [orjson.loads(line) for line in self.data.splitlines()]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UpstreamEngine]:
    log_file = tmp_path_factory.mktemp("llama-server") / "server.log"
    e = UpstreamEngine(MODEL, max_concurrency=6, backoff_base_s=0.1, backoff_max_s=1.0, server={
        "preset": "llama-cpp", "model": SMOLLM2_GGUF, "max_model_len": N_CTX, "served_model_name": MODEL,
        "startup_timeout_s": 120, "restart_backoff_s": 0.2, "log_file": str(log_file)})
    async with e:
        yield e


def chat(content: str, **params: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **params}


async def test_chat_and_completions_through_the_managed_server(engine: UpstreamEngine) -> None:
    assert engine.server is not None and engine.server.ready
    result = await engine.infer(EngineRequest("/v1/chat/completions", chat("Name a fruit.", max_tokens=3)))
    assert result.status_code == 200, result.body
    body = ChatCompletion.model_validate(result.body)
    assert body.choices[0].finish_reason == "length"
    assert body.usage.completion_tokens == 3
    assert body.usage.total_tokens == body.usage.prompt_tokens + 3
    result = await engine.infer(EngineRequest("/v1/completions", {"model": MODEL, "prompt": "Apples are",
                                                                    "max_tokens": 2}))
    assert result.status_code == 200, result.body
    assert Completion.model_validate(result.body).usage.completion_tokens == 2


async def test_the_servers_400_is_kept_for_the_line(engine: UpstreamEngine) -> None:
    retries = engine.retries
    result = await engine.infer(EngineRequest("/v1/chat/completions", chat(OVERFLOW, max_tokens=4)))
    assert result.status_code == 400
    assert result.body["error"]["code"] == "context_length_exceeded"  # llama_cpp.server's own body
    assert "512" in result.body["error"]["message"]
    assert engine.retries == retries  # a 4xx is the request's fault: never retried


async def test_server_killed_mid_batch_loses_and_duplicates_nothing(engine: UpstreamEngine) -> None:
    server = engine.server
    assert server is not None
    lines = [ValidLine(i, 0, 0, f"line-{i}", "/v1/chat/completions", chat(f"Say {i}.", max_tokens=6))
             for i in range(1, 17)]
    lines[9] = ValidLine(10, 0, 0, "line-10", "/v1/chat/completions", chat(OVERFLOW, max_tokens=4))
    killed: list[int] = []
    restarts, retries = server.restarts, engine.retries

    def kill_after_three(stats: PipelineStats) -> None:
        if stats.total >= 3 and not killed and server.pid is not None:
            killed.append(server.pid)
            os.kill(server.pid, signal.SIGKILL)

    output, errors = ListSink(), ListSink()
    stats = await Pipeline(engine, output=output, errors=errors, id_prefix="kill",
                           on_progress=kill_after_three).run(lines)

    assert killed, "the server was never killed"
    assert server.restarts == restarts + 1
    assert server.pid != killed[0]
    assert engine.retries > retries  # requests in flight at the kill were sent again
    out, err = output.lines(), errors.lines()
    ids = [line["custom_id"] for line in out + err]
    assert sorted(ids) == sorted(f"line-{i}" for i in range(1, 17))  # every line exactly once
    assert [line["custom_id"] for line in err] == ["line-10"]
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["error"]["code"] == "context_length_exceeded"
    assert all(line["response"]["status_code"] == 200 for line in out)
    assert stats.succeeded == 15 and stats.failed == 1
    assert stats.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in out)
    assert [line["custom_id"] for line in out] == [f"line-{i}" for i in range(1, 17) if i != 10]  # input order


async def test_close_stops_the_server(tmp_path: Path) -> None:
    e = UpstreamEngine(MODEL, server={"preset": "llama-cpp", "model": SMOLLM2_GGUF, "max_model_len": 256,
                                      "log_file": str(tmp_path / "s.log")})
    await e.start()
    assert e.server is not None
    pid = e.server.pid
    assert pid is not None
    await e.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
