"""Slow, oversized and hostile clients against a real relay process: none of them may stop the
OTLP receiver or the status server, or read the status from a web page (DNS rebinding)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from relay.otlp import MetricsBuilder
from tests.procs import Ingest, Relay, http_get, relay_config, wait_until

QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False}}


def small_push() -> bytes:
    b = MetricsBuilder({"service.name": "legit"}, "test")
    b.point(b.gauge("legit.value", "1"), 1.0, time.time_ns(), 0, {})
    return b.finish().SerializeToString()


def many_points_push(nbytes: int) -> bytes:
    """A valid metrics request of about nbytes, made of many small points (parsed, it is far
    larger than on the wire): a serialized request repeated is a request with its parts repeated."""
    b = MetricsBuilder({"service.name": "big"}, "test")
    g = b.gauge("big.value", "1")
    for i in range(2000):
        b.point(g, float(i), 1_000_000 + i, 0, {"series": f"s{i}"})
    one = b.finish().SerializeToString()
    return one * (nbytes // len(one))


def blob_push(nbytes: int) -> bytes:
    """A valid metrics request of about nbytes: one point with a large attribute."""
    b = MetricsBuilder({"service.name": "big"}, "test")
    b.point(b.gauge("big.value", "1"), 1.0, time.time_ns(), 0, {"blob": "x" * nbytes})
    return b.finish().SerializeToString()


def post(url: str, body: bytes, ctype: str = "application/x-protobuf", host: str | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str]]:
    headers = {"Content-Type": ctype, **({"Host": host} if host else {})}
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def get_with_host(url: str, host: str) -> int:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the relay has closed this connection (reading whatever answer it sent first)."""
    s.setblocking(False)
    try:
        while True:
            if not s.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


