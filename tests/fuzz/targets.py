"""The fuzz targets: every parser that takes input from outside the relay, each called as
the relay calls it. A target lets through only the errors its parser documents; anything
else raised is a finding (libFuzzer reports it as a crash, with the input that caused it).

Each takes the raw bytes libFuzzer makes; the first byte picks a variant where one parser
has two (protobuf or JSON, text or OpenMetrics, config or policy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from relay import config, mapping
from relay.export import signing
from relay.ingest import verify
from relay.otlp import SIGNALS, BadJson, from_json, parse_request
from relay.policy.engine import Policy
from relay.policy.schema import PolicyFile
from relay.source_settings import PrometheusSettings, ScrapeTargetSettings
from relay.sources import jolokia
from relay.sources.exposition import ExpositionLimits
from relay.sources.prometheus import ExpositionError, PrometheusSource, ScrapeReading, map_exposition
from relay.sources.scrape_bounds import ScrapeLimitExceeded
from relay.strict_yaml import SchemaError, load_text

MAPPINGS = mapping.load(["kafka", "jvm"])
JOLOKIA_SENT = jolokia.bulk_request(MAPPINGS)
URL = "http://127.0.0.1:9404/metrics"


def otlp(data: bytes) -> None:
    """The receiver's body decoding: protobuf (its own parse function) or OTLP JSON."""
    if not data:
        return
    signal = SIGNALS[data[0] % 3]
    body = data[1:]
    try:
        if data[0] & 4:
            from_json(signal, body)
        else:
            parse_request(signal, body)
    except (DecodeError, BadJson):
        pass


def exposition(data: bytes) -> None:
    """Prometheus text (first byte even) or OpenMetrics (odd), parsed and mapped with the
    shipped mapping rules, under the default limits, as a source does it (the scrape memo
    included). Each body is scraped three times, as it came, with every value token changed
    and as it came again, and each answer must equal the full path's: a memo that fills a
    plan wrongly is a finding, not just one that raises."""
    if not data:
        return
    openmetrics = bool(data[0] & 1)
    resource = {"service.name": "fuzz"}
    src = PrometheusSource(ScrapeTargetSettings(url=URL), None, MAPPINGS, PrometheusSettings(), resource)
    src.first_scrape_ns = _SCRAPE_NS - 10**9
    body = data[1:]
    for n, scraped in enumerate((body, _VALUE_TOKEN.sub(rb"\g<1>7\2", body), body)):
        now = _SCRAPE_NS + n
        got = _outcome(src._map, scraped, openmetrics, now, ExpositionLimits(URL))
        full = _outcome(map_exposition, scraped.decode("utf-8", "replace"), openmetrics, MAPPINGS, src.resource,
                        now, src.first_scrape_ns, src.passthrough, limits=ExpositionLimits(URL))
        if got != full:
            a, b = got[1] or b"", full[1] or b""
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            raise AssertionError(f"scrape {n}: the memo gave {got[0]} where the full path gave {full[0]}; "
                                 f"the requests differ from byte {at}: {a[at:at + 40]!r} vs {b[at:at + 40]!r}")


_SCRAPE_NS = 1_700_000_000_000_000_000
_VALUE_TOKEN = re.compile(rb"^([^#\n][^\n]* [-+]?)[0-9]((?:[0-9.eE+-]*)?)$", re.M)


def _outcome(fn: Callable[..., ScrapeReading], *args: Any, **kw: Any) -> tuple[str, bytes | None]:
    """The request's bytes, or the kind of error (the full path words it without the target)."""
    try:
        return ("request", fn(*args, **kw).request.SerializeToString())
    except (ExpositionError, ScrapeLimitExceeded) as e:
        return (type(e).__name__, None)


def jolokia_answer(data: bytes) -> None:
    """A Jolokia bulk answer: decoded, then mapped against a request of its own length."""
    try:
        answer = jolokia.parse_answer(data, URL)
        sent = JOLOKIA_SENT[: len(answer)] if isinstance(answer, list) else JOLOKIA_SENT[:1]
        jolokia.map_response(sent, answer, MAPPINGS, {"service.name": "fuzz"})
    except (jolokia.JolokiaError, ScrapeLimitExceeded):
        pass


def yaml_files(data: bytes) -> None:
    """relay.yaml (first byte even) or policy.yaml (odd) through the strict schema loader."""
    if not data:
        return
    try:
        text = data[1:].decode("utf-8")
    except UnicodeDecodeError:
        return  # both files are read as UTF-8 first and refused otherwise
    try:
        if data[0] & 1:
            pf, _ = load_text(text, PolicyFile, "policy.yaml")
            Policy(pf, b"s" * 32, "policy.yaml", "", 0.0)
        else:
            config.loads(text, "relay.yaml")
    except SchemaError:
        pass


_KEY = signing.SigningKey("fuzz", Ed25519PrivateKey.generate(), Path("/nonexistent"))
_VERIFIER = verify.Verifier({_KEY.key_id: _KEY.public})
SIGNED_AT = 1_800_000_000.0
SIGNED_HEADERS = ("signature-input", "signature", "content-digest", "content-type")


def signed_request(body: bytes = b"{}") -> dict[str, str]:
    headers = {"Content-Type": "application/x-protobuf", "Content-Digest": signing.content_digest(body)}
    signing.Signer([_KEY]).sign("POST", "https://ingest.example/v1/metrics", headers, now=SIGNED_AT)
    return headers


def signature_headers(data: bytes) -> None:
    """The ingest's check of a request's signature headers: the values come from the input,
    one per line, in SIGNED_HEADERS order, the rest of the input is the body."""
    parts = data.split(b"\n", len(SIGNED_HEADERS))
    values = [p.decode("latin-1") for p in parts[: len(SIGNED_HEADERS)]]
    body = parts[len(SIGNED_HEADERS)] if len(parts) > len(SIGNED_HEADERS) else b""
    headers = {k: v for k, v in zip(SIGNED_HEADERS, values, strict=False)}
    try:
        _VERIFIER.verify("POST", "https://ingest.example/v1/metrics", headers, body, now=SIGNED_AT)
    except verify.Rejected:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "otlp": otlp, "exposition": exposition, "jolokia": jolokia_answer, "yaml": yaml_files,
    "signature": signature_headers,
}


def seed_signature() -> bytes:
    h = {k.lower(): v for k, v in signed_request().items()}
    return "\n".join(h[k] for k in SIGNED_HEADERS).encode("latin-1") + b"\n{}"


def seed_json(value: object) -> bytes:
    return json.dumps(value).encode()
