"""Replay protection beyond one ingest process: two replicas behind one name share their replay
state in a real Redis (Debian's redis-server, started here on a free loopback port), so each
refuses a replay of what the other accepted, a restarted replica still does, and with Redis
gone the ingest answers 503 rather than accept what it cannot check."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.export.signing import KeyStore, Signer, content_digest, public_pem
from relay.otlp import MetricsBuilder
from tests.procs import Ingest, Proc, free_port, port_open, wait_until

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="make test installs redis-server")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(tmp_path)], tmp_path / "redis.log")
    server.start()
    wait_until(lambda: port_open(port), what="redis to listen")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()


class SignedRequest:
    """One signed OTLP metrics request, addressed to a name both replicas serve (the Host header),
    as a load balancer in front of them would pass it on."""

    def __init__(self, signer: Signer, host: str, value: float) -> None:
        b = MetricsBuilder({"service.name": "replica-test"}, "test")
        b.point(b.gauge("replica.test", "1"), value, 1)
        self.body = b.finish().SerializeToString()
        self.host = host
        self.headers = {"Content-Type": "application/x-protobuf", "Content-Digest": content_digest(self.body)}
        signer.sign("POST", f"http://{host}/v1/metrics", self.headers)

    def send(self, ingest: Ingest) -> tuple[int, str]:
        req = urllib.request.Request(ingest.url + "/v1/metrics", data=self.body, method="POST",
                                     headers={**self.headers, "Host": self.host})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, ""
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Retry-After", "")


def test_two_replicas_refuse_each_others_replays_and_a_restart_keeps_the_state(tmp_path: Path, redis: str) -> None:
    key = KeyStore(tmp_path / "keys", overlap=0).init()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / f"{key.key_id}.pem").write_text(public_pem(key.public))
    signer = Signer([key])
    extra = ["--trusted-keys", str(trusted), "--replay-redis", redis, "--retry-after", "2"]
    a = Ingest(tmp_path, extra=extra, name="replica-a")
    b = Ingest(tmp_path, extra=extra, name="replica-b")
    a.start()
    b.start()
    host = "ingest.vendor.test"
    try:
        first = SignedRequest(signer, host, 1.0)
        assert first.send(a) == (200, "")
        assert first.send(b)[0] == 401  # accepted by A: a replay to B
        second = SignedRequest(signer, host, 2.0)
        assert second.send(b) == (200, "")
        assert second.send(a)[0] == 401
        assert a.stats()["rejected"] == {"replay": 1} and b.stats()["rejected"] == {"replay": 1}

        a.kill9()  # a restarted replica keeps nothing itself, and still refuses both
        a.start()
        assert first.send(a)[0] == 401 and second.send(a)[0] == 401
        assert SignedRequest(signer, host, 3.0).send(a) == (200, "")
        assert len(a.requests()) == 2 and len(b.requests()) == 1  # a refused replay is never stored
    finally:
        a.terminate()
        b.terminate()


def test_with_the_shared_replay_state_gone_the_ingest_answers_503(tmp_path: Path) -> None:
    key = KeyStore(tmp_path / "keys", overlap=0).init()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / f"{key.key_id}.pem").write_text(public_pem(key.public))
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    ingest = Ingest(tmp_path, extra=["--trusted-keys", str(trusted), "--replay-redis", nowhere, "--retry-after", "2"])
    ingest.start()
    try:
        assert SignedRequest(Signer([key]), f"127.0.0.1:{ingest.port}", 1.0).send(ingest) == (503, "2")
        assert ingest.requests() == [] and ingest.stats()["unavailable"] == {"replay_state": 1}
    finally:
        ingest.terminate()
