"""Webhook endpoints and the per-project callback secret, in MongoDB.

`webhook_endpoints` documents (`_id` = `whep_<ObjectId hex>`, so `_id` order is creation order and
the shared cursor paging works):
    project, url, name, description, event_types, enabled, created_at, updated_at (epoch seconds),
    secrets: [{enc, hint, created_at, expires_at}] newest first, secrets_version (bumped by every
    rotation, which is conditioned on it). `enc` is the AES-GCM token of the `whsec_` secret
    (secrets.py); `expires_at` is None for the current secret and the end of the grace period for a
    rotated-out one. Every secret that has not expired signs.

`webhook_callback_secrets` (`_id` = project) has the same `secrets` list: it signs one-off
`metadata.callback_url` deliveries, which have no endpoint of their own. It is created on first
use (by the API or the notifier, whichever comes first; an upsert with `$setOnInsert`, so racing
creators agree on one secret) and can be read again by the project, unlike an endpoint's secret,
because a client must know it before the batch that uses it exists.

Every query filters on `project`: another project's endpoint is simply not found (404).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from schemas.api_params import PageParams
from services.http.pagination import fetch_page
from services.notifier.secrets import SecretBox
from services.notifier.signing import new_secret, secret_hint

ENDPOINTS_COLLECTION = "webhook_endpoints"
CALLBACK_SECRETS_COLLECTION = "webhook_callback_secrets"
ENDPOINT_ID_PREFIX = "whep_"

Doc = dict[str, Any]


def new_endpoint_id() -> str:
    return f"{ENDPOINT_ID_PREFIX}{ObjectId()}"


def callback_owner(project: str) -> str:
    """The associated data a project's callback secret is encrypted under."""
    return f"callback:{project}"


def _secret_entry(box: SecretBox, secret: str, owner: str, now: float) -> Doc:
    return {"enc": box.encrypt(secret, owner), "hint": secret_hint(secret), "created_at": now, "expires_at": None}


def rotated_secrets(
    box: SecretBox, current: Iterable[Mapping[str, Any]], owner: str, now: float, grace_s: float
) -> tuple[str, list[Doc]]:
    """A new secret first; the old current one expires after `grace_s` (0: at once); expired ones dropped."""
    secret = new_secret()
    kept: list[Doc] = [_secret_entry(box, secret, owner, now)]
    for entry in current:
        expires = entry.get("expires_at")
        if expires is None:
            expires = now + grace_s
        if grace_s > 0 and expires > now:
            kept.append({**entry, "expires_at": min(expires, now + grace_s)})
    return secret, kept


def active_secrets(box: SecretBox, doc: Mapping[str, Any], owner: str, now: float | None = None) -> list[str]:
    """The plaintext secrets that sign now, newest first."""
    at = time.time() if now is None else now
    return [
        box.decrypt(e["enc"], owner)
        for e in doc.get("secrets") or ()
        if e.get("expires_at") is None or e["expires_at"] > at
    ]


def endpoint_to_api(doc: Mapping[str, Any], secret: str | None = None) -> dict[str, Any]:
    """The `webhook_endpoint` object; with `secret` the `WebhookEndpointWithSecret` form."""
    secrets = doc.get("secrets") or []
    out: dict[str, Any] = {
        "id": doc["_id"],
        "object": "webhook_endpoint",
        "created_at": int(doc["created_at"]),
        "updated_at": int(doc["updated_at"]) if doc.get("updated_at") is not None else None,
        "url": doc["url"],
        "name": doc["name"],
        "event_types": list(doc["event_types"]),
        "signing_secret_hint": secrets[0]["hint"] if secrets else None,
        "description": doc.get("description"),
        "enabled": bool(doc.get("enabled", True)),
    }
    if secret is not None:
        out["signing_secret"] = secret
    return out


