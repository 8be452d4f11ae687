"""The Files API's entries in /openapi.json come from the same models the handlers use."""

from __future__ import annotations

from tests.support.files import FilesApi


async def test_files_routes_are_documented(files_api: FilesApi) -> None:
    status, doc = await files_api.call("GET", "/openapi.json")
    assert status == 200
    paths = doc["paths"]
    assert set(paths["/v1/files"]) == {"get", "post"}
    assert set(paths["/v1/files/{file_id}"]) == {"get", "delete"}
    assert set(paths["/v1/files/{file_id}/content"]) == {"get"}

    upload = paths["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = doc["components"]["schemas"][upload["$ref"].rsplit("/", 1)[1]]
    assert set(form["required"]) == {"file", "purpose"}
    assert form["properties"]["file"]["format"] == "binary"
    seconds = form["properties"]["expires_after[seconds]"]
    assert any(b.get("minimum") == 3600 and b.get("maximum") == 2592000 for b in seconds["anyOf"])

    listing = {p["name"]: p for p in paths["/v1/files"]["get"]["parameters"]}
    assert set(listing) == {"after", "limit", "order", "purpose"}
    assert "batch" in listing["purpose"]["schema"]["enum"]
    content = paths["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert content == {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    assert paths["/v1/files/{file_id}"]["get"]["parameters"][0]["name"] == "file_id"
