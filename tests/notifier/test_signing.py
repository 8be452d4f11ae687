"""Standard Webhooks signing, judged by the `openai` SDK's own verifier (what receivers run)."""

from __future__ import annotations

import base64
import time

import openai
import orjson
import pytest

from services.notifier.signing import new_secret, secret_hint, secret_key, signature_header, webhook_headers


def _unwrap(body: bytes, headers: dict[str, str], secret: str) -> object:
    return openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body, headers)


BODY = orjson.dumps(
    {"id": "evt_0123", "object": "event", "type": "batch.completed", "created_at": 1700000000,
     "data": {"id": "batch_abc"}}
)


def test_secret_format() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[len("whsec_"):])) == 32
    assert secret_key(secret) == base64.b64decode(secret[6:])
    assert new_secret() != secret
    assert secret_hint(secret).endswith(secret[-4:]) and secret[6:-4] not in secret_hint(secret)


def test_openai_sdk_unwraps_a_signed_payload() -> None:
    secret = new_secret()
    headers = webhook_headers("msg_1", BODY, [secret])
    event = _unwrap(BODY, headers, secret)
    assert event.type == "batch.completed"
    assert event.data.id == "batch_abc"
    assert headers["webhook-id"] == "msg_1"


def test_wrong_secret_tampered_body_and_stale_timestamp_are_rejected() -> None:
    secret = new_secret()
    headers = webhook_headers("msg_1", BODY, [secret])
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _unwrap(BODY, headers, new_secret())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _unwrap(BODY.replace(b"batch_abc", b"batch_abd"), headers, secret)
    old = webhook_headers("msg_1", BODY, [secret], timestamp=int(time.time()) - 3600)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _unwrap(BODY, old, secret)


def test_rotation_signs_with_both_and_each_verifies() -> None:
    new, old = new_secret(), new_secret()
    headers = webhook_headers("msg_2", BODY, [new, old])
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    for secret in (new, old):
        assert _unwrap(BODY, headers, secret).data.id == "batch_abc"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _unwrap(BODY, headers, new_secret())


def test_signature_is_deterministic_and_covers_id_and_timestamp() -> None:
    secret = new_secret()
    a = signature_header("msg_1", 100, BODY, [secret])
    assert a == signature_header("msg_1", 100, BODY, [secret])
    assert a != signature_header("msg_2", 100, BODY, [secret])
    assert a != signature_header("msg_1", 101, BODY, [secret])


def test_malformed_secrets_are_refused() -> None:
    for bad in ("sk-123", "whsec_", "whsec_not*base64"):
        with pytest.raises(ValueError):
            secret_key(bad)
    with pytest.raises(ValueError):
        signature_header("msg_1", 1, BODY, [])
