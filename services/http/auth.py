"""API keys: `Authorization: Bearer <key>` on every `/v1` route; each key belongs to one project.

Keys are `sk-oh-` + 43 URL-safe random characters (256 bits). Only their SHA-256 is stored
(collection `api_keys`, `_id` = hex digest), so a database leak reveals no usable key; a slow
password hash would add nothing for keys with this much entropy and would cost every request.
A key is shown once, by `offhours keys create`; `offhours keys list` shows only a hint.

The middleware resolves the key to its project and puts it in `request[PROJECT_KEY]`; every
store query filters on it, which is what makes another project's ids answer 404.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.http.errors import unauthorized

API_KEYS_COLLECTION = "api_keys"
KEY_PREFIX = "sk-oh-"
PROJECT_KEY = web.RequestKey("project", str)
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Routes under this prefix need a key; /healthz, /metrics and /openapi.json do not.
PROTECTED_PREFIX = "/v1"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hint(key: str) -> str:
    """Enough to tell keys apart in a listing, far too little to guess one."""
    return f"{key[: len(KEY_PREFIX) + 4]}…{key[-4:]}"


def validate_project_name(project: str) -> str:
    if not PROJECT_NAME.fullmatch(project):
        raise ValueError(
            f"invalid project name {project!r}: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return project


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    hint: str
    project: str
    created_at: int


class ApiKeyStore:
    """The `api_keys` collection: `{_id: sha256(key), project, hint, created_at}`."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._collection = db[API_KEYS_COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._collection.create_indexes([IndexModel([("project", ASCENDING)])])

    async def create(self, project: str) -> tuple[str, ApiKeyRecord]:
        """A new key for `project`; the plaintext is returned here and never again."""
        validate_project_name(project)
        key = generate_key()
        record = ApiKeyRecord(hint=key_hint(key), project=project, created_at=int(time.time()))
        await self._collection.insert_one(
            {"_id": hash_key(key), "project": project, "hint": record.hint, "created_at": record.created_at}
        )
        return key, record

    async def resolve(self, key: str) -> str | None:
        """The project of `key`, or None if it is not a known key."""
        doc = await self._collection.find_one({"_id": hash_key(key)}, projection={"project": 1})
        return None if doc is None else str(doc["project"])

    async def list(self, project: str | None = None) -> list[ApiKeyRecord]:
        query = {} if project is None else {"project": project}
        cursor = self._collection.find(query).sort([("project", ASCENDING), ("created_at", ASCENDING)])
        return [ApiKeyRecord(d["hint"], d["project"], int(d["created_at"])) async for d in cursor]

    async def revoke(self, key: str) -> bool:
        result = await self._collection.delete_one({"_id": hash_key(key)})
        return result.deleted_count == 1


API_KEY_STORE_KEY = web.AppKey("api_key_store", ApiKeyStore)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def requires_key(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


async def authenticate(request: web.Request) -> str:
    """The project of the request's bearer key (also set on the request for the access log), or a 401.

    The `/v1` middleware and any route outside `/v1` that needs a key (the console's event stream)
    answer the same way.
    """
    token = bearer_token(request)
    if token is None:
        raise unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    # Reject junk before it costs a database round trip.
    project = None
    if token.startswith(KEY_PREFIX) and len(token) <= 256:
        project = await request.app[API_KEY_STORE_KEY].resolve(token)
    if project is None:
        raise unauthorized(f"Incorrect API key provided: {key_hint(token) if len(token) > 12 else '***'}.")
    request[PROJECT_KEY] = project
    return project


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if requires_key(request.path):
        await authenticate(request)
    return await handler(request)


def project_of(request: web.Request) -> str:
    """The authenticated project; a handler behind the auth middleware always has one."""
    project = request.get(PROJECT_KEY)
    if project is None:  # only a route mounted outside the middleware could get here
        raise unauthorized("This route requires an API key.")
    return project
