"""The policy's path for logs (relay.policy.logs) against the per-point engine: the same bytes
out and the same outcome, on the bench's log, a real broker's server.log and requests that
drop records, bodies, scopes and resources."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from bench import logs as bench_logs
from relay.policy import load_policy, logs
from relay.policy.engine import Policy
from relay.sources.log_tail import FileRules, Tail

ROOT = Path(__file__).parents[2]
SECRET = b"0123456789abcdef0123456789abcdef"
HARSH = """\
version: 1
metrics: {default: allow}
resource_attributes:
  default: keep
  rules: [{key: secret.*, action: drop}]
attributes:
  default: keep
  rules: [{key: user, action: hash}, {key: token, action: mask}]
values:
  - {regex: "DROPME", action: drop_item}
  - {regex: "BLANKME", action: drop_attribute}
  - {detector: ipv4, action: hash}
  - {regex: "secret-[0-9]+", action: mask, keys: [body]}
"""


def requests_of(path: Path) -> list[bytes]:
    tail = Tail(str(path), FileRules(0, 0, 1 << 20, 1 << 24, 1 << 30), None, history=False)
    out = []
    for _ in range(100):
        got = tail.read(time.time_ns(), {"service.name": "kafka", "host.name": "b1"})
        out += [c.message.SerializeToString() for c in got if c.message is not None]
        for c in got:
            tail.committed(c.position)
        if not got:
            break
    tail.last_data -= 10
    out += [c.message.SerializeToString() for c in tail.read(time.time_ns(), {}) if c.message is not None]
    tail.close()
    return out


def crafted() -> bytes:
    req = logs_service_pb2.ExportLogsServiceRequest()
    for n, resource in enumerate(["plain", "DROPME", "10.0.0.1"]):
        rl = req.resource_logs.add()
        kv = rl.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", resource
        kv = rl.resource.attributes.add()
        kv.key, kv.value.string_value = "secret.x", "s"
        for scope in ["a.B", "DROPME.scope", ""]:
            sl = rl.scope_logs.add()
            sl.scope.name = scope
            for body in ["from 10.1.2.3 ok", "DROPME here", "BLANKME there", "secret-42 and 10.1.2.3", "",
                         "from 10.1.2.3 ok"]:
                r = sl.log_records.add()
                r.body.string_value = body
                r.severity_text = "INFO" if n else "DROPME"
                kv = r.attributes.add()
                kv.key, kv.value.string_value = "user", "alice"
                kv = r.attributes.add()
                kv.key, kv.value.string_value = "token", "t"
            r = sl.log_records.add()
            entry = r.body.kvlist_value.values.add()
            entry.key, entry.value.string_value = "peer", "10.9.9.9"
            r = sl.log_records.add()
            r.body.bytes_value = b"\x00raw"
            r = sl.log_records.add()
            r.event_name = "DROPME.event"
            r = sl.log_records.add()
            r.body.string_value = "kept"
            kv = r.attributes.add()
            kv.key, kv.value.string_value = "note", "BLANKME"
    return req.SerializeToString()


def same(p: Policy, bodies: list[bytes]) -> None:
    for body in bodies:
        fast, fast_outcome = logs.apply_logs(p, body, p.body_memo)
        slow, slow_outcome = p.apply_per_point("logs", body)
        assert fast == slow
        assert dict(fast_outcome.counts) == dict(slow_outcome.counts)
        assert (fast_outcome.items_in, fast_outcome.items_out) == (slow_outcome.items_in, slow_outcome.items_out)


@pytest.fixture()
def bench_log(tmp_path: Path) -> Path:
    path = tmp_path / "server.log"
    bench_logs.write_log(path, 20_000)
    return path


def test_the_shipped_policy_on_the_bench_log_and_a_real_broker_log(bench_log: Path) -> None:
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    bodies = requests_of(bench_log) + requests_of(ROOT / "tests" / "fixtures" / "kafka_4.4_server.log")
    same(p, bodies)
    same(p, bodies)  # the second time from the memos
    assert p.apply("logs", bodies[0])[0] == logs.apply_logs(p, bodies[0], p.body_memo)[0]


def test_drops_of_records_bodies_scopes_and_resources(tmp_path: Path) -> None:
    path = tmp_path / "harsh.yaml"
    path.write_text(HARSH)
    p = load_policy(path, SECRET)
    same(p, [crafted(), crafted()])
    _, outcome = logs.apply_logs(p, crafted(), p.body_memo)
    assert outcome.items_out < outcome.items_in and outcome.counts[("envelope", "dropped_item")] > 0


def test_the_body_memo_stays_within_its_bound(bench_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "BODY_MEMO_CHARS", 10_000)
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    bodies = requests_of(bench_log)
    for body in bodies:
        logs.apply_logs(p, body, p.body_memo)
    memo = p.body_memo
    assert 0 < memo.size <= 10_000 and sum(map(len, memo.decisions)) == memo.size
    assert not any(key[2] == "body" for key in p._value_cache)  # bodies do not crowd the engine's memo
    same(p, bodies)
