"""API keys: Bearer auth on /v1, hashes only at rest, and the `offhours keys` command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.http.auth import API_KEYS_COLLECTION, ApiKeyStore, hash_key, key_hint, validate_project_name
from services.http.service import DB_KEY
from services.runtime.child_process import settings_env
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from tests.support.http_app import Served


@pytest.mark.parametrize("header", [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Token sk-oh-abc",
    "Bearer sk-oh-" + "A" * 43,
    "Bearer " + "x" * 5_000,
])
async def test_missing_or_wrong_key(served: Served, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = await served.call("GET", "/v1/bad", headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "invalid_api_key"
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert "x" * 20 not in body["error"]["message"]  # a long bad key is not echoed back


async def test_operational_routes_need_no_key(served: Served) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await served.call("GET", path)).status == 200


async def test_keys_are_stored_only_as_hashes(served: Served) -> None:
    store = ApiKeyStore(served.app[DB_KEY])
    key, record = await store.create("vault")
    assert key.startswith("sk-oh-") and len(key) > 40
    docs = await served.app[DB_KEY][API_KEYS_COLLECTION].find({}).to_list()
    assert [d["_id"] for d in docs] == [hash_key(key)]
    assert key not in repr(docs)
    assert record.hint == key_hint(key) and key not in record.hint
    assert await store.resolve(key) == "vault"
    assert await store.resolve(key + "x") is None

    assert await store.revoke(key)
    assert (await served.call("GET", "/v1/bad", key)).status == 401


async def test_scheme_is_case_insensitive(served: Served) -> None:
    key = await served.key()
    resp = await served.call("GET", "/v1/bad", headers={"Authorization": f"bearer {key}"})
    assert resp.status == 400  # authenticated: the route's own error


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "ü"])
def test_project_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError):
        validate_project_name(name)


def _offhours(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFHOURS_", "AWS_", "S3_", "MONGODB_"))}
    env.update(settings_env(settings))
    return subprocess.run([sys.executable, "-m", "services.cli.main", "keys", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


async def test_keys_command_creates_once_and_lists_hints(settings: Settings) -> None:
    created = _offhours(settings, "create", "--project", "cli-proj")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-oh-") and "\n" not in key

    listed = _offhours(settings, "list")
    assert listed.returncode == 0, listed.stderr
    assert "cli-proj" in listed.stdout and key_hint(key) in listed.stdout
    assert key not in listed.stdout

    db = open_database(settings)
    try:
        assert await ApiKeyStore(db).resolve(key) == "cli-proj"
    finally:
        await close_database(db)

    assert _offhours(settings, "create", "--project", "bad name").returncode == 2
    assert _offhours(settings, "revoke", stdin=key + "\n").returncode == 0
    assert _offhours(settings, "revoke", stdin=key + "\n").returncode == 1
