"""Signing secrets at rest: AES-256-GCM, so the database alone does not let anyone forge webhooks.

Secrets must stay usable (the notifier signs with them), so they are encrypted, not hashed. The
key comes from `Settings.webhook_secret_key` (base64 of 32 bytes); without one, a key file in the
state folder is created on first use — good for a single host, wrong for production, where the
API and every notifier must be given the same key (docs/webhooks.md). Previous keys can be listed
for decryption while an operator moves to a new key.

Token format: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id (first 8 hex digits
of the key's SHA-256) makes "encrypted with another key" a clear error rather than a bare
authentication failure. Each ciphertext is bound to its owner (the endpoint id) as associated
data, so a ciphertext copied onto another endpoint does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.settings import Settings

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_NAME = "webhook-secret.key"
_VERSION = "v1"


class SecretKeyError(ValueError):
    """A configured key is malformed, or a stored secret cannot be decrypted with any known key."""


def parse_key(text: str) -> bytes:
    """A 32-byte key from its base64 (standard or URL-safe) text."""
    cleaned = text.strip()
    try:
        key = base64.urlsafe_b64decode(cleaned.replace("+", "-").replace("/", "_") + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise SecretKeyError("webhook secret key is not base64") from None
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"webhook secret key must be {KEY_BYTES} bytes (base64), got {len(key)}")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _local_key(state_dir: Path) -> bytes:
    """The key file in the state folder, created (mode 0600) if missing; safe against concurrent creators."""
    path = state_dir / KEY_FILE_NAME
    try:
        return parse_key(path.read_text())
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(os.urandom(KEY_BYTES)).decode()
    tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    try:
        os.link(tmp, path)  # atomic "create if absent": a racing process's key wins, ours is dropped
        log.warning(
            "created %s to encrypt webhook secrets; production must set OFFHOURS_WEBHOOK_SECRET_KEY instead", path
        )
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return parse_key(path.read_text())


class SecretBox:
    """Encrypts with the first key; decrypts with any of them."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SecretKeyError("at least one key is needed")
        self._aead = {key_id(k): AESGCM(k) for k in keys}
        self._current = key_id(keys[0])

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.webhook_secret_key is not None:
            current = parse_key(settings.webhook_secret_key.get_secret_value())
        else:
            current = _local_key(Path(settings.state_dir))
        previous = [parse_key(k.get_secret_value()) for k in settings.webhook_secret_previous_keys]
        return cls([current, *previous])

    def encrypt(self, plaintext: str, owner: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self._current].encrypt(nonce, plaintext.encode(), owner.encode())
        return f"{_VERSION}.{self._current}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, owner: str) -> str:
        try:
            version, kid, blob = token.split(".", 2)
        except ValueError:
            raise SecretKeyError("stored webhook secret is malformed") from None
        if version != _VERSION:
            raise SecretKeyError(f"stored webhook secret has unknown format {version!r}")
        aead = self._aead.get(kid)
        if aead is None:
            raise SecretKeyError(
                f"stored webhook secret was encrypted with key {kid}, which is not configured "
                f"(configured: {', '.join(self._aead)}); set OFFHOURS_WEBHOOK_SECRET_KEY or "
                "OFFHOURS_WEBHOOK_SECRET_PREVIOUS_KEYS"
            )
        raw = base64.urlsafe_b64decode(blob)
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], owner.encode()).decode()
        except InvalidTag:
            raise SecretKeyError(f"stored webhook secret of {owner} does not decrypt (tampered or moved)") from None
