"""Offline bundles end to end, with real processes: a relay with a `bundle` destination writes
them, `bundle show` decodes and checks them, `ingest import` verifies and stores them, every
point exactly once; and each way of tampering with a bundle is refused or flagged, saying why."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.export.bundle import sign_manifest
from relay.export.signing import KeyStore, Signer, SigningKey, key_id
from relay.otlp import MetricsBuilder, from_json
from tests.procs import CLI, Ingest, Relay, port_open, relay_config, wait_until

QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}
METRIC = "test.bundle"


def push(relay: Relay, values: range) -> None:
    """One OTLP push per value, each acknowledged, each its own request (the backlog drains
    between pushes)."""
    # Relay.start waits for /healthz, which answers before the pipeline (and so the
    # receiver) has started.
    port = int(relay.otlp_url.rsplit(":", 1)[1])
    wait_until(lambda: port_open(port), what="the OTLP receiver to listen")
    for v in values:
        b = MetricsBuilder({"service.name": "bundle-test"}, "test")
        b.point(b.gauge(METRIC, "1"), float(v), time.time_ns())
        req = urllib.request.Request(relay.otlp_url + "/v1/metrics", data=b.finish().SerializeToString(),
                                     headers={"Content-Type": "application/x-protobuf"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        wait_until(lambda: relay.destination("offline")["backlog_items"] == 0, what="the push to be bundled")


def bundle_relay(tmp_path: Path, **dest: Any) -> tuple[Relay, Path]:
    cfg = relay_config(tmp_path, "http://127.0.0.1:1", sources=QUIET)
    cfg["destinations"] = [{"name": "offline", "kind": "bundle", "directory": str(tmp_path / "bundles"),
                            "linger": "0s", **dest}]
    relay = Relay(tmp_path, cfg)
    relay.keys("init")
    trusted = tmp_path / "trusted"
    relay.keys("export", "--out", str(trusted))
    return relay, trusted


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def import_bundle(bundle: Path, trusted: Path, store: Path) -> tuple[int, dict[str, Any]]:
    p = cli("ingest", "import", str(bundle), "--trusted-keys", str(trusted), "--store", str(store), "--json")
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)


def stored_values(store: Path) -> list[float]:
    values = []
    for path in sorted(store.glob("metrics-*.jsonl")):
        for line in path.read_text().splitlines():
            msg = from_json("metrics", json.dumps(json.loads(line)["request"]).encode())
            for rm in msg.resource_metrics:
                for sm in rm.scope_metrics:
                    values += [p.as_double for m in sm.metrics if m.name == METRIC for p in m.gauge.data_points]
    return values


def bundles(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "bundles").glob("*.bundle"))


def test_a_bundle_destination_round_trip_stores_every_point_exactly_once(tmp_path: Path) -> None:
    relay, trusted = bundle_relay(tmp_path)
    relay.start()
    push(relay, range(0, 3))
    relay.terminate()  # a stop closes the open bundle
    (first,) = bundles(tmp_path)
    # Rolled over by age while running.
    cfg = relay.cfg
    cfg["destinations"][0]["bundle_max_age"] = "1s"
    relay.write_config(cfg)
    relay.start()
    push(relay, range(3, 5))
    wait_until(lambda: len(bundles(tmp_path)) >= 2, what="a bundle closed by age")
    # A crash with a bundle open loses nothing acknowledged: the next start closes it.
    cfg["destinations"][0]["bundle_max_age"] = "1h"
    relay.write_config(cfg)
    before = relay.status()["config"]["last_reload"]
    relay.signal(signal.SIGHUP)
    wait_until(lambda: relay.status()["config"]["last_reload"] != before, what="the reload")
    push(relay, range(5, 8))
    assert relay.destination("offline")["bundle"]["open_requests"] >= 1
    relay.kill9()
    assert list((tmp_path / "bundles").glob(".open-*"))
    relay.start()
    wait_until(lambda: not list((tmp_path / "bundles").glob(".open-*")), what="the open bundle to be closed")
    relay.terminate()
    assert "left open by an earlier run" in relay.log()
    written = bundles(tmp_path)
    assert len(written) >= 3

    # The reviewer's view: what is inside, and that it all checks out against the relay's key.
    (kid,) = [p.stem for p in trusted.glob("*.pem")]
    p = cli("bundle", "show", str(first), "--config", str(relay.config_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 requests" in p.stdout and "items: metrics 3" in p.stdout and "metrics 1-3" in p.stdout
    assert f"manifest signature verifies (key {kid}" in p.stdout
    assert p.stdout.count("  ok\n") == 3 and p.stdout.rstrip().endswith("every digest and signature checks out")
    assert "policy sha256: " + hashlib.sha256(
        Path(relay.cfg["policy"]["file"]).read_bytes()).hexdigest() in p.stdout
    shown = json.loads(cli("bundle", "show", str(first), "--config", str(relay.config_path), "--json").stdout)
    assert shown["manifest"]["key_ids"] == [kid] and shown["checks"]["ok"] is True
    assert [r["sequence"] for r in shown["manifest"]["requests"]] == ["1-1", "2-2", "3-3"]

    # The vendor's import: each point exactly once, and a second import stores nothing again.
    store = tmp_path / "store"
    for b in written:
        code, report = import_bundle(b, trusted, store)
        assert code == 0 and report["flagged"] == [] and report["manifest_signed_by"] == kid, report
    assert sorted(stored_values(store)) == [float(v) for v in range(8)]
    code, report = import_bundle(first, trusted, store)
    assert code == 0 and report["stored"] == [] and len(report["duplicates"]) == 3, report
    assert sorted(stored_values(store)) == [float(v) for v in range(8)]
    records = [json.loads(line) for line in next(store.glob("metrics-*.jsonl")).read_text().splitlines()]
    assert {r["key_id"] for r in records} == {kid}
    assert {r["origin"].split(":")[0] for r in records} == {"bundle"}

    check_tampering(tmp_path, first, trusted, relay)


# -- tampering ---------------------------------------------------------------------------------------


def members(bundle: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(bundle) as tar:
        out = []
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out.append((m.name, f.read()))
        return out


def write(path: Path, parts: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in parts:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def resigned(parts: list[tuple[str, bytes]], key: SigningKey, edit: Any) -> list[tuple[str, bytes]]:
    """The bundle with its manifest edited, and signed again by `key`."""
    d = dict(parts)
    manifest = json.loads(d["manifest.json"])
    edit(manifest)
    raw = json.dumps(manifest).encode()
    return [(n, raw if n == "manifest.json" else sign_manifest(raw, [key]) if n == "manifest.sig" else data)
            for n, data in parts]


def check_tampering(tmp_path: Path, bundle: Path, trusted: Path, relay: Relay) -> None:
    parts = members(bundle)
    relay_key = KeyStore(tmp_path / "state" / "keys", 60).current()
    case = iter(range(100))

    def imported(changed: list[tuple[str, bytes]], keys: Path = trusted) -> tuple[int, dict[str, Any]]:
        n = next(case)
        return import_bundle(write(tmp_path / f"tampered-{n}.bundle", changed), keys, tmp_path / f"store-{n}")

    # One byte of a body changed.
    flipped = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == "requests/000002.body" else d) for n, d in parts]
    code, r = imported(flipped)
    assert code == 1 and len(r["stored"]) == 2
    assert r["flagged"] == [{"reason": "altered", "message": "requests/000002: not what the manifest says it is: "
                                                             "changed after the relay wrote it"}]
    # A request removed.
    code, r = imported([(n, d) for n, d in parts if not n.startswith("requests/000001.")])
    assert code == 1 and len(r["stored"]) == 2
    assert r["flagged"] == [{"reason": "missing",
                             "message": "requests/000001: listed in the manifest, but not in the bundle (removed?)"}]
    # A request duplicated: under a name of its own, and under its own name.
    copy = [(n.replace("000001", "000009"), d) for n, d in parts if n.startswith("requests/000001.")]
    code, r = imported(parts + copy)
    assert code == 1 and len(r["stored"]) == 3
    assert r["flagged"] == [{"reason": "unlisted", "message": "requests/000009: in the bundle, but not in its "
                                                              "manifest (added after the relay wrote it?)"}]
    code, r = imported(parts + [(n, d) for n, d in parts if n.startswith("requests/000001.")])
    assert code == 1 and r["stored"] == [] and r["refused"] == (
        "duplicate_member: member requests/000001.body appears more than once in the file")
    # Listed twice in a manifest the relay's key signed: the second is a duplicate, not stored.
    code, r = imported(resigned(parts, relay_key, lambda m: m["requests"].append(
        {**m["requests"][0], "name": "requests/000009"}) or None) + copy)
    assert code == 0 and len(r["stored"]) == 3 and r["duplicates"] == ["requests/000009"]
    # A request signed by a key the vendor does not know (its manifest entry made to match).
    stranger = Ed25519PrivateKey.generate()
    skey = SigningKey(key_id(stranger.public_key()), stranger, Path("/nonexistent"))
    head = json.loads(dict(parts)["requests/000003.json"])
    headers = {k: v for k, v in head["headers"] if k not in ("Signature", "Signature-Input")}
    Signer([skey]).sign("POST", head["url"], headers)
    head["headers"] = [[k, v] for k, v in headers.items()]
    new_head = json.dumps(head).encode()

    def match(m: dict[str, Any]) -> None:
        m["requests"][2]["head_sha256"] = hashlib.sha256(new_head).hexdigest()

    forged = [(n, new_head if n == "requests/000003.json" else d) for n, d in resigned(parts, relay_key, match)]
    code, r = imported(forged)
    assert code == 1 and len(r["stored"]) == 2
    assert r["flagged"] == [{"reason": "unknown_key",
                             "message": f"requests/000003: signed by unregistered key id(s): {skey.key_id}"}]
    # The manifest edited without the relay's key: refused whole.
    edited = [(n, d.replace(b'"items": 1', b'"items": 9', 1) if n == "manifest.json" else d) for n, d in parts]
    code, r = imported(edited)
    assert code == 1 and r["stored"] == [] and r["refused"].startswith("bad_signature: the manifest's signature")
    # A vendor that does not know the relay's key stores nothing of it.
    strangers = tmp_path / "strangers"
    strangers.mkdir()
    code, r = imported(parts, strangers)
    assert code == 1 and r["refused"].startswith("unknown_key: manifest signed by unregistered key id(s)")
    # And the reviewer's `bundle show` says what is wrong with a tampered one.
    p = cli("bundle", "show", str(tmp_path / "tampered-0.bundle"), "--config", str(relay.config_path))
    assert p.returncode == 1 and "requests/000002" in p.stdout and "PROBLEM: requests/000002: not what the" \
        in p.stdout and "PROBLEMS FOUND" in p.stdout


# -- export and confirm ------------------------------------------------------------------------------


def push_spooled(relay: Relay, values: range) -> None:
    """Pushes the relay acknowledges (spooled) while its destination is down."""
    for v in values:
        b = MetricsBuilder({"service.name": "bundle-test"}, "test")
        b.point(b.gauge(METRIC, "1"), float(v), time.time_ns())
        req = urllib.request.Request(relay.otlp_url + "/v1/metrics", data=b.finish().SerializeToString(),
                                     headers={"Content-Type": "application/x-protobuf"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def test_export_and_confirm_carry_a_down_destinations_backlog_out_and_lose_nothing(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, extra=[])
    cfg = relay_config(tmp_path, ingest.url, sources=QUIET)
    relay = Relay(tmp_path, cfg)
    relay.keys("init")
    trusted = tmp_path / "trusted"
    relay.keys("export", "--out", str(trusted))
    ingest.args += ["--trusted-keys", str(trusted)]
    config = ["--config", str(relay.config_path)]
    imported = tmp_path / "imported"
    relay.start()
    try:
        # The vendor is unreachable: five points wait in the spool.
        push_spooled(relay, range(0, 5))
        wait_until(lambda: relay.destination()["backlog_items"] == 5, what="the backlog")
        first = tmp_path / "out" / "first.bundle"
        p = cli("bundle", "export", "--destination", "vendor", "--out", str(first), *config)
        assert p.returncode == 0, p.stderr
        assert "NOT delivered yet" in p.stdout and "metrics 1-5" in p.stdout
        (record,) = (tmp_path / "state" / "bundle-exports").glob("*.json")
        p = cli("bundle", "confirm", str(first), *config)
        assert p.returncode == 1 and "the relay is running" in p.stderr
        assert relay.destination()["backlog_items"] == 5  # exported is not delivered
        shown = cli("bundle", "show", str(first), *config)
        assert shown.returncode == 0 and "export of destination vendor" in shown.stdout, shown.stdout
        code, report = import_bundle(first, trusted, imported)
        assert code == 0 and report["items_stored"] == 5
        # Without a confirm nothing is lost: restarted, and with the vendor back, all of it ships.
        relay.terminate()
        relay.start()
        ingest.start()
        wait_until(lambda: sorted(stored_values(ingest.store)) == [float(v) for v in range(5)],
                   what="the backlog to ship live")
        wait_until(lambda: relay.destination()["backlog_items"] == 0, what="the backlog to drain")
        assert record.exists()

        # With a confirm, the backlog leaves the spool as delivered.
        ingest.terminate()
        push_spooled(relay, range(5, 10))
        wait_until(lambda: relay.destination()["backlog_items"] == 5, what="a second backlog")
        second = tmp_path / "out" / "second.bundle"
        assert cli("bundle", "export", "--destination", "vendor", "--out", str(second), *config).returncode == 0
        relay.terminate()
        p = cli("bundle", "confirm", str(second), *config)
        assert p.returncode == 0, p.stderr
        assert "metrics entries up to 10 of destination vendor: confirmed" in p.stdout
        # Confirming what was delivered meanwhile is harmless.
        p = cli("bundle", "confirm", str(first), *config)
        assert p.returncode == 0 and "metrics entries up to 5 of destination vendor: delivered already" in p.stdout
        assert not list((tmp_path / "state" / "bundle-exports").glob("*.json"))
        relay.start()
        ingest.start()
        assert relay.destination()["backlog_items"] == 0
        push_spooled(relay, range(10, 11))
        wait_until(lambda: 10.0 in stored_values(ingest.store), what="new data to ship")
        assert sorted(stored_values(ingest.store)) == [float(v) for v in (*range(5), 10)]
        code, report = import_bundle(second, trusted, imported)
        assert code == 0 and report["items_stored"] == 5
        assert sorted(stored_values(imported)) == [float(v) for v in range(10)]
    finally:
        relay.terminate()
        ingest.terminate()
