"""The counting pieces of bench/prom_agent.py: the sequence target, sample lines, the
delivered/lost/duplicated tally, and the byte-counting proxy, on real loopback sockets."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.prom_agent_serve import SEQ_METRIC, ScrapeFront, sample_lines, seq_exposition, tally
from bench.prom_agent_wire import ByteCounter
from tests.procs import wait_until


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_seq_exposition_parses_with_the_sequence_and_the_pads() -> None:
    body = seq_exposition(7, 3)
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples == {SEQ_METRIC: 7.0, "bench_pad_000": 0.0, "bench_pad_001": 1.0, "bench_pad_002": 2.0}
    assert sample_lines(body) == 4


def test_sample_lines_skip_comments_blank_lines_and_eof() -> None:
    body = b'# HELP a x\n# TYPE a counter\na_total{x="1"} 3\n\na_created{x="1"} 1.0\n# EOF\n'
    assert sample_lines(body) == 2


def test_tally_counts_lost_and_duplicated_exactly() -> None:
    t = tally(6, [1.0, 2.0, 2.0, 5.0, 6.0, 6.0, 6.0])
    assert (t.scraped, t.delivered, t.lost, t.duplicated, t.lost_seqs) == (6, 4, 2, 3, [3, 4])
    assert tally(3, [3, 1, 2]).as_dict() == {"scraped": 3, "delivered": 3, "lost": 0, "duplicated": 0,
                                             "lost_seqs": []}


def test_tally_refuses_a_value_never_served() -> None:
    with pytest.raises(ValueError, match="never served"):
        tally(2, [1, 2, 3])


def test_front_numbers_each_agents_scrapes_and_freezes() -> None:
    front = ScrapeFront({}, pad=2)
    try:
        for n in (1, 2, 3):
            status, body = _get(front.url("a", "seq"))
            assert status == 200 and f"{SEQ_METRIC} {n}\n".encode() in body
        status, body = _get(front.url("b", "seq"))
        assert f"{SEQ_METRIC} 1\n".encode() in body  # each agent has its own sequence
        assert (front.seq("a"), front.seq("b")) == (3, 1)
        assert front.snapshot()[("a", "seq")].samples == 9
        front.frozen = True
        assert _get(front.url("a", "seq"))[0] == 503
        assert front.seq("a") == 3
        assert _get(front.url("a", "nothing"))[0] == 404
    finally:
        front.stop()


def test_front_passes_a_target_through_and_counts_its_sample_lines() -> None:
    upstream = ScrapeFront({}, pad=4)  # any HTTP target will do: another front's sequence path
    front = ScrapeFront({"up": upstream.url("x", "seq")}, pad=0)
    try:
        status, body = _get(front.url("a", "up"))
        assert status == 200 and sample_lines(body) == 5
        served = front.snapshot()[("a", "up")]
        assert (served.scrapes, served.samples, served.bytes) == (1, 5, len(body))
        upstream.stop()
        assert _get(front.url("a", "up"))[0] == 502
        assert front.snapshot()[("a", "up")].errors == 1
    finally:
        front.stop()


def test_byte_counter_counts_both_directions_and_drops_when_the_receiver_is_down() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_twice() -> None:
        conn, _ = server.accept()
        with conn:
            data = conn.recv(100)
            conn.sendall(data * 2)

    threading.Thread(target=echo_twice, daemon=True).start()
    counter = ByteCounter(port)
    try:
        with socket.create_connection(("127.0.0.1", counter.port), timeout=5) as c:
            c.sendall(b"hello")
            got = b""
            while len(got) < 10:
                got += c.recv(100)
        assert got == b"hellohello"
        wait_until(lambda: counter.total == 15, 5, what="15 bytes counted")
        assert (counter.sent, counter.received) == (5, 10)
        server.close()
        with socket.create_connection(("127.0.0.1", counter.port), timeout=5) as c:
            assert c.recv(10) == b""  # accepted, then closed: the receiver behind it is down
    finally:
        counter.stop()


def test_profile_top_sums_inclusive_and_self_per_function() -> None:
    from bench.prom_agent_profile import top

    collapsed = ("main (a.py:1);parse (p.py:10);line (p.py:20) 6\n"
                 "main (a.py:1);parse (p.py:11) 2\n"
                 "main (a.py:2);sign (s.py:5) 2\n")
    t = top(collapsed, 3)
    assert t["samples"] == 10
    assert dict(t["inclusive"]) == {"main (a.py)": 1.0, "parse (p.py)": 0.8, "line (p.py)": 0.6}
    assert t["self"][0] == ("line (p.py)", 0.6)
    assert dict(t["self"])["parse (p.py)"] == 0.2
