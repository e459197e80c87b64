"""The bundle format on real files: building (and taking up after a crash), reading, checking;
and the `bundle` destination's settings."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.export import sequence
from relay.export.bundle import BundleBuilder, open_bundle, open_bundles, target_uri
from relay.export.prepare import prepare_blocking
from relay.export.signing import Signer, SigningKey, key_id
from relay.ingest.bundle_import import check
from relay.otlp import MetricsBuilder
from tests.unit.test_config import error, load


def key() -> SigningKey:
    k = Ed25519PrivateKey.generate()
    return SigningKey(key_id(k.public_key()), k, Path("/nonexistent"))


def payload(value: float) -> bytes:
    b = MetricsBuilder({"service.name": "t"}, "t")
    b.point(b.gauge("t.value", "1"), value, time.time_ns())
    return bytes(b.finish().SerializeToString())


def add(builder: BundleBuilder, signer: Signer, first: int, last: int) -> None:
    prepared = prepare_blocking("metrics", [payload(float(s)) for s in range(first, last + 1)], None, "zstd",
                                sign=True)
    headers = {**prepared.headers(), **sequence.headers(builder.about["relay_instance"], first, last)}
    signer.sign("POST", target_uri("metrics"), headers)
    builder.add("metrics", target_uri("metrics"), headers, prepared.wire, first=first, last=last,
                items=last - first + 1, created=(100.0 + first, 100.0 + last), redactions={("r", "drop"): 2})


def test_a_closed_bundle_holds_its_signed_requests_and_checks_out(tmp_path: Path) -> None:
    k = key()
    b = BundleBuilder.begin(tmp_path, "destination", "offline", "instance-0001")
    add(b, Signer([k]), 1, 3)
    add(b, Signer([k]), 4, 4)
    path = b.close([k])
    assert path is not None and path.suffix == ".bundle" and path.stat().st_mode & 0o777 == 0o600
    assert not open_bundles(tmp_path)  # the open directory is gone
    with open_bundle(path) as bundle:
        m = bundle.manifest
        assert (m["destination"], m["relay_instance"], m["key_ids"]) == ("offline", "instance-0001", [k.key_id])
        assert m["counts"] == {"requests": 2, "items": {"metrics": 4}, "bytes": b.size}
        assert m["sequences"] == {"metrics": [[1, 4]]}
        assert m["time_range"] == {"from": 101.0, "to": 104.0}
        assert m["redactions"] == {"r": {"drop": 4}}
        assert [r["sequence"] for r in m["requests"]] == ["1-3", "4-4"]
        result = check(bundle, {k.key_id: k.public})
        assert result.ok and result.manifest_key == k.key_id
        assert [c.items for c in result.requests] == [3, 1]
        # Against another relay's key nothing of it is trusted.
        other = key()
        assert check(bundle, {other.key_id: other.public}).manifest_problem.reason == "unknown_key"  # type: ignore[union-attr]


def test_a_crash_mid_add_keeps_every_committed_request(tmp_path: Path) -> None:
    k = key()
    b = BundleBuilder.begin(tmp_path, "destination", "offline", "instance-0001")
    add(b, Signer([k]), 1, 1)
    add(b, Signer([k]), 2, 2)
    # A third add cut short: its body written, its head not yet renamed into place.
    (b.partial / "000003.body").write_bytes(b"torn")
    (b.partial / "000003.json.tmp").write_bytes(b"{")
    (resumed,) = [BundleBuilder.resume(p) for p in open_bundles(tmp_path)]
    assert (resumed.id, len(resumed.heads), resumed.size) == (b.id, 2, b.size)
    add(resumed, Signer([k]), 3, 3)  # takes the torn request's place
    path = resumed.close([k])
    assert path is not None
    with open_bundle(path) as bundle:
        result = check(bundle, {k.key_id: k.public})
        assert result.ok and [c.first for c in result.requests] == [1, 2, 3]


def test_a_changed_manifest_is_refused_whole(tmp_path: Path) -> None:
    k = key()
    b = BundleBuilder.begin(tmp_path, "export", "vendor", "instance-0001")
    add(b, Signer([k]), 1, 1)
    path = b.close([k])
    assert path is not None
    with tarfile.open(path) as tar:
        parts = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    manifest = json.loads(parts["manifest.json"])
    manifest["counts"]["items"]["metrics"] = 1000
    parts["manifest.json"] = json.dumps(manifest).encode()
    forged = tmp_path / "forged.bundle"
    with tarfile.open(forged, "w") as tar:
        for name, data in parts.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open_bundle(forged) as bundle:
        problem = check(bundle, {k.key_id: k.public}).manifest_problem
    assert problem is not None and problem.reason == "bad_signature"


MINIMAL = "destinations:\n  - name: offline\n"


def test_a_bundle_destination_needs_a_directory_and_no_network_settings(tmp_path: Path) -> None:
    d = load(tmp_path, MINIMAL + "    kind: bundle\n    directory: bundles\n").config.destinations[0]
    assert (d.directory, d.target) == (str(tmp_path / "bundles"), f"bundle:{tmp_path / 'bundles'}")
    assert (d.bundle_max_bytes, d.bundle_max_age) == (64 * 1024 * 1024, 3600.0)
    assert "destinations[0]: a bundle destination needs a directory" in error(tmp_path, MINIMAL + "    kind: bundle\n")
    assert "destinations[0]: endpoint is required (or kind: bundle" in error(tmp_path, MINIMAL)
    assert "destinations[0]: endpoint, api_key_env: not used by a bundle destination" in error(
        tmp_path, MINIMAL + "    kind: bundle\n    directory: b\n    endpoint: https://x.example\n"
                            "    api_key_env: KEY\n")
    assert "destinations[0]: directory is for kind: bundle" in error(
        tmp_path, MINIMAL + "    endpoint: https://x.example\n    directory: b\n")
    assert "a bundle destination needs signing.enabled" in error(
        tmp_path, "signing: {enabled: false}\n" + MINIMAL + "    kind: bundle\n    directory: b\n")
    assert "bundle_max_age must be between 1s and 7d" in error(
        tmp_path, MINIMAL + "    kind: bundle\n    directory: b\n    bundle_max_age: 0s\n")


def test_export_batches_as_the_shipper_leases_and_reads_since_as_unix_or_iso() -> None:
    from relay.export.backlog import ExportError, _batches, parse_since
    from relay.spool import Entry

    entries = [Entry(seq, b"x" * size, 1, 0.0) for seq, size in ((1, 400), (2, 400), (3, 400), (4, 2000))]
    assert [[e.seq for e in b] for b in _batches(entries, 1000)] == [[1, 2], [3], [4]]
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2023-11-14T22:13:20") == 1700000000.0  # UTC unless it says otherwise
    assert parse_since("2023-11-14T23:13:20+01:00") == 1700000000.0
    with pytest.raises(ExportError, match="--since"):
        parse_since("yesterday")
