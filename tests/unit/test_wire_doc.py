"""docs/wire-protocol.md's worked example is rebuilt from the relay's code and must match."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from relay.ingest.verify import Verifier
from tests.unit.test_signing import RFC_PUBLIC
from tests.unit.wire_example import CREATED, URL, example

DOC = (Path(__file__).parents[2] / "docs" / "wire-protocol.md").read_text()


def test_doc_example_matches_the_code() -> None:
    ex = example()
    assert f"Key id (JWK thumbprint of that key): `{ex['key_id']}`" in DOC
    assert ex["body_hex"] in DOC
    for name, value in ex["headers"].items():
        assert f"{name}: {value}" in DOC, name
    assert "```\n" + ex["signature_base"] + "\n```" in DOC


def test_doc_example_verifies_by_hand_and_by_the_verifier() -> None:
    ex = example()
    public = serialization.load_pem_public_key(RFC_PUBLIC)
    sig = re.search(r"relay=:([A-Za-z0-9+/=]+):", ex["headers"]["Signature"])
    assert sig
    public.verify(base64.b64decode(sig.group(1)), ex["signature_base"].encode())  # type: ignore[union-attr]
    body = bytes.fromhex(ex["body_hex"])
    verifier = Verifier({ex["key_id"]: public})  # type: ignore[dict-item]
    assert verifier.verify("POST", URL, ex["headers"], body, now=CREATED + 5) == ex["key_id"]