class EndpointStore:
    def __init__(self, db: AsyncDatabase[Any], box: SecretBox) -> None:
        self._collection = db[ENDPOINTS_COLLECTION]
        self._callbacks = db[CALLBACK_SECRETS_COLLECTION]
        self.box = box

    async def ensure_indexes(self) -> None:
        # Listing pages on (project, _id); the notifier matches on (project, enabled).
        await self._collection.create_indexes([IndexModel([("project", ASCENDING), ("_id", ASCENDING)])])

    # --- endpoints -------------------------------------------------------------------------

    async def create(
        self,
        project: str,
        *,
        url: str,
        name: str,
        description: str | None,
        event_types: list[str],
        enabled: bool,
    ) -> tuple[Doc, str]:
        """A new endpoint and its secret (plaintext returned here, and never again)."""
        now = time.time()
        endpoint_id = new_endpoint_id()
        secret = new_secret()
        doc: Doc = {
            "_id": endpoint_id,
            "project": project,
            "url": url,
            "name": name,
            "description": description,
            "event_types": event_types,
            "enabled": enabled,
            "created_at": now,
            "updated_at": now,
            "secrets": [_secret_entry(self.box, secret, endpoint_id, now)],
            "secrets_version": 0,
        }
        await self._collection.insert_one(doc)
        return doc, secret

    async def count(self, project: str) -> int:
        """How many endpoints the project has (a deleted endpoint is removed, so it is not counted)."""
        return await self._collection.count_documents({"project": project})

    async def list_page(self, project: str, page: PageParams) -> dict[str, Any]:
        """One page of the project's endpoints, as the API's list object."""
        return await fetch_page(self._collection, {"project": project}, page, endpoint_to_api)

    async def get(self, project: str, endpoint_id: str) -> Doc | None:
        return await self._collection.find_one({"_id": endpoint_id, "project": project})

    async def get_any(self, endpoint_id: str) -> Doc | None:
        """Any project's endpoint (the notifier: the delivery record already names the project)."""
        return await self._collection.find_one({"_id": endpoint_id})

    async def update(self, project: str, endpoint_id: str, fields: Mapping[str, Any]) -> Doc | None:
        """Set the given fields; `updated_at` advances only when something actually changed."""
        doc = await self.get(project, endpoint_id)
        if doc is None:
            return None
        changed = {k: v for k, v in fields.items() if doc.get(k) != v}
        if not changed:
            return doc
        changed["updated_at"] = time.time()
        return await self._collection.find_one_and_update(
            {"_id": endpoint_id, "project": project}, {"$set": changed}, return_document=ReturnDocument.AFTER
        )

    async def delete(self, project: str, endpoint_id: str) -> bool:
        result = await self._collection.delete_one({"_id": endpoint_id, "project": project})
        return result.deleted_count == 1

    async def rotate(self, project: str, endpoint_id: str, grace_s: float) -> tuple[Doc, str] | None:
        """A new current secret; the previous one keeps signing for `grace_s` seconds.

        Conditioned on the secrets it read, so two concurrent rotations cannot drop each other's secret
        silently: the loser reads again and rotates on top of the winner.
        """
        for _ in range(10):
            doc = await self.get(project, endpoint_id)
            if doc is None:
                return None
            now = time.time()
            secret, kept = rotated_secrets(self.box, doc.get("secrets") or [], endpoint_id, now, grace_s)
            new = await self._collection.find_one_and_update(
                {"_id": endpoint_id, "project": project, "secrets_version": doc.get("secrets_version", 0)},
                {"$set": {"secrets": kept, "updated_at": now}, "$inc": {"secrets_version": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return new, secret
        raise RuntimeError(f"rotating the secret of {endpoint_id} kept racing other rotations")

    async def enabled_for_projects(self, projects: Iterable[str]) -> list[Doc]:
        """Every enabled endpoint of these projects (the notifier matches event types itself)."""
        wanted = list(dict.fromkeys(projects))
        if not wanted:
            return []
        return await self._collection.find({"project": {"$in": wanted}, "enabled": True}).to_list()

    # --- the project's callback secret -----------------------------------------------------

    async def callback_secret_doc(self, project: str) -> Doc:
        """The project's callback secret document, created on first use."""
        doc = await self._callbacks.find_one({"_id": project})
        if doc is not None:
            return doc
        now = time.time()
        entry = _secret_entry(self.box, new_secret(), callback_owner(project), now)
        return await self._callbacks.find_one_and_update(
            {"_id": project},
            {"$setOnInsert": {"secrets": [entry], "secrets_version": 0, "created_at": now}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    async def rotate_callback_secret(self, project: str, grace_s: float) -> Doc:
        for _ in range(10):
            doc = await self.callback_secret_doc(project)
            now = time.time()
            _, kept = rotated_secrets(self.box, doc.get("secrets") or [], callback_owner(project), now, grace_s)
            new = await self._callbacks.find_one_and_update(
                {"_id": project, "secrets_version": doc.get("secrets_version", 0)},
                {"$set": {"secrets": kept}, "$inc": {"secrets_version": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return new
        raise RuntimeError(f"rotating the callback secret of {project} kept racing other rotations")

    def callback_secret_to_api(self, project: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        secrets = doc.get("secrets") or []
        now = time.time()
        previous = [e["expires_at"] for e in secrets[1:] if e.get("expires_at") and e["expires_at"] > now]
        return {
            "object": "webhook_callback_secret",
            "signing_secret": self.box.decrypt(secrets[0]["enc"], callback_owner(project)),
            "created_at": int(secrets[0]["created_at"]),
            "previous_secret_expires_at": int(max(previous)) if previous else None,
        }
