"""KeyStore.ensure(): the signer bootstrap a start and a reload rely on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from relay.export.signing import KeyStore


def test_ensure_creates_the_first_key_once_and_then_returns_the_keys_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    store = KeyStore(tmp_path / "keys", overlap=3600)
    assert not store.exists()
    with caplog.at_level(logging.WARNING, logger="relay.signing"):
        first = store.ensure()
    assert store.exists() and [k.key_id for k in first] == [store.current().key_id]
    assert "register its public key with the vendor" in caplog.text

    caplog.clear()
    new, old = store.rotate()
    with caplog.at_level(logging.WARNING, logger="relay.signing"):
        again = store.ensure()
    assert [k.key_id for k in again] == [new.key_id, old.key_id], "an existing key is kept, retired ones follow"
    assert "created signing key" not in caplog.text
