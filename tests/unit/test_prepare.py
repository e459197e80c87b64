"""Preparing a batch for sending: merge by concatenation, the policy, compression, the
digest, the headers that describe the body, and large batches prepared off the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from google.protobuf.message import DecodeError

from relay.compression import decompress
from relay.export.prepare import THREAD_PREPARE_BYTES, prepare, prepare_blocking
from relay.export.signing import content_digest
from relay.otlp import SIGNAL_INFO, MetricsBuilder, Signal, attributes_dict
from relay.policy import Outcome, Policy
from relay.policy.schema import PolicyFile
from relay.strict_yaml import load_text

SECRET = b"0123456789abcdef0123456789abcdef"
SHA = "ab" * 32


def policy(text: str) -> Policy:
    pf, _ = load_text(text, PolicyFile, "test-policy.yaml")
    return Policy(pf, SECRET, "test-policy.yaml", SHA, 0.0)


DROP_POD = policy("version: 1\nresource_attributes: {default: keep}\nattributes:\n  default: keep\n"
                  "  rules: [{key: pod, action: drop}]\n")
DENY_ALL = policy("version: 1\nmetrics: {default: deny}\nresource_attributes: {default: keep}\n"
                  "attributes: {default: keep}\n")


def payload(name: str, pod: str = "a", points: int = 1) -> bytes:
    b = MetricsBuilder({"service.name": "app"}, "test")
    m = b.gauge(name, "1")
    for i in range(points):
        b.point(m, float(i), 1000 + i, 0, {"pod": pod, "i": str(i)})
    return bytes(b.finish().SerializeToString())


def metric_names(body: bytes) -> list[str]:
    req = SIGNAL_INFO["metrics"].request()
    req.ParseFromString(body)
    return [m.name for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]  # type: ignore[attr-defined]


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "none"])
def test_entries_are_merged_by_concatenation_and_compressed_once(encoding: str) -> None:
    parts = [payload("one"), payload("two"), payload("three")]
    p = prepare_blocking("metrics", parts, None, encoding, sign=False)
    assert p.body == b"".join(parts)
    assert decompress(p.wire, encoding, len(p.body)) == p.body
    assert metric_names(p.body) == ["one", "two", "three"]
    assert p.encoding == encoding and p.outcome is None and p.policy is None and p.policy_sha is None
    assert not p.nothing_left
    h = p.headers()
    assert h["Content-Type"] == "application/x-protobuf" and h["User-Agent"].startswith("telemetry-relay/")
    assert h.get("Content-Encoding") == (None if encoding == "none" else encoding)
    assert "X-Relay-Policy-SHA256" not in h and "Content-Digest" not in h


def test_a_signed_request_carries_the_digest_of_the_exact_bytes_sent() -> None:
    p = prepare_blocking("metrics", [payload("one")], None, "zstd", sign=True)
    assert p.digest == content_digest(p.wire) != content_digest(p.body)
    assert p.headers()["Content-Digest"] == p.digest
    assert prepare_blocking("metrics", [payload("one")], None, "zstd", sign=False).digest is None


def test_the_policy_is_applied_to_the_merged_body_and_named_in_the_headers() -> None:
    p = prepare_blocking("metrics", [payload("one", pod="secret-pod", points=3), payload("two")], DROP_POD,
                         "gzip", sign=False)
    assert b"secret-pod" not in p.body and b"secret-pod" not in decompress(p.wire, "gzip", len(p.body))
    req = SIGNAL_INFO["metrics"].request()
    req.ParseFromString(p.body)
    points = [dp for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics  # type: ignore[attr-defined]
              for dp in m.gauge.data_points]
    assert len(points) == 4 and all("pod" not in attributes_dict(dp.attributes) for dp in points)
    assert isinstance(p.outcome, Outcome) and p.outcome.counts[("attributes:pod", "dropped")] == 4
    assert p.policy is DROP_POD and p.policy_sha == SHA
    assert p.headers()["X-Relay-Policy-SHA256"] == SHA
    assert not p.nothing_left


def test_a_policy_that_lets_nothing_out_leaves_nothing_to_send() -> None:
    p = prepare_blocking("metrics", [payload("one"), payload("two")], DENY_ALL, "zstd", sign=True)
    assert p.nothing_left
    assert p.outcome is not None and p.outcome.items_in == 2 and p.outcome.items_out == 0


def test_an_entry_that_is_not_otlp_fails_preparation_under_a_policy() -> None:
    with pytest.raises(DecodeError):
        prepare_blocking("metrics", [payload("one"), b"\xff\xff\xff not protobuf"], DROP_POD, "zstd", sign=False)


class _ThreadRecordingPolicy(Policy):
    """The real policy, noting which thread applied it."""

    threads: list[str]

    def apply(self, signal: Signal, body: bytes) -> tuple[bytes, Outcome]:
        self.threads.append(threading.current_thread().name)
        return super().apply(signal, body)


def recording_policy() -> _ThreadRecordingPolicy:
    pf, _ = load_text("version: 1\nresource_attributes: {default: keep}\nattributes: {default: keep}\n",
                      PolicyFile, "test-policy.yaml")
    p = _ThreadRecordingPolicy(pf, SECRET, "test-policy.yaml", SHA, 0.0)
    p.threads = []
    return p


def test_large_batches_are_prepared_off_the_loop_and_small_ones_on_it() -> None:
    small = [payload("small")]
    # Each entry is small; together they are large.
    large = [payload(f"large{i}", points=500) for i in range(4)]
    assert sum(map(len, small)) < THREAD_PREPARE_BYTES <= sum(map(len, large))
    assert all(len(e) < THREAD_PREPARE_BYTES for e in large)
    pol = recording_policy()

    async def main() -> None:
        on_loop = threading.current_thread().name
        await prepare("metrics", small, pol, "zstd", sign=True)
        assert pol.threads == [on_loop]
        p = await prepare("metrics", large, pol, "zstd", sign=True)
        assert pol.threads[1] != on_loop
        assert p.digest == content_digest(p.wire) and metric_names(p.body) == ["large0", "large1", "large2", "large3"]

    asyncio.run(main())
