"""URL input (streaming GET) and URL output (PUT) against a real aiohttp server on loopback.

The server is scripted per test: it answers 201 or 204 to a PUT, fails with 500 a given number
of times, refuses with 403, serves the input with or without Range support, or drops the
connection in the middle of the body.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from services.cli.run_batch.locations import staging_name
from tests.support.run_batch import (
    OFFHOURS,
    REPO,
    acli,
    chat_line,
    read_results,
    run_in_process,
    write_lines,
    write_many,
)
from tests.support.staging import staged_files, staging_dirs


@dataclass
class Storage:
    """What the server holds and how it misbehaves."""

    objects: dict[str, bytes] = field(default_factory=dict)
    put_status: int = 201
    put_failures: int = 0  # answer this many PUTs with 500 first
    get_failures: int = 0  # answer this many GETs with 503 first
    drop_after: int | None = None  # cut the first GET's body after this many bytes
    stall_after: int | None = None  # send this many bytes of the first GET's body, then nothing
    stalled: asyncio.Event = field(default_factory=asyncio.Event)  # set once a GET stalls
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends every stall (teardown)
    ranges: bool = True
    puts: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (status, headers) of each PUT
    gets: list[str | None] = field(default_factory=list)  # the Range header of each GET
    base: str = ""

    def url(self, name: str, query: str = "") -> str:
        return f"{self.base}/{name}" + (f"?{query}" if query else "")


def build_app(storage: Storage) -> web.Application:
    async def get(request: web.Request) -> web.StreamResponse:
        storage.gets.append(request.headers.get("Range"))
        if storage.get_failures:
            storage.get_failures -= 1
            return web.Response(status=503, text="busy, try later")
        data = storage.objects.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404, text="no such object")
        start = 0
        rng = request.headers.get("Range")
        if rng and storage.ranges:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        resp = web.StreamResponse(status=206 if start else 200)
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp.content_length = len(data) - start
        await resp.prepare(request)
        body = data[start:]
        if storage.drop_after is not None:
            cut, storage.drop_after = storage.drop_after, None
            await resp.write(body[:cut])
            assert request.transport is not None
            request.transport.close()  # the connection breaks mid-body
            return resp
        if storage.stall_after is not None:
            cut, storage.stall_after = storage.stall_after, None
            await resp.write(body[:cut])
            storage.stalled.set()
            await storage.release.wait()  # a server that stops sending without closing
            return resp
        for i in range(0, len(body), 1 << 16):
            await resp.write(body[i : i + (1 << 16)])
        await resp.write_eof()
        return resp

    async def put(request: web.Request) -> web.Response:
        body = await request.read()
        if storage.put_failures:
            storage.put_failures -= 1
            storage.puts.append((500, dict(request.headers)))
            return web.Response(status=500, text="internal error")
        storage.puts.append((storage.put_status, dict(request.headers)))
        if storage.put_status < 300:
            storage.objects[request.match_info["name"]] = body
            return web.Response(status=storage.put_status, text="" if storage.put_status == 204 else "ok")
        return web.Response(status=storage.put_status, text="AccessDenied: signature expired")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/{name}", get)
    app.router.add_put("/{name}", put)
    return app


@pytest_asyncio.fixture(loop_scope="session")
async def storage() -> AsyncIterator[Storage]:
    s = Storage()
    runner = web.AppRunner(build_app(s))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    s.base = f"http://127.0.0.1:{port}"
    yield s
    s.release.set()
    await runner.cleanup()


def example_lines(n: int = 30) -> list[dict]:  # type: ignore[type-arg]
    return [chat_line(i) for i in range(n)]


async def test_url_input_is_streamed(storage: Storage, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines())
    storage.objects["in.jsonl"] = src.read_bytes()
    out = tmp_path / "out.jsonl"
    rc, text = await run_in_process(input=storage.url("in.jsonl"), output=out)
    assert rc == 0, text
    assert [r.custom_id for r in read_results(out)] == [f"request-{i}" for i in range(30)]


async def test_url_input_retries_a_busy_server(storage: Storage, tmp_path: Path) -> None:
    storage.objects["in.jsonl"] = write_lines(tmp_path / "in.jsonl", example_lines(3)).read_bytes()
    storage.get_failures = 2
    rc, text = await run_in_process(input=storage.url("in.jsonl"), output=tmp_path / "out.jsonl")
    assert rc == 0, text
    assert len(storage.gets) == 3


@pytest.mark.parametrize("ranges", [True, False])
async def test_url_input_continues_after_a_dropped_connection(storage: Storage, tmp_path: Path,
                                                              ranges: bool) -> None:
    src = write_many(tmp_path / "in.jsonl", 5000)
    storage.objects["in.jsonl"] = src.read_bytes()
    storage.drop_after = 100_003  # mid-line
    storage.ranges = ranges
    out = tmp_path / "out.jsonl"
    rc, text = await run_in_process(input=storage.url("in.jsonl"), output=out)
    assert rc == 0, text
    assert [r.custom_id for r in read_results(out)] == [f"request-{i}" for i in range(5000)]
    assert storage.gets[1] == "bytes=100003-"  # asked for the rest only


async def test_missing_url_input_exits_2_and_touches_nothing(storage: Storage, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"precious\n")
    rc, text = await run_in_process(input=storage.url("nope.jsonl"), output=out)
    assert rc == 2
    assert "cannot read input" in text and "HTTP 404" in text and "no such object" in text
    assert out.read_bytes() == b"precious\n"


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_put_output_any_2xx_is_success(storage: Storage, tmp_path: Path, status: int) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines())
    storage.put_status = status
    url = storage.url("out.jsonl", "X-Amz-Signature=abc")
    rc, text = await acli("-i", str(src), "-o", url, "--model", "batch-test-model",
                          "--output-tmp-dir", str(tmp_path))
    assert rc == 0, text
    assert f"uploaded (HTTP {status})" in text
    assert "X-Amz-Signature" not in text  # credentials in a presigned URL are not printed
    uploaded = tmp_path / "uploaded.jsonl"
    uploaded.write_bytes(storage.objects["out.jsonl"])
    assert [r.custom_id for r in read_results(uploaded)] == [f"request-{i}" for i in range(30)]
    _, headers = storage.puts[0]
    assert int(headers["Content-Length"]) == len(storage.objects["out.jsonl"])
    assert staged_files(tmp_path) == [] and staging_dirs(tmp_path) == []  # removed once uploaded


async def test_put_output_retries_5xx_then_succeeds(storage: Storage, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines())
    storage.put_failures = 2
    rc, text = await run_in_process(input=src, output=storage.url("out.jsonl"), output_tmp_dir=tmp_path)
    assert rc == 0, text
    assert [s for s, _ in storage.puts] == [500, 500, 201]
    assert storage.objects["out.jsonl"].count(b"\n") == 30


async def test_put_output_that_always_fails_exits_2_and_resume_uploads_later(storage: Storage,
                                                                            tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines())
    storage.put_failures = 1000
    url = storage.url("out.jsonl", "sig=first")
    rc, text = await acli("-i", str(src), "-o", url, "--model", "batch-test-model", "--output-tmp-dir",
                          str(tmp_path), "--http-attempts", "3", "--retry-backoff", "0.01")
    assert rc == 2, text
    assert "upload to" in text and "failed after 3 tries" in text and "HTTP 500" in text
    assert len(storage.puts) == 3
    [staged] = staged_files(tmp_path)
    built = staged.read_bytes()
    assert built.count(b"\n") == 30  # kept for a retry
    # The server is back and the URL was presigned again: --resume uploads, nothing is rerun.
    storage.put_failures = 0
    rc, text = await run_in_process(input=src, output=storage.url("out.jsonl", "sig=second"),
                                    output_tmp_dir=tmp_path, resume=True)
    assert rc == 0, text
    assert "30 lines were already done" in text and "(0 lines this run)" in text
    assert storage.objects["out.jsonl"] == built
    assert not staged.exists() and staging_dirs(tmp_path) == []


async def test_a_url_output_is_staged_mode_0600_in_a_private_folder(storage: Storage, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines(3))
    storage.put_failures = 1000
    url = storage.url("out.jsonl")
    folders: list[Path] = []
    for _ in range(2):
        rc, text = await run_in_process(input=src, output=url, error_file=storage.url("err.jsonl"),
                                        output_tmp_dir=tmp_path, http_attempts=1)
        assert rc == 2, text
        [new] = set(staging_dirs(tmp_path)) - set(folders)
        folders.append(new)
    # Two runs, two folders with names nobody could guess beforehand: nothing to plant a link at.
    first, second = folders
    for folder in (first, second):
        assert folder.is_dir() and not folder.is_symlink()
        assert folder.stat().st_mode & 0o777 == 0o700
        files = sorted(folder.iterdir())
        assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert sorted(f.name for f in first.iterdir()) == sorted(f.name for f in second.iterdir())
    assert f"the output is kept in {second / staging_name(url)} — rerun the same command with --resume" in text


async def test_resume_uses_no_staging_folder_others_can_write_to(storage: Storage, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines(3))
    storage.put_failures = 1000
    rc, text = await run_in_process(input=src, output=storage.url("out.jsonl"), output_tmp_dir=tmp_path,
                                    http_attempts=1)
    assert rc == 2, text
    [staged] = staged_files(tmp_path)
    staged.parent.chmod(0o777)  # as if planted by another user of a shared temp folder
    storage.put_failures = 0
    rc, text = await run_in_process(input=src, output=storage.url("out.jsonl"), output_tmp_dir=tmp_path,
                                    resume=True)
    assert rc == 0, text
    assert "no earlier output found" in text and "(3 lines this run)" in text
    assert staging_dirs(tmp_path) == [staged.parent]  # the new run's folder is gone after its upload


async def test_put_refused_with_403_is_not_retried(storage: Storage, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", example_lines(2))
    storage.put_status = 403
    rc, text = await run_in_process(input=src, output=storage.url("out.jsonl"), output_tmp_dir=tmp_path)
    assert rc == 2
    assert "refused" in text and "HTTP 403" in text and "signature expired" in text
    assert len(storage.puts) == 1


async def test_error_file_can_be_a_url_too(storage: Storage, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1), b"{bad", chat_line(2)])
    storage.objects["in.jsonl"] = src.read_bytes()
    storage.put_status = 204
    rc, text = await run_in_process(input=storage.url("in.jsonl"), output=storage.url("out.jsonl"),
                                    error_file=storage.url("err.jsonl"), output_tmp_dir=tmp_path,
                                    output_headers={"Content-Type": "application/jsonl"})
    assert rc == 1, text
    assert storage.objects["out.jsonl"].count(b"\n") == 2
    assert b'"code":"invalid_json"' in storage.objects["err.jsonl"]
    assert all(h["Content-Type"] == "application/jsonl" for _, h in storage.puts)


async def test_unreachable_url_input_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    rc, text = await run_in_process(input="http://127.0.0.1:9/in.jsonl", output=tmp_path / "out.jsonl",
                                    http_attempts=2)
    assert rc == 2
    assert "cannot read input http://127.0.0.1:9/in.jsonl" in text and "gave up after 2 tries" in text


async def test_second_ctrl_c_stops_at_once_even_while_the_input_stalls(storage: Storage,
                                                                       tmp_path: Path) -> None:
    src = write_many(tmp_path / "in.jsonl", 3000)
    storage.objects["in.jsonl"] = src.read_bytes()
    storage.stall_after = 150_000  # about half the file, then silence
    out = tmp_path / "out.jsonl"
    args = ["run-batch", "-i", storage.url("in.jsonl"), "-o", str(out), "--model", "batch-test-model",
            "--no-progress"]
    proc = await asyncio.create_subprocess_exec(OFFHOURS, *args, cwd=REPO, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    await asyncio.wait_for(storage.stalled.wait(), 30)
    await asyncio.sleep(1.0)  # let it take in what the server sent
    proc.send_signal(signal.SIGINT)
    first = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"stopping" in first and b"Ctrl-C again" in first
    proc.send_signal(signal.SIGINT)  # the input is stalled: the graceful stop cannot finish
    rc = await asyncio.wait_for(proc.wait(), 30)
    rest = (await proc.stderr.read()).decode()
    assert rc == 130, rest
    assert "stopped at once" in rest and "--resume" in rest and "Traceback" not in rest
    # The server is well again: --resume finishes the file.
    rc, text = await run_in_process(input=storage.url("in.jsonl"), output=out, resume=True)
    assert rc == 0, text
    assert [r.custom_id for r in read_results(out)] == [f"request-{i}" for i in range(3000)]