class Hostiles:
    """Connections that each hold on to the receiver in their own way, kept busy by a thread."""

    KINDS = ("slow_headers", "huge_length", "endless_chunked", "idle_keepalive")

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sockets: dict[str, list[socket.socket]] = {k: [] for k in self.KINDS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def open(self, kind: str) -> None:
        s = socket.create_connection((self.host, self.port), timeout=10)
        head = (f"POST /v1/metrics HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Type: application/x-protobuf\r\n")
        if kind == "slow_headers":
            s.sendall(head.encode())  # and a header line now and then, never the blank line
        elif kind == "huge_length":
            s.sendall((head + "Content-Length: 2000000000\r\n\r\n").encode())  # and then nothing
        elif kind == "endless_chunked":
            s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())  # a byte now and then, no end
        else:  # one finished request, then the connection is kept open and idle
            s.sendall(f"GET /v1/metrics HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        self.sockets[kind].append(s)

    def start(self) -> None:
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(0.2):
            for kind, data in (("slow_headers", b"X-Slow: 1\r\n"), ("endless_chunked", b"1\r\nx\r\n")):
                for s in self.sockets[kind]:
                    try:
                        s.sendall(data)
                    except OSError:
                        pass

    def all(self) -> list[socket.socket]:
        return [s for group in self.sockets.values() for s in group]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.all():
            s.close()


def receiver_requests(relay: Relay) -> float:
    return float(relay.status()["receivers"][0]["signals"]["metrics"]["requests"])


def test_a_hundred_hostile_clients_cannot_stop_a_push_or_healthz(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources=QUIET)
    cfg["sources"]["otlp"].update(header_timeout="4s", body_timeout="5s", idle_timeout="4s")
    relay = Relay(tmp_path, cfg)
    relay.start()
    host, port = cfg["sources"]["otlp"]["listen"].split(":")
    hostiles = Hostiles(host, int(port))
    # More requests that hold a slot (huge Content-Length, endless chunked) than the 64 slots.
    mix = {"slow_headers": 15, "huge_length": 35, "endless_chunked": 35, "idle_keepalive": 15}
    try:
        for kind, n in mix.items():
            for _ in range(n):
                hostiles.open(kind)
        hostiles.start()
        holders = mix["huge_length"] + mix["endless_chunked"]
        wait_until(lambda: receiver_requests(relay) >= holders, what="the relay to hold every hostile request")

        push_latencies, health_latencies = [], []
        body = small_push()
        hold_until = time.monotonic() + 2.0  # well inside every timeout: all 100 are still connected
        while time.monotonic() < hold_until:
            t0 = time.monotonic()
            status, _ = post(relay.otlp_url + "/v1/metrics", body, timeout=10)
            push_latencies.append(time.monotonic() - t0)
            assert status == 200, f"a real push got {status} while hostile clients held on"
            t0 = time.monotonic()
            assert http_get(relay.status_url + "/healthz", timeout=10)[0] == 200
            health_latencies.append(time.monotonic() - t0)
        still_open = sum(not closed_by_peer(s) for s in hostiles.all())
        print(f"\nwith {sum(mix.values())} hostile clients connected ({still_open} still open after the hold): "
              f"{len(push_latencies)} pushes, worst {max(push_latencies) * 1000:.1f} ms; "
              f"{len(health_latencies)} /healthz, worst {max(health_latencies) * 1000:.1f} ms")

        # And the relay lets go of every one of them by itself: header, body and idle timeouts.
        wait_until(lambda: all(closed_by_peer(s) for s in hostiles.all()), timeout=30,
                   what="the relay to close every hostile connection")
        rejected = relay.status()["receivers"][0]["signals"]["metrics"]["rejected"]
        assert rejected.get("too_large") == mix["huge_length"], rejected  # refused before reading
        assert rejected.get("body_timeout") == mix["endless_chunked"], rejected
        assert relay.alive()
    finally:
        hostiles.close()
        relay.terminate()
        ingest.terminate()
    assert "Traceback" not in relay.log()


def relay_fds(relay: Relay) -> int:
    return len(list(Path(f"/proc/{relay.pid}/fd").iterdir()))


@contextmanager
def idle_connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield socks
    finally:
        for s in socks:
            s.close()


def test_a_flood_of_idle_connections_leaves_the_relay_its_file_descriptors(tmp_path: Path) -> None:
    """Under an open-file limit of 512, 700 idle connections to the receiver and 300 to the
    status server: each listener keeps under its share by closing the oldest idle ones, so
    pushes, /healthz and the sources go on."""
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={"internal": {"enabled": False}, "host": {"interval": "200ms"},
                                                         "discovery": {"kafka": False}})
    relay = Relay(tmp_path, cfg)
    relay.args = ["prlimit", "--nofile=512:512", "--", *relay.args]
    relay.start()
    otlp_port = int(cfg["sources"]["otlp"]["listen"].split(":")[1])
    status_port = int(cfg["server"]["listen"].split(":")[1])
    try:
        runs = relay.metric("relay_source_runs_total", source="host")
        with idle_connections(otlp_port, 700), idle_connections(status_port, 300):
            wait_until(lambda: relay.metric("relay_http_refused_total", listener="status", reason="connections") > 0,
                       what="the status server to shed idle connections")
            assert http_get(relay.status_url + "/healthz")[0] == 200
            assert post(relay.otlp_url + "/v1/metrics", small_push(), timeout=10)[0] == 200
            wait_until(lambda: relay.metric("relay_source_runs_total", source="host") >= runs + 5,
                       what="the host source to keep collecting")
            assert relay.metric("relay_source_errors_total", source="host") == 0
            fds = relay_fds(relay)
            assert fds < 512 // 2, f"{fds} open files: the listeners should hold at most a quarter each"
            assert relay.metric("relay_http_refused_total", listener="otlp", reason="connections") > 0
        assert relay.alive()
    finally:
        relay.terminate()
        ingest.terminate()
    assert "Too many open files" not in relay.log()
    assert "at most 128 open connections (not 256)" in relay.log(), "the cap is lowered to the limit, and said"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_concurrent_large_pushes_stay_within_the_memory_budget(tmp_path: Path) -> None:
    """Four 20 MiB pushes at once, against the unit's MemoryMax=512M: the receiver holds at
    most max_body_memory_bytes of bodies; the rest wait or are told to retry, and all land."""
    cfg = relay_config(tmp_path, "http://127.0.0.1:9", sources=QUIET)  # nothing ships: receiving alone
    relay = Relay(tmp_path, cfg)
    relay.start()
    body = many_points_push(20 * 1024 * 1024 - 4096)
    url = relay.otlp_url + "/v1/metrics"

    def push_until_accepted() -> tuple[int, int]:
        refused = 0
        while True:
            status, headers = post(url, body, timeout=60)
            if status != 503:
                return status, refused
            refused += 1
            time.sleep(float(headers.get("Retry-After", "1")))  # as the client is asked to

    try:
        start_rss = peak_rss_mib(relay.pid)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: push_until_accepted(), range(4)))
        peak = peak_rss_mib(relay.pid)
        print(f"\n4 concurrent 20 MiB pushes: peak RSS {peak:.0f} MiB (from {start_rss:.0f} MiB); "
              f"refused with 503 and retried: {sum(r for _, r in results)}")
        assert [s for s, _ in results] == [200] * 4
        assert peak < 400, f"peak RSS {peak:.0f} MiB: the body budget should keep it well under MemoryMax"
        memory = relay.status()["receivers"][0]["signals"]["metrics"]["rejected"].get("memory", 0)
        assert memory == sum(r for _, r in results)
    finally:
        relay.terminate()


