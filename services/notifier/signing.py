"""Standard Webhooks signing (https://www.standardwebhooks.com), as OpenAI signs its webhooks.

A secret is `whsec_` + base64 of 32 random bytes; the HMAC key is the decoded bytes. Each request
carries `webhook-id` (stable across retries, for the receiver's de-duplication), `webhook-timestamp`
(seconds, fresh per attempt: receivers reject stale ones) and `webhook-signature`, a space-separated
list of `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>` — one entry per active secret, so
a receiver holding either the old or the new secret verifies during a rotation's grace period.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_hint(secret: str) -> str:
    """A masked form that identifies a secret without revealing it: `whsec_…` + its last 4 characters."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret. ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"webhook secret is not valid base64: {exc}") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(webhook_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """`v1,<sig> v1,<sig>…`, one per secret, in the order given (newest first by convention)."""
    if not secrets:
        raise ValueError("at least one signing secret is needed")
    return " ".join(f"v1,{signature(secret_key(s), webhook_id, timestamp, body)}" for s in secrets)


def webhook_headers(
    webhook_id: str, body: bytes, secrets: Sequence[str], timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers plus the content type, for one attempt."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(webhook_id, ts, body, secrets),
        "content-type": "application/json",
    }
