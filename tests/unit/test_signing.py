from __future__ import annotations

import base64
import datetime
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, InvalidSignature, algorithms
from multidict import CIMultiDict

from relay.export.signing import (
    HttpRequestView,
    KeyResolver,
    KeyStore,
    Signer,
    SigningKey,
    SigningKeyError,
    content_digest,
    key_id,
)
from relay.ingest.replay import FileNonces, MemoryNonces
from relay.ingest.verify import Rejected, Verifier

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
    msg = HttpRequestView("POST", "https://example.com/foo?param=Value&Pet=dog", dict(B26_HEADERS))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519,
                               key_resolver=KeyResolver(private={"test-key-ed25519": priv}))
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
                                   key_resolver=KeyResolver(public={"test-key-ed25519": pub}))
    msg = HttpRequestView("POST", "https://example.com/foo?param=Value&Pet=dog", headers)
    (result,) = verifier.verify(msg, max_age=None)
    assert result.parameters["keyid"] == "test-key-ed25519"
    tampered = HttpRequestView("POST", "https://example.com/foo", {**headers, "Content-Length": "19"})
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


URL = "https://vendor.example/v1/metrics"


def reason(verifier: Verifier, headers: Any, body: bytes, now: float | None = None) -> str:
    with pytest.raises(Rejected) as e:
        verifier.verify("POST", URL, headers, body, now=now)
    return f"{e.value.status} {e.value.reason}: {e.value}"


def signed_with_policy(signer: Signer, body: bytes, now: float | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd",
               "X-Relay-Policy-SHA256": "ab" * 32, "Content-Digest": content_digest(body)}
    signer.sign("POST", URL, headers, now=now)
    return headers


def test_a_second_signature_input_and_digest_cannot_carry_another_body() -> None:
    key = make_key()
    verifier = Verifier({key.key_id: key.public})
    body, forged = b"\x0a\x05hello", b"\x0a\x06forged"
    genuine = signed_with_policy(Signer([key]), body, now=time.time() - 1000)  # long past the window
    fresh = signed_with_policy(Signer([key]), forged)  # stands for what an attacker can write
    extra = [("Signature-Input", fresh["Signature-Input"]), ("Content-Digest", content_digest(forged))]
    for lines in ([*genuine.items(), *extra], [*extra, *genuine.items()]):
        assert reason(verifier, CIMultiDict(lines), forged).startswith("400 duplicate_field")


def test_every_signed_or_signature_field_must_come_once() -> None:
    key = make_key()
    verifier = Verifier({key.key_id: key.public})
    body = b"\x0a\x05hello"
    h = signed_with_policy(Signer([key]), body)
    for name in ("Signature", "Signature-Input", "Content-Digest", "Content-Type", "Content-Encoding",
                 "X-Relay-Policy-SHA256"):
        for spelling in (name, name.upper()):
            assert reason(verifier, CIMultiDict([*h.items(), (spelling, h[name])]), body) == (
                f"400 duplicate_field: {spelling} appears more than once; it must appear once")
        # A plain dict can repeat a field under two spellings of its name.
        assert reason(verifier, {**h, name.lower(): h[name]}, body).startswith("400 duplicate_field")
    # One line naming a label twice: the parser would let the last win.
    for name in ("Signature-Input", "Signature"):
        doubled = {**h, name: f"{h[name]}, {h[name]}"}
        assert reason(verifier, doubled, body) == (
            "401 malformed_signature: a signature field names the label 'relay' twice")
    # A field the signature does not cover may repeat (RFC 9421 combines the lines).
    assert verifier.verify("POST", URL, CIMultiDict([*h.items(), ("Accept", "a"), ("Accept", "b")]), body)


def test_clock_skew_is_tolerated_up_to_the_window_both_ways() -> None:
    key = make_key()
    verifier = Verifier({key.key_id: key.public}, window=300)
    body = b"x"
    now = float(int(time.time()))  # created is whole seconds
    for offset in (-299, -6, 6, 299):  # the relay's clock minus the ingest's
        assert verifier.verify("POST", URL, signed_with_policy(Signer([key]), body, now=now + offset), body,
                               now=now) == key.key_id
    ahead = reason(verifier, signed_with_policy(Signer([key]), body, now=now + 400), body, now=now)
    assert ahead == ("401 clock_skew: signature created 400s ahead of the ingest's clock (clock skew); "
                     "at most 300s is tolerated")
    behind = reason(verifier, signed_with_policy(Signer([key]), body, now=now - 400), body, now=now)
    assert behind == "401 expired: signature created 400s ago, outside the 300s window"


def test_content_encoding_and_policy_header_must_be_covered_when_present() -> None:
    key = make_key()
    verifier = Verifier({key.key_id: key.public})
    body = b"x"
    for left_out, header in (("content-encoding", "Content-Encoding"), ("x-relay-policy-sha256",
                                                                       "X-Relay-Policy-SHA256")):
        h = {"Content-Type": "application/x-protobuf", "Content-Digest": content_digest(body)}
        Signer([key]).sign("POST", URL, h)  # signed while the header was absent
        h[header] = "zstd" if header == "Content-Encoding" else "ab" * 32
        assert reason(verifier, h, body) == (
            f"401 uncovered_component: signature 'relay' does not cover {left_out}, which the request carries")
    # Absent headers need no coverage.
    h = {"Content-Type": "application/x-protobuf", "Content-Digest": content_digest(body)}
    Signer([key]).sign("POST", URL, h)
    assert verifier.verify("POST", URL, h, body) == key.key_id


def test_replay_state_in_files_survives_a_new_store_and_expires_by_slice(tmp_path: Path) -> None:
    window, now = 300.0, 1_000_000.0
    store = FileNonces(tmp_path, window, now)
    assert store.add("a", now + window, now) and not store.add("a", now + window, now)
    assert store.add("b", now + 2 * window, now)
    store.close()  # as if killed: nothing but what was written
    with open(next(tmp_path.glob("nonces-*.log")), "a") as f:
        f.write("12")  # a line torn by a crash mid-write
    again = FileNonces(tmp_path, window, now + 1)
    assert not again.add("a", now + window, now + 1) and not again.add("b", now + 2 * window, now + 1)
    assert len(again) == 2
    # Once every nonce of a slice has expired, the slice and its file are gone.
    later = now + 2 * window + window + 1
    assert again.add("c", later + window, later)
    assert len(again) == 1 and len(list(tmp_path.glob("nonces-*.log"))) == 1
    again.close()
    assert MemoryNonces(window).add("a", now + window, now)


def test_verifier_records_the_nonce_in_its_store_until_the_signature_expires(tmp_path: Path) -> None:
    key = make_key()
    body = b"x"
    now = time.time()
    h = signed_with_policy(Signer([key]), body, now=now)
    first = FileNonces(tmp_path, 300, now)
    assert Verifier({key.key_id: key.public}, nonces=first).verify("POST", URL, h, body, now=now)
    first.close()
    restarted = Verifier({key.key_id: key.public}, nonces=FileNonces(tmp_path, 300, now + 10))
    assert reason(restarted, h, body, now=now + 10).startswith("401 replay")
