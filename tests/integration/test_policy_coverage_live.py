"""The shipped policy's coverage on a running relay: an exception message in a span's status
(pushed as raw OTLP protobuf) reaches the reference ingest only hashed, a field unknown to this
OTLP version does not leave, and the outbox shows the bytes that left, flagging unknown fields
once a policy lets them through."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from relay import wire
from relay.compression import decompress
from relay.policy import load_policy
from tests.integration.test_otlp_receiver import post
from tests.integration.test_policy_live import policy_state, run_cli, start
from tests.procs import get_json, wait_until

ROOT = Path(__file__).parents[2]
EMAIL = "jane.doe@corp.example.com"


def span_request(name: str) -> bytes:
    """A span whose status message holds an e-mail address, with a field 99 (unknown) in it."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "shop"
    sp = rs.scope_spans.add().spans.add(name=name, trace_id=b"\x01" * 16, span_id=b"\x02" * 8,
                                        start_time_unix_nano=1, end_time_unix_nano=2)
    sp.status.code = 2
    sp.status.message = f"PaymentDeclined: card of {EMAIL} expired"
    sp.MergeFromString(wire.encode_varint(99 << 3 | 2) + b"\x0eUNKNOWN-MARKER")
    return bytes(req.SerializeToString())


def last_shipped(status_url: str) -> dict[str, Any]:
    _, items = get_json(status_url + "/outbox?last=1&wire=1")
    return items[-1]  # type: ignore[no-any-return]


def test_a_status_message_leaves_hashed_and_unknown_fields_do_not_leave(tmp_path: Path) -> None:
    shipped = (ROOT / "configs" / "policy.yaml").read_text()
    relay, ingest, policy = start(tmp_path, shipped)
    try:
        code, _, _ = post(relay.otlp_url + "/v1/traces", span_request("checkout"))
        assert code == 200
        stored = wait_until(lambda: ingest.requests("traces"), what="the span at the ingest")
        span = stored[0]["request"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        secret = bytes.fromhex((tmp_path / "state" / "policy-secret").read_text().strip())
        token = load_policy(policy, secret).token(EMAIL)
        assert span["status"]["message"] == f"PaymentDeclined: card of {token} expired"
        assert EMAIL not in json.dumps(stored)
        # The outbox: the bytes that left, decoded; nothing in them unknown, no marker, no address.
        item = last_shipped(relay.status_url)
        sent = base64.b64decode(item["wire_base64"])
        assert item["wire_sha256"] == hashlib.sha256(sent).hexdigest()
        body = decompress(sent, item["encoding"], 1 << 20)
        assert b"UNKNOWN-MARKER" not in body and EMAIL.encode() not in body and token.encode() in body
        assert item["unknown_fields"] == []
        # A policy that keeps unknown fields lets them through, and the outbox says so.
        old = policy_state(relay)["sha256"]
        assert "\nunknown_fields: drop\n" in shipped
        policy.write_text(shipped.replace("\nunknown_fields: drop\n", "\nunknown_fields: keep\n"))
        wait_until(lambda: policy_state(relay)["sha256"] != old, what="the edited policy to load")
        code, _, _ = post(relay.otlp_url + "/v1/traces", span_request("refund"))
        assert code == 200
        wait_until(lambda: len(ingest.requests("traces")) >= 2, what="the second span at the ingest")
        item = wait_until(lambda: (i := last_shipped(relay.status_url))["unknown_fields"] and i,
                          what="the outbox to flag the unknown field")
        assert item["unknown_fields"] == ["resource_spans[0].scope_spans[0].spans[0]#99"]
        assert b"UNKNOWN-MARKER" in decompress(base64.b64decode(item["wire_base64"]), item["encoding"], 1 << 20)
        p = run_cli("outbox", "--url", relay.status_url, "--last", "1")
        assert p.returncode == 0 and "1 UNKNOWN FIELDS: resource_spans[0].scope_spans[0].spans[0]#99" in p.stdout
    finally:
        relay.terminate()
        ingest.terminate()
