from __future__ import annotations

import base64
import datetime
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, InvalidSignature, algorithms

from relay.export.signing import (
    KeyStore,
    Message,
    Rejected,
    Signer,
    SigningKey,
    SigningKeyError,
    Verifier,
    _Keys,
    content_digest,
    key_id,
)

# RFC 9421 appendix B.1.4: the ed25519 test key.
RFC_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""
# RFC 9421 appendix B.2.6: "Signing a Request Using ed25519".
B26_HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": (
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
    ),
    "Content-Length": "18",
}
B26_INPUT = ('sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
             ';created=1618884473;keyid="test-key-ed25519"')
B26_SIGNATURE = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"


def rfc_keys() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    priv = serialization.load_pem_private_key(RFC_PRIVATE, None)
    pub = serialization.load_pem_public_key(RFC_PUBLIC)
    assert isinstance(priv, Ed25519PrivateKey) and isinstance(pub, Ed25519PublicKey)
    return priv, pub


def test_rfc9421_b26_signature_is_reproduced_exactly() -> None:
    priv, _ = rfc_keys()
    msg = Message("POST", "https://example.com/foo?param=Value&Pet=dog", dict(B26_HEADERS))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519,
                               key_resolver=_Keys(private={"test-key-ed25519": priv}))
    signer.sign(msg, key_id="test-key-ed25519", label="sig-b26", include_alg=False, use_existing_digest=True,
                created=datetime.datetime.fromtimestamp(1618884473, tz=datetime.UTC),
                covered_component_ids=("date", "@method", "@path", "@authority", "content-type",
                                       "content-length"))
    assert msg.headers["Signature-Input"] == B26_INPUT
    assert msg.headers["Signature"] == B26_SIGNATURE  # ed25519 is deterministic


def test_rfc9421_b26_signature_verifies_and_a_changed_byte_does_not() -> None:
    _, pub = rfc_keys()
    headers = {**B26_HEADERS, "Signature-Input": B26_INPUT, "Signature": B26_SIGNATURE}
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519,
                                   key_resolver=_Keys(public={"test-key-ed25519": pub}))
    msg = Message("POST", "https://example.com/foo?param=Value&Pet=dog", headers)
    (result,) = verifier.verify(msg, max_age=None)
    assert result.parameters["keyid"] == "test-key-ed25519"
    tampered = Message("POST", "https://example.com/foo", {**headers, "Content-Length": "19"})
    with pytest.raises(InvalidSignature):
        verifier.verify(tampered, max_age=None)


def test_key_id_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the Ed25519 public key x and its JWK thumbprint.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert key_id(Ed25519PublicKey.from_public_bytes(x)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def signed(signer: Signer, body: bytes, url: str = "https://vendor.example/v1/metrics") -> dict[str, str]:
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd",
               "Content-Digest": content_digest(body)}
    signer.sign("POST", url, headers)
    return headers


def make_key() -> SigningKey:
    k = Ed25519PrivateKey.generate()
    return SigningKey(key_id(k.public_key()), k, Path("/nonexistent"))


def test_relay_signature_covers_the_contract() -> None:
    key = make_key()
    h = signed(Signer([key]), b"body")
    sig_input = h["Signature-Input"]
    assert sig_input.startswith('relay=("@method" "@target-uri" "content-type" "content-digest" "content-encoding")')
    for param in ("created=", f'keyid="{key.key_id}"', 'alg="ed25519"', "nonce=", 'tag="telemetry-relay"'):
        assert param in sig_input
    assert h["Content-Digest"].startswith("sha-256=:")


def test_verifier_accepts_once_and_rejects_each_tampering() -> None:
    key, stranger = make_key(), make_key()
    signer = Signer([key])
    verifier = Verifier({key.key_id: key.public})
    url = "https://vendor.example/v1/metrics"
    body = b"\x0a\x05hello"
    h = signed(signer, body)
    assert verifier.verify("POST", url, h, body) == key.key_id

    def rejected(headers: dict[str, str], payload: bytes, now: float | None = None, target: str = url) -> Rejected:
        with pytest.raises(Rejected) as e:
            verifier.verify("POST", target, headers, payload, now=now)
        return e.value

    assert (rejected(h, body).status, rejected(h, body).reason) == (401, "replay")
    fresh = signed(signer, body)
    altered = bytes([body[0] ^ 1]) + body[1:]
    assert (rejected(fresh, altered).status, rejected(fresh, altered).reason) == (400, "bad_digest")
    other = signed(Signer([stranger]), body)
    assert rejected(other, body).reason == "unknown_key"
    assert rejected(signed(signer, body), body, now=time.time() + 600).reason == "expired"
    assert rejected({"Content-Type": "application/x-protobuf"}, body).reason == "missing_signature"
    forged = {**signed(signer, body), "Content-Digest": content_digest(altered)}
    assert (rejected(forged, altered).status, rejected(forged, altered).reason) == (401, "bad_signature")
    assert rejected(signed(signer, body), body, target="https://other.example/v1/metrics").reason == "bad_signature"
    assert rejected({**signed(signer, body), "Signature": "garbage ((("}, body).reason == "malformed_signature"


def test_rotation_signs_with_both_keys_so_either_verifies(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", overlap=3600)
    old = store.init()
    new, retired = store.rotate()
    assert retired.key_id == old.key_id != new.key_id
    active = store.active()
    assert [k.key_id for k in active] == [new.key_id, old.key_id]
    signer = Signer(active)
    for trusted in (old, new):
        h = signed(signer, b"x")
        assert Verifier({trusted.key_id: trusted.public}).verify(
            "POST", "https://vendor.example/v1/metrics", h, b"x") == trusted.key_id
    # Past the overlap the retired key is no longer used, and its private key is deleted.
    assert [k.key_id for k in store.retired(now=time.time() + 7200)] == []
    assert list((tmp_path / "keys" / "retired").iterdir()) == []


def test_key_files_are_private_and_unsafe_ones_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", overlap=60)
    key = store.init()
    assert os.stat(store.current_path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "keys").st_mode & 0o777 == 0o700
    assert store.init().key_id == key.key_id  # init keeps an existing key
    for mode in (0o640, 0o604):
        os.chmod(store.current_path, mode)
        with pytest.raises(SigningKeyError, match="must not be readable by group or others"):
            store.current()
    os.chmod(store.current_path, 0o600)
    store.current_path.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not a readable PEM"):
        store.current()
