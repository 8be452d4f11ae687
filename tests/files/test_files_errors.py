"""Every malformed Files API request gets the right 4xx, OpenAI-shaped, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.files import FilesApi, MakeFilesApi, jsonl_lines
from tests.support.wait import wait_for


def assert_error(status: int, body: Any, want_status: int, *, param: str | None = None,
                 code: str | None = None, contains: str | None = None) -> None:
    assert status == want_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] in ("invalid_request_error", "authentication_error")
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if contains is not None:
        assert contains in err["message"], err


# -- authentication --


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer sk-oh-not-a-real-key-000000000000000000000000"},
    {"Authorization": "Bearer sk-proj-from-another-service"},
])
async def test_missing_or_wrong_key_is_401(files_api: FilesApi, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/files"), ("POST", "/v1/files"), ("GET", "/v1/files/file-x"),
                         ("DELETE", "/v1/files/file-x"), ("GET", "/v1/files/file-x/content")]:
        status, body = await files_api.call(method, path, headers=headers)
        assert_error(status, body, 401, code="invalid_api_key")


async def test_sdk_sees_authentication_error(files_api: FilesApi) -> None:
    with pytest.raises(openai.AuthenticationError):
        await files_api.client("sk-oh-wrong").files.list()


# -- upload form --


async def test_missing_file_part(files_api: FilesApi) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("purpose", "batch")
    status, body = await files_api.call("POST", "/v1/files", await files_api.key(), data=form)
    assert_error(status, body, 400, param="file", code="missing_required_parameter")


async def test_missing_purpose(files_api: FilesApi) -> None:
    status, body = await files_api.upload(await files_api.key(), jsonl_lines(1), purpose=None)
    assert_error(status, body, 400, param="purpose", code="missing_required_parameter")
    assert await files_api.leftovers() == ([], [])


@pytest.mark.parametrize("file_first", [False, True])
async def test_unknown_purpose(files_api: FilesApi, file_first: bool) -> None:
    status, body = await files_api.upload(await files_api.key(), b"data", purpose="nonsense", file_first=file_first)
    assert_error(status, body, 400, param="purpose", contains="nonsense")
    assert await files_api.leftovers() == ([], [])


async def test_sdk_sees_bad_request_for_unknown_purpose(files_api: FilesApi) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await files_api.client(await files_api.key()).files.create(file=("a.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]
    assert info.value.param == "purpose"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "param"), [
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after[seconds]"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after[seconds]"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after[seconds]"),
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "expires_after[anchor]"),
    ({"expires_after[seconds]": "3600"}, "expires_after"),
    ({"colour": "blue"}, "colour"),
])
async def test_bad_form_fields(files_api: FilesApi, extra: dict[str, str], param: str) -> None:
    status, body = await files_api.upload(await files_api.key(), b"x", purpose="user_data", extra=extra)
    assert_error(status, body, 400, param=param)
    assert await files_api.leftovers() == ([], [])


async def test_purpose_given_twice(files_api: FilesApi) -> None:
    form = aiohttp.FormData()
    form.add_field("purpose", "user_data")
    form.add_field("purpose", "batch")
    form.add_field("file", b"x", filename="a.txt")
    status, body = await files_api.call("POST", "/v1/files", await files_api.key(), data=form)
    assert_error(status, body, 400, param="purpose")


async def test_two_file_parts(files_api: FilesApi) -> None:
    form = aiohttp.FormData()
    form.add_field("purpose", "user_data")
    form.add_field("file", b"x", filename="a.txt")
    form.add_field("file", b"y", filename="b.txt")
    status, body = await files_api.call("POST", "/v1/files", await files_api.key(), data=form)
    assert_error(status, body, 400, param="file")
    assert await files_api.leftovers() == ([], [])


async def test_not_multipart(files_api: FilesApi) -> None:
    key = await files_api.key()
    status, body = await files_api.call("POST", "/v1/files", key, json={"purpose": "batch", "file": "abc"})
    assert_error(status, body, 400, code="invalid_content_type")
    status, body = await files_api.call("POST", "/v1/files", key, data=b"x",
                                        headers={"Content-Type": "multipart/form-data"})
    assert_error(status, body, 400, code="invalid_multipart")


async def test_truncated_multipart_body(files_api: FilesApi) -> None:
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
            + b"no closing boundary" * 100)
    status, err = await files_api.call("POST", "/v1/files", await files_api.key(), data=body,
                                       headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert_error(status, err, 400, code="invalid_multipart")
    assert await files_api.leftovers() == ([], [])


async def test_unsupported_transfer_encoding(files_api: FilesApi) -> None:
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--XyZ--\r\n")
    status, err = await files_api.call("POST", "/v1/files", await files_api.key(), data=body,
                                       headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert_error(status, err, 400, param="file")


# -- batch files: JSONL shape, with the line number --


@pytest.mark.parametrize(("content", "line", "code"), [
    (b'{"a": 1}\n[1, 2]\n', 2, "invalid_json"),
    (b'{"a": 1}\n\n{"b": \n', 3, "invalid_json"),
    (b'{"a": 1}\r\n"just a string"\r\n', 2, "invalid_json"),
    (b'{"a": 1}\n{"b": "\xff\xfe"}\n', 2, "invalid_utf8"),
    (b"", 0, "empty_file"),
])
@pytest.mark.parametrize("file_first", [False, True])
async def test_bad_batch_file_names_the_line(
    files_api: FilesApi, content: bytes, line: int, code: str, file_first: bool
) -> None:
    status, body = await files_api.upload(await files_api.key(), content, file_first=file_first)
    assert_error(status, body, 400, param="file", code=code)
    if line:
        assert f"Line {line}" in body["error"]["message"]
    assert await files_api.leftovers() == ([], [])


async def test_same_bytes_are_fine_for_other_purposes(files_api: FilesApi) -> None:
    status, body = await files_api.upload(await files_api.key(), b"[1, 2]\nnot json\n", purpose="user_data")
    assert status == 200, body


async def test_batch_line_and_count_limits(make_files_api: MakeFilesApi) -> None:
    api = await make_files_api(max_line_bytes=100, max_requests_per_batch=3)
    key = await api.key()
    long_line = json.dumps({"x": "y" * 200}).encode()
    status, body = await api.upload(key, b'{"a": 1}\n' + long_line + b"\n")
    assert_error(status, body, 400, param="file", code="line_too_large", contains="Line 2")

    status, body = await api.upload(key, b'{"a": 1}\n\n{"a": 2}\n{"a": 3}\n\n{"a": 4}\n')
    assert_error(status, body, 400, param="file", code="too_many_lines", contains="Line 6")
    # Blank lines do not count: three requests spread over five lines are fine.
    status, body = await api.upload(key, b'{"a": 1}\n\n{"a": 2}\n\n{"a": 3}')
    assert status == 200, body
    assert len(await api.objects.list_keys("files/")) == 1


# -- size limit --


@pytest.mark.parametrize("send_length", [True, False])
async def test_too_large_is_413_and_aborted(make_files_api: MakeFilesApi, send_length: bool) -> None:
    limit = 6 * 1024 * 1024  # above one S3 part, so a multipart upload is under way when it trips
    api = await make_files_api(max_file_bytes=limit)
    key = await api.key()

    async def chunks() -> Any:
        for _ in range(8):
            yield b"z" * (1024 * 1024)

    # bytes: aiohttp sends a Content-Length and the early check answers before any byte is read;
    # a generator is sent chunked, so the limit trips while streaming.
    data: Any = b"z" * (limit + 1) if send_length else chunks()
    status, body = await api.upload(key, data, purpose="user_data")
    assert_error(status, body, 413, param="file", code="file_too_large")
    assert await api.leftovers() == ([], [])

    exact = b"z" * limit
    status, body = await api.upload(key, exact, purpose="user_data")
    assert status == 200 and body["bytes"] == limit, body


# -- query parameters and ids --


@pytest.mark.parametrize(("query", "param"), [
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("limit=ten", "limit"),
    ("order=sideways", "order"),
    ("after=batch_123", "after"),
    ("after=file-" + "x" * 100, "after"),
    ("purpose=bogus", "purpose"),
])
async def test_bad_list_parameters(files_api: FilesApi, query: str, param: str) -> None:
    status, body = await files_api.call("GET", f"/v1/files?{query}", await files_api.key())
    assert_error(status, body, 400, param=param)


@pytest.mark.parametrize("file_id", ["file-doesnotexist", "nonsense", "file-" + "0" * 24])
async def test_unknown_id_is_404(files_api: FilesApi, file_id: str) -> None:
    key = await files_api.key()
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/content")]:
        status, body = await files_api.call(method, f"/v1/files/{file_id}{suffix}", key)
        assert_error(status, body, 404, param="file_id", code="file_not_found")


async def test_wrong_method_and_unknown_route(files_api: FilesApi) -> None:
    key = await files_api.key()
    status, body = await files_api.call("PUT", "/v1/files", key)
    assert_error(status, body, 405, code="method_not_allowed")
    status, body = await files_api.call("GET", "/v1/filez", key)
    assert_error(status, body, 404, code="unknown_url")


async def test_client_disconnect_mid_upload_leaves_nothing(files_api: FilesApi) -> None:
    """The client goes away after 7 MiB (one S3 part is already uploaded): everything is undone."""
    key = await files_api.key()
    host, port = files_api.url.removeprefix("http://").split(":")
    head = (b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n')
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                 + b"\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000000\r\n\r\n" + head)
    for _ in range(7):
        writer.write(b"\0" * (1024 * 1024))
        await writer.drain()
    async def upload_started() -> bool:
        return bool((await files_api.leftovers())[1])

    await wait_for(upload_started, 5, what="the server to start the upload")
    writer.close()
    await writer.wait_closed()

    async def undone() -> bool:
        return await files_api.leftovers() == ([], [])

    await wait_for(undone, 5, what="the aborted upload to be undone")
