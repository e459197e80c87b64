"""The vendor's import of an offline bundle: every request checked like a live one, then stored.

Owns: checking a bundle (relay/export/bundle.py) against trusted keys, `check`, which
`telemetry-relay bundle show` runs too, with the relay's own keys; and `import_bundle`,
which stores what passes in the live ingest's store (relay/ingest/store.py).

What a bundle must pass (docs/wire-protocol.md, "Bundles"):
- as a whole, or nothing of it is stored: its manifest is signed by a registered key and
  the signature verifies; no member name repeats;
- each request listed in the manifest, or that request is flagged and not stored: it is in
  the file, byte for byte what the manifest says (head and body SHA-256); it is a POST to
  bundle://offline.invalid/v1/<signal>; its signature by a registered key verifies,
  covering what it must, and its Content-Digest matches the body (Verifier.verify_archived:
  a bundle can be far older than the live replay window, so neither freshness nor the
  nonce is judged); its sequence, instance and policy hash are the ones the manifest
  lists; it decodes;
- against the store: a request whose (instance, signal, range) is stored already (a second
  import, or the same data received live) is flagged as a duplicate and not stored again;
  one that only partly overlaps is stored, and flagged (at least once, never lost).
A request in the file that the manifest does not list is flagged and never stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError
from multidict import CIMultiDict

from relay.compression import BadEncoding, BodyTooLarge, decompress
from relay.export import sequence
from relay.export.bundle import BundleError, OpenBundle, manifest_key, open_bundle, target_uri
from relay.ingest import store
from relay.ingest.verify import Rejected, Verifier
from relay.otlp import SIGNAL_INFO, SIGNALS, Signal, count_items

__all__ = ["BundleCheck", "Checked", "ImportReport", "check", "import_bundle"]


@dataclass
class Checked:
    """One request listed in a manifest, and what is wrong with it (None: nothing)."""

    name: str
    signal: Signal | None
    first: int
    last: int
    items: int
    size: int
    problem: tuple[str, str] | None = None  # (reason, message)
    key_id: str | None = None
    headers: CIMultiDict[str] | None = field(default=None, repr=False)
    wire: bytes | None = field(default=None, repr=False)

    def fail(self, reason: str, message: str) -> Checked:
        self.problem = (reason, f"{self.name}: {message}")
        return self


@dataclass
class BundleCheck:
    manifest: dict[str, Any]
    manifest_key: str | None  # the key whose signature over the manifest verified
    manifest_problem: BundleError | None
    requests: list[Checked]
    unlisted: list[str]  # request members the manifest does not name

    @property
    def ok(self) -> bool:
        return self.manifest_problem is None and not self.unlisted and all(r.problem is None for r in self.requests)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(bundle: OpenBundle, trusted: Mapping[str, Ed25519PublicKey]) -> BundleCheck:
    """Everything that can be checked without the store. Never raises for what it finds."""
    manifest = bundle.manifest
    key = None
    try:
        key = manifest_key(bundle, trusted)
        repeated = sorted({m for m in bundle.members if bundle.members.count(m) > 1})
        if repeated:
            raise BundleError("duplicate_member", f"member {repeated[0]} appears more than once in the file")
        listed = manifest.get("requests")
        if not isinstance(listed, list) or not all(isinstance(e, dict) for e in listed):
            raise BundleError("malformed", "the manifest has no list of requests")
        names = [e.get("name") for e in listed]
        if len(set(names)) != len(names):
            raise BundleError("malformed", "the manifest lists a request twice")
    except BundleError as e:
        return BundleCheck(manifest, key, e, [], [])
    verifier = Verifier(trusted)
    checked = [_check_request(bundle, entry, verifier) for entry in listed]
    unlisted = [n for n in bundle.request_names() if n not in set(names)]
    return BundleCheck(manifest, key, None, checked, unlisted)


def _check_request(bundle: OpenBundle, entry: dict[str, Any], verifier: Verifier) -> Checked:
    name, signal = str(entry.get("name")), entry.get("signal")
    try:
        first, last = sequence.parse_range(str(entry.get("sequence")))
    except ValueError:
        first = last = 0
    c = Checked(name, signal if signal in SIGNALS else None, first, last, int(entry.get("items") or 0),
                int(entry.get("bytes") or 0))
    if c.signal is None or not first:
        return c.fail("malformed", "the manifest gives no valid signal and sequence for it")
    raw_head, wire = bundle.read(f"{name}.json"), bundle.read(f"{name}.body")
    if raw_head is None or wire is None:
        return c.fail("missing", "listed in the manifest, but not in the bundle (removed?)")
    if _sha256(raw_head) != entry.get("head_sha256") or _sha256(wire) != entry.get("body_sha256"):
        return c.fail("altered", "not what the manifest says it is: changed after the relay wrote it")
    try:
        head = json.loads(raw_head)
        c.headers = CIMultiDict((str(k), str(v)) for k, v in head["headers"])
    except (ValueError, KeyError, TypeError):
        return c.fail("malformed", "its head is not a request")
    url = target_uri(c.signal)
    if head.get("method") != "POST" or head.get("url") != url:
        return c.fail("wrong_target", f"not a POST to {url}")
    try:
        c.key_id = verifier.verify_archived("POST", url, c.headers, wire)
    except Rejected as e:
        return c.fail(e.reason, str(e))
    h = c.headers
    if h.get(sequence.SEQUENCE_HEADER) != entry.get("sequence"):
        return c.fail("bad_sequence", f"its {sequence.SEQUENCE_HEADER} is not the {entry.get('sequence')} "
                                      "the manifest lists")
    if h.get(sequence.INSTANCE_HEADER) != bundle.manifest.get("relay_instance"):
        return c.fail("bad_sequence", f"its {sequence.INSTANCE_HEADER} is not the manifest's relay instance")
    if h.get("X-Relay-Policy-SHA256") != entry.get("policy_sha256"):
        return c.fail("policy_mismatch", "its policy hash is not the one the manifest lists")
    c.wire = wire
    return c


@dataclass
class ImportReport:
    bundle: str
    manifest_key: str | None = None
    stored: list[Checked] = field(default_factory=list)
    overlapping: list[Checked] = field(default_factory=list)  # stored, but partly there already
    duplicates: list[Checked] = field(default_factory=list)  # there already: not stored again
    flagged: list[tuple[str, str]] = field(default_factory=list)  # (reason, message): refused
    refused: BundleError | None = None  # the whole bundle

    @property
    def items_stored(self) -> int:
        return sum(c.items for c in self.stored + self.overlapping)


def import_bundle(path: Path, trusted: Mapping[str, Ed25519PublicKey], store_dir: Path,
                  max_body: int = 64 * 1024 * 1024) -> ImportReport:
    """Check a bundle and store what passes. Raises BundleError when the file is not a bundle."""
    store_dir.mkdir(parents=True, exist_ok=True)
    with open_bundle(path) as bundle:
        checked = check(bundle, trusted)
        report = ImportReport(str(bundle.manifest.get("bundle")), checked.manifest_key)
        if checked.manifest_problem:
            report.refused = checked.manifest_problem
            return report
        ledger = store.Ledger.of_store(store_dir)
        instance = str(bundle.manifest.get("relay_instance"))
        for c in checked.requests:
            if c.problem:
                report.flagged.append(c.problem)
                continue
            assert c.signal and c.wire is not None and c.headers is not None
            if ledger.covers(instance, c.signal, c.first, c.last):
                report.duplicates.append(c)
                continue
            try:
                msg = SIGNAL_INFO[c.signal].request()
                msg.ParseFromString(decompress(c.wire, c.headers.get("Content-Encoding", ""), max_body))
            except (BodyTooLarge, BadEncoding, DecodeError) as e:
                report.flagged.append(("bad_body", f"{c.name}: its body does not decode: {e}"))
                continue
            c.items = count_items(c.signal, msg)
            (report.overlapping if ledger.overlaps(instance, c.signal, c.first, c.last) else report.stored).append(c)
            rec = store.record(c.headers, c.key_id, f"bundle:{report.bundle}")
            store.append(store.path_for(store_dir, c.signal), store.encode_line(rec, msg))
            ledger.add(instance, c.signal, c.first, c.last)
        for name in checked.unlisted:
            report.flagged.append(("unlisted", f"{name}: in the bundle, but not in its manifest (added after the "
                                               "relay wrote it?)"))
    return report
