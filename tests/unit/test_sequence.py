"""The sequence headers' form, the spool instance id, their signature coverage, and the
ingest's ledger of stored ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.export import sequence
from relay.export.signing import Signer, SigningKey, content_digest, key_id
from relay.ingest.store import Ledger
from relay.ingest.verify import Rejected, Verifier

URL = "https://vendor.example/v1/metrics"


def test_a_range_is_first_dash_last_and_nothing_else() -> None:
    assert sequence.parse_range("1-1") == (1, 1)
    assert sequence.parse_range(sequence.format_range(7, 1200)) == (7, 1200)
    for bad in ("", "5", "0-3", "3-2", "1-2-3", "-1-2", "01-2", "a-b", "1 - 2", "1-99999999999999999999"):
        with pytest.raises(ValueError, match="X-Relay-Sequence must be"):
            sequence.parse_range(bad)
    with pytest.raises(ValueError, match="X-Relay-Instance"):
        sequence.parse_instance("short")


def test_the_instance_is_made_once_kept_and_new_for_a_wiped_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    assert sequence.read_instance(spool) is None  # the read-only side never makes one
    first = sequence.spool_instance(spool)
    assert sequence.spool_instance(spool) == first == sequence.read_instance(spool)
    assert (spool / "instance-id").stat().st_mode & 0o777 == 0o600
    (spool / "instance-id").unlink()
    assert sequence.spool_instance(spool) != first


def key() -> SigningKey:
    k = Ed25519PrivateKey.generate()
    return SigningKey(key_id(k.public_key()), k, Path("/nonexistent"))


def test_the_sequence_headers_must_be_signed_when_present() -> None:
    k = key()
    verifier = Verifier({k.key_id: k.public})
    body = b"x"
    base = {"Content-Type": "application/x-protobuf", "Content-Digest": content_digest(body)}
    h = {**base, **sequence.headers("instance-0001", 1, 4)}
    Signer([k]).sign("POST", URL, h)
    assert verifier.verify("POST", URL, h, body) == k.key_id
    assert verifier.verify_archived("POST", URL, {**h, sequence.SEQUENCE_HEADER: "1-4"}, body) == k.key_id
    # Changing the range breaks the signature.
    with pytest.raises(Rejected) as e:
        verifier.verify_archived("POST", URL, {**h, sequence.SEQUENCE_HEADER: "1-3"}, body)
    assert e.value.reason == "bad_signature"
    # Added after signing: refused as uncovered, each of the two.
    for name, value in sequence.headers("instance-0001", 1, 4).items():
        h = dict(base)
        Signer([k]).sign("POST", URL, h)
        h[name] = value
        with pytest.raises(Rejected) as e:
            verifier.verify("POST", URL, h, body)
        assert (e.value.reason, str(e.value)) == (
            "uncovered_component", f"signature 'relay' does not cover {name.lower()}, which the request carries")


def test_archived_requests_skip_freshness_and_the_nonce_only() -> None:
    k = key()
    verifier = Verifier({k.key_id: k.public}, window=300)
    body = b"x"
    h = {"Content-Type": "application/x-protobuf", "Content-Digest": content_digest(body)}
    Signer([k]).sign("POST", URL, h, now=1_000_000.0, nonce="the-one-nonce")
    with pytest.raises(Rejected, match="outside the 300s window"):
        verifier.verify("POST", URL, h, body)
    assert verifier.verify_archived("POST", URL, h, body) == k.key_id
    assert verifier.verify_archived("POST", URL, h, body) == k.key_id  # no nonce rule
    with pytest.raises(Rejected) as e:
        verifier.verify_archived("POST", URL, h, body + b"!")
    assert e.value.reason == "bad_digest"


def test_the_ledger_tells_covered_from_overlapping_ranges() -> None:
    ledger = Ledger()
    for first, last in ((1, 5), (11, 20), (6, 8), (30, 30)):
        ledger.add("a", "metrics", first, last)
    assert ledger.covers("a", "metrics", 1, 8)  # merged from two adjoining ranges
    assert ledger.covers("a", "metrics", 12, 20)
    assert not ledger.covers("a", "metrics", 1, 9)
    assert not ledger.covers("a", "logs", 1, 1) and not ledger.covers("b", "metrics", 1, 1)
    assert ledger.overlaps("a", "metrics", 8, 10) and ledger.overlaps("a", "metrics", 25, 35)
    assert not ledger.overlaps("a", "metrics", 9, 10) and not ledger.overlaps("a", "metrics", 21, 29)
    ledger.add("a", "metrics", 9, 10)
    assert ledger.covers("a", "metrics", 1, 20) and not ledger.covers("a", "metrics", 1, 21)
