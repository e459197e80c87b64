"""The redaction policy on a running relay: hot reload over the spooled backlog, refusal of a
bad edit, fail-closed start, merges end to end, the shipped default with a real SDK client,
and the policy and outbox commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from relay.otlp import MetricsBuilder
from tests.integration.test_otlp_receiver import post, push_with_sdk
from tests.procs import CLI, Ingest, Relay, relay_config, wait_until

ROOT = Path(__file__).parents[2]
QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False}}
KEEP_ALL = "version: 1\nresource_attributes: {default: keep}\nattributes: {default: keep}\n"


def push(relay: Relay, points: list[tuple[int, dict[str, Any]]], name: str = "orders.total") -> None:
    b = MetricsBuilder({"service.name": "shop"}, "test")
    m = b.sum(name, "1")
    for value, attrs in points:
        b.point(m, value, 1_800_000_000_000_000_000, 1_799_000_000_000_000_000, attrs)
    code, _, _ = post(relay.otlp_url + "/v1/metrics", b.finish().SerializeToString())
    assert code == 200


def store_text(ingest: Ingest) -> str:
    return "".join(p.read_text() for p in ingest.store.glob("*.jsonl")) if ingest.store.exists() else ""


def start(tmp_path: Path, policy_text: str | None, ingest_up: bool = True) -> tuple[Relay, Ingest, Path]:
    policy = tmp_path / "policy.yaml"
    if policy_text is not None:
        policy.write_text(policy_text)
    ingest = Ingest(tmp_path)
    if ingest_up:
        ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources=QUIET, policy={"file": str(policy), "watch_interval": "200ms"})
    relay = Relay(tmp_path, cfg)
    relay.start()
    return relay, ingest, policy


def policy_state(relay: Relay) -> dict[str, Any]:
    return relay.status()["policies"][0]


def test_tightened_policy_covers_the_spooled_backlog(tmp_path: Path) -> None:
    relay, ingest, policy = start(tmp_path, KEEP_ALL, ingest_up=False)
    try:
        push(relay, [(7, {"customer": "ACME-SECRET-77", "region": "eu"})])
        wait_until(lambda: relay.status()["spool"]["entries"] >= 1, what="the push to be spooled")
        old = policy_state(relay)["sha256"]
        policy.write_text(KEEP_ALL + "values:\n  - {regex: 'ACME-SECRET-[0-9]+', action: mask, name: customer-ids}\n")
        wait_until(lambda: policy_state(relay)["sha256"] != old, what="the edited policy to load")
        ingest.start()
        wait_until(lambda: "orders.total" in store_text(ingest), what="the backlog at the ingest")
        text = store_text(ingest)
        assert "ACME-SECRET-77" not in text and "***" in text
        record = json.loads(text.splitlines()[0])
        assert record["policy_sha256"] == policy_state(relay)["sha256"], "provenance header names the new policy"
        counts = relay.destination()["redactions"]
        assert counts["customer-ids"] == {"masked": 1}
        assert relay.metric("relay_redactions_total", rule="customer-ids", action="masked") == 1
    finally:
        relay.terminate()
        ingest.terminate()


def test_invalid_policy_is_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    relay, ingest, policy = start(tmp_path, KEEP_ALL)
    try:
        good = policy_state(relay)["sha256"]
        policy.write_text(KEEP_ALL + "values:\n  - {detector: social_security, action: mask}\n")
        err = wait_until(lambda: policy_state(relay)["last_error"], what="the refusal")
        assert f"{policy}:5: values[0]: unknown detector 'social_security'" in err
        assert policy_state(relay)["sha256"] == good and policy_state(relay)["in_force"]
        push(relay, [(1, {"k": "v"})])
        wait_until(lambda: "orders.total" in store_text(ingest), what="shipping under the old policy")
        assert relay.readyz()[0] == 200
    finally:
        relay.terminate()
        ingest.terminate()
    assert "policy reload refused" in relay.log()


def test_without_a_valid_policy_nothing_ships_until_one_appears(tmp_path: Path) -> None:
    relay, ingest, policy = start(tmp_path, None)
    try:
        push(relay, [(3, {"k": "v"})])
        _, body = wait_until(lambda: (r := relay.readyz())[0] == 503 and r, what="not ready")
        assert any("no valid redaction policy" in r and "policy file not found" in r for r in body["reasons"])
        wait_until(lambda: relay.status()["spool"]["entries"] >= 1, what="data kept in the spool")
        assert ingest.requests() == []
        policy.write_text(KEEP_ALL)
        wait_until(lambda: "orders.total" in store_text(ingest), what="shipping once a policy is valid")
        wait_until(lambda: relay.readyz()[0] == 200, what="ready")
    finally:
        relay.terminate()
        ingest.terminate()


def test_dropping_an_attribute_merges_cumulative_series_at_the_ingest(tmp_path: Path) -> None:
    relay, ingest, _ = start(tmp_path, "version: 1\nresource_attributes: {default: keep}\n"
                                       "attributes:\n  default: keep\n  rules: [{key: pod, action: drop}]\n")
    try:
        push(relay, [(10, {"pod": "a", "route": "/x"}), (32, {"pod": "b", "route": "/x"})])
        wait_until(lambda: "orders.total" in store_text(ingest), what="arrival")
        rec = json.loads(store_text(ingest).splitlines()[0])["request"]
        (metric,) = rec["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        (point,) = metric["sum"]["dataPoints"]
        assert point["asInt"] == "42"
        assert point["attributes"] == [{"key": "route", "value": {"stringValue": "/x"}}]
    finally:
        relay.terminate()
        ingest.terminate()


def test_shipped_default_policy_with_a_real_sdk_client(tmp_path: Path) -> None:
    relay, ingest, _ = start(tmp_path, (ROOT / "configs" / "policy.yaml").read_text())
    try:
        push_with_sdk(relay.otlp_url, "protobuf", "dflt")
        wait_until(lambda: ingest.requests("traces") and ingest.requests("logs")
                   and "orders.processed" in store_text(ingest), what="SDK data at the ingest")
        metrics = [r["request"] for r in ingest.requests("metrics")]
        rm = next(rm for r in metrics for rm in r["resourceMetrics"])
        res = {a["key"]: a["value"].get("stringValue") for a in rm["resource"]["attributes"]}
        assert res["service.name"] == "checkout-dflt"
        assert res == {"service.name": "checkout-dflt", "deployment.environment": "test"}  # both allowlisted
        point = rm["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]
        assert "attributes" not in point or point["attributes"] == [], "region is not in the allowlist"
        span = ingest.requests("traces")[0]["request"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert span["name"] == "checkout dflt"
        assert all(a["key"] != "order.id" for a in span.get("attributes", []))
        counts = relay.destination()["redactions"]
        assert counts["attributes.default"]["dropped"] >= 3
    finally:
        relay.terminate()
        ingest.terminate()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_policy_test_unhash_and_outbox_commands(tmp_path: Path) -> None:
    fixture = ROOT / "tests" / "fixtures" / "otlp_proto_examples_metrics.json"
    default = ROOT / "configs" / "policy.yaml"
    p = run_cli("policy", "test", "--policy", str(default), "--input", str(fixture))
    assert p.returncode == 0, p.stderr
    assert "items in: 4, would leave: 4" in p.stdout and "attributes.default" in p.stdout and "dropped" in p.stdout
    p = run_cli("policy", "test", "--policy", str(default), "--input", str(fixture), "--json")
    out = json.loads(p.stdout)
    assert out[0]["request"]["resourceMetrics"][0]["resource"]["attributes"][0]["key"] == "service.name"
    p = run_cli("policy", "test", "--policy", str(tmp_path / "nope.yaml"), "--input", str(fixture))
    assert p.returncode == 2 and "policy file not found" in p.stderr and "Traceback" not in p.stderr

    hashing = "version: 1\nresource_attributes: {default: keep}\nattributes:\n  default: keep\n" \
              "  rules: [{key: customer, action: hash}]\n"
    relay, ingest, _ = start(tmp_path, hashing, ingest_up=False)
    try:
        push(relay, [(5, {"customer": "globex-corp"})])
        wait_until(lambda: relay.status()["spool"]["entries"] >= 1, what="spooled")
        p = run_cli("policy", "test", "--config", str(relay.config_path), "--from-spool", "5")
        assert p.returncode == 0 and "attributes:customer" in p.stdout and "hashed 1" in p.stdout, p.stdout
        p = run_cli("policy", "test", "--config", str(relay.config_path), "--from-spool", "5", "--json")
        token = json.loads(p.stdout)[0]["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0][
            "sum"]["dataPoints"][0]["attributes"][0]["value"]["stringValue"]
        assert token.startswith("h:") and len(token) == 18
        p = run_cli("policy", "unhash", token, "--config", str(relay.config_path))
        assert p.returncode == 0 and "'globex-corp'" in p.stdout and "customer" in p.stdout, p.stdout + p.stderr
        assert run_cli("policy", "unhash", "h:0000000000000000", "--config", str(relay.config_path)).returncode == 1
        ingest.start()
        wait_until(lambda: "orders.total" in store_text(ingest), what="arrival")
        assert token in store_text(ingest) and "globex-corp" not in store_text(ingest)
        p = run_cli("outbox", "--url", relay.status_url, "--last", "3")
        assert p.returncode == 0 and "vendor  metrics  1 items" in p.stdout, p.stdout
        p = run_cli("outbox", "--url", relay.status_url, "--json")
        shipped = json.loads(p.stdout)
        assert token in json.dumps(shipped[-1]["request"]) and "globex-corp" not in p.stdout
    finally:
        relay.terminate()
        ingest.terminate()
