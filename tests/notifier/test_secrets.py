"""Signing secrets at rest: AES-GCM under the operator's key, bound to their owner."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.notifier.secrets import KEY_FILE_NAME, SecretBox, SecretKeyError, parse_key
from services.settings import Settings


def _key() -> bytes:
    return os.urandom(32)


def test_round_trip_and_ciphertext_hides_the_secret() -> None:
    box = SecretBox([_key()])
    token = box.encrypt("whsec_abc", "whep_1")
    assert "whsec_abc" not in token and token.startswith("v1.")
    assert box.decrypt(token, "whep_1") == "whsec_abc"
    assert box.encrypt("whsec_abc", "whep_1") != token  # fresh nonce each time


def test_ciphertext_is_bound_to_its_owner() -> None:
    box = SecretBox([_key()])
    token = box.encrypt("whsec_abc", "whep_1")
    with pytest.raises(SecretKeyError, match="tampered or moved"):
        box.decrypt(token, "whep_2")


def test_unknown_key_is_a_clear_error_and_previous_keys_decrypt() -> None:
    old, new = _key(), _key()
    token = SecretBox([old]).encrypt("whsec_abc", "whep_1")
    with pytest.raises(SecretKeyError, match="not configured"):
        SecretBox([new]).decrypt(token, "whep_1")
    assert SecretBox([new, old]).decrypt(token, "whep_1") == "whsec_abc"


def test_settings_key_and_local_key_file(tmp_path: Path) -> None:
    key = _key()
    configured = Settings(state_dir=tmp_path, webhook_secret_key=SecretStr(base64.b64encode(key).decode()))
    token = SecretBox.from_settings(configured).encrypt("whsec_x", "o")
    assert SecretBox([key]).decrypt(token, "o") == "whsec_x"
    assert not (tmp_path / KEY_FILE_NAME).exists()

    local = Settings(state_dir=tmp_path / "state")
    first = SecretBox.from_settings(local)
    path = tmp_path / "state" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.encrypt("whsec_y", "o")
    assert SecretBox.from_settings(local).decrypt(token, "o") == "whsec_y"  # the file is reused


def test_malformed_keys() -> None:
    with pytest.raises(SecretKeyError, match="32 bytes"):
        parse_key(base64.b64encode(b"short").decode())
    with pytest.raises(SecretKeyError):
        parse_key("not base64 !!!")
