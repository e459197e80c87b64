"""The worked example of docs/wire-protocol.md, rebuilt from code so the document cannot drift.

Run `python -m tests.unit.wire_example` to print it."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, algorithms

from relay.compression import compress
from relay.export.signing import HttpRequestView, Signer, SigningKey, content_digest, key_id
from relay.otlp import MetricsBuilder
from tests.unit.test_signing import RFC_PRIVATE

URL = "https://ingest.vendor.example/v1/metrics"
CREATED = 1795500000
NONCE = "3q2-7wAAAAAAAAAAAAAAAA"


def example() -> dict[str, Any]:
    priv = serialization.load_pem_private_key(RFC_PRIVATE, None)
    assert isinstance(priv, Ed25519PrivateKey)
    kid = key_id(priv.public_key())
    b = MetricsBuilder({"service.name": "kafka", "host.name": "broker-1"}, "telemetry-relay/jolokia")
    m = b.sum("kafka.message.count", "{message}")
    b.point(m, 1234567, 1795499990000000000, 1795400000000000000, {"topic": "orders"})
    raw = b.finish().SerializeToString()
    body = compress(raw, "gzip")
    # gzip output carries a timestamp; pin it so the example is byte-for-byte reproducible.
    body = body[:4] + b"\0\0\0\0" + body[8:]
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip",
               "Content-Digest": content_digest(body)}
    Signer([SigningKey(kid, priv, None)]).sign("POST", URL, headers, now=CREATED, nonce=NONCE)  # type: ignore[arg-type]
    # The signature base, as the library builds it, for the reader to compare against.
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519)
    prepared = signer.prepare(
        HttpRequestView("POST", URL, {k: v for k, v in headers.items() if not k.startswith("Signature")}),
        key_id=kid, created=__import__("datetime").datetime.fromtimestamp(CREATED), nonce=NONCE,
        label="relay", tag="telemetry-relay", use_existing_digest=True,
        covered_component_ids=("@method", "@target-uri", "content-type", "content-digest", "content-encoding"),
    )
    return {"key_id": kid, "body_hex": body.hex(), "raw_len": len(raw), "headers": headers,
            "signature_base": prepared.signature_base.decode(), "sha256": hashlib.sha256(body).hexdigest()}


if __name__ == "__main__":
    ex = example()
    print("key id:", ex["key_id"])
    print("body (gzip, hex):", ex["body_hex"])
    for k, v in ex["headers"].items():
        print(f"{k}: {v}")
    print("--- signature base ---")
    print(ex["signature_base"])