def test_a_request_that_finds_no_room_in_the_budget_gets_503_with_retry_after(tmp_path: Path) -> None:
    cfg = relay_config(tmp_path, "http://127.0.0.1:9", sources=QUIET)
    cfg["sources"]["otlp"].update(max_body_memory_bytes="12MiB")
    relay = Relay(tmp_path, cfg)
    relay.start()
    host, port = cfg["sources"]["otlp"]["listen"].split(":")
    held = blob_push(10 * 1024 * 1024)
    try:
        # A client that declares 10 MiB and sends half holds 10 MiB of the 12.
        slow = socket.create_connection((host, int(port)), timeout=30)
        slow.sendall(f"POST /v1/metrics HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-protobuf\r\n"
                     f"Content-Length: {len(held)}\r\n\r\n".encode() + held[: len(held) // 2])
        wait_until(lambda: receiver_requests(relay) >= 1, what="the relay to take the slow request")
        status, headers = post(relay.otlp_url + "/v1/metrics", blob_push(4 * 1024 * 1024))
        assert status == 503 and headers.get("Retry-After") == "1"
        assert relay.status()["receivers"][0]["signals"]["metrics"]["rejected"] == {"memory": 1}
        slow.sendall(held[len(held) // 2:])
        assert slow.recv(64).startswith(b"HTTP/1.1 200")
        slow.close()
        assert post(relay.otlp_url + "/v1/metrics", blob_push(4 * 1024 * 1024))[0] == 200  # room again
    finally:
        relay.terminate()


def test_json_nested_ten_thousand_deep_is_a_counted_400(tmp_path: Path) -> None:
    relay = Relay(tmp_path, relay_config(tmp_path, "http://127.0.0.1:9", sources=QUIET))
    relay.start()
    try:
        deep = b'{"resourceMetrics": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        status, _ = post(relay.otlp_url + "/v1/metrics", deep, ctype="application/json")
        assert status == 400
        assert relay.status()["receivers"][0]["signals"]["metrics"]["rejected"] == {"too_deep": 1}
        assert post(relay.otlp_url + "/v1/metrics", small_push())[0] == 200
    finally:
        relay.terminate()
    assert "Traceback" not in relay.log()


def test_a_page_rebinding_its_name_to_loopback_reads_nothing(tmp_path: Path) -> None:
    """DNS rebinding: the browser sends the attacker's own name as Host. The status server
    and the loopback receiver refuse it (421), count it, and log it once."""
    relay = Relay(tmp_path, relay_config(tmp_path, "http://127.0.0.1:9", sources=QUIET))
    relay.start()
    status_port = relay.cfg["server"]["listen"].split(":")[1]
    otlp_port = relay.cfg["sources"]["otlp"]["listen"].split(":")[1]
    try:
        for path in ("/status", "/outbox", "/", "/metrics"):
            assert get_with_host(relay.status_url + path, f"rebind.attacker.example:{status_port}") == 421, path
        for own in (f"127.0.0.1:{status_port}", f"localhost:{status_port}", "127.0.0.1"):
            assert get_with_host(relay.status_url + "/status", own) == 200, own
        status, _ = post(relay.otlp_url + "/v1/metrics", small_push(), host=f"rebind.attacker.example:{otlp_port}")
        assert status == 421
        assert post(relay.otlp_url + "/v1/metrics", small_push(), host=f"localhost:{otlp_port}")[0] == 200
        assert relay.metric("relay_http_refused_total", listener="status", reason="host") == 4
        assert relay.metric("relay_http_refused_total", listener="otlp", reason="host") == 1
    finally:
        relay.terminate()
    log = relay.log()
    assert log.count("status: refused a request for Host") == 1 and log.count("otlp: refused a request for Host") == 1
