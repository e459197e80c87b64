"""The bounds on what a pull target may send: the capped body read (a real HTTP server on
loopback), the exposition limits, and errors that quote a short excerpt, never the input."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from relay import mapping
from relay.sources.exposition import ExpositionLimits, parse_families
from relay.sources.jolokia import JolokiaError, parse_answer
from relay.sources.prometheus import ExpositionError, map_exposition
from relay.sources.scrape_bounds import Deadline, ScrapeLimitExceeded, excerpt, read_body


async def _serve_and_read(body_chunks: int, chunk: bytes, cap: int, declare_length: bool) -> tuple[bytes | None,
                                                                                                    str, int]:
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        if declare_length:
            resp.content_length = body_chunks * len(chunk)
        await resp.prepare(request)
        try:
            for _ in range(body_chunks):
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what a capped read does
        return resp

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            try:
                return await read_body(resp, url, cap, "x.max_body_bytes"), "", sent
            except ScrapeLimitExceeded as e:
                return None, str(e), sent
    finally:
        await runner.cleanup()


def test_a_body_under_the_cap_is_read_whole() -> None:
    body, err, _ = asyncio.run(_serve_and_read(4, b"a 1\n" * 1000, 64 * 1024, declare_length=False))
    assert body == b"a 1\n" * 4000 and not err


def test_a_body_over_the_cap_stops_the_read_and_names_the_target_and_limit() -> None:
    chunk = b"x" * 65536
    body, err, sent = asyncio.run(_serve_and_read(800, chunk, 1024 * 1024, declare_length=False))  # 50 MiB
    assert body is None
    assert "127.0.0.1" in err and "exceeds 1048576 bytes" in err and "x.max_body_bytes" in err
    assert sent < 20 * 1024 * 1024  # the server was cut off long before the 50 MiB


def test_a_declared_length_over_the_cap_fails_before_reading() -> None:
    body, err, _ = asyncio.run(_serve_and_read(40, b"x" * 65536, 1024 * 1024, declare_length=True))
    assert body is None and "Content-Length" in err


def test_excerpt_is_short_and_says_where() -> None:
    assert excerpt("abcdef" * 100, 6, width=5) == "'abcde'... at offset 6"
    assert excerpt("abc") == "'abc' at offset 0"


def test_a_huge_junk_body_gives_a_short_error() -> None:
    junk = "\x01garbage" * (10 * 1024 * 1024 // 8)  # 10 MiB, no newline: one "line"
    with pytest.raises(ExpositionError) as e:
        map_exposition(junk, False, None, {}, limits=ExpositionLimits(max_line_length=len(junk) + 1))
    assert len(str(e.value)) < 400 and "at line 1" in str(e.value) and "offset 0" in str(e.value)
    with pytest.raises(ExpositionError) as e:
        map_exposition("up 1\n" + junk, True, None, {}, limits=ExpositionLimits(max_line_length=len(junk) + 1))
    assert len(str(e.value)) < 400 and "at line 2" in str(e.value) and "offset 5" in str(e.value)


def test_a_long_line_fails_with_its_number_and_the_limit() -> None:
    text = "ok 1\n" + "x" * 5000 + " 1\n"
    with pytest.raises(ScrapeLimitExceeded, match=r"t: line 2 is 5003 characters long, at offset 5 \(limit: "
                                                  r"sources.prometheus.max_line_length = 4096\)"):
        list(parse_families(text, False, ExpositionLimits("t", max_line_length=4096)))


def test_a_line_with_too_many_labels_fails_before_the_parser_splits_it() -> None:
    line = "x{" + ",".join(f'l{i}="v"' for i in range(100_000)) + "} 1\n"
    started = time.monotonic()
    with pytest.raises(ScrapeLimitExceeded, match="more than 128 labels"):
        list(parse_families(line, False, ExpositionLimits("t", max_line_length=len(line) + 1)))
    assert time.monotonic() - started < 1.0  # the parser's quadratic split never ran
    # Exactly at the limit it parses; one above, the parsed count refuses it.
    ok = "x{" + ",".join(f'l{i}="v"' for i in range(4)) + "} 1\n"
    assert len(next(iter(parse_families(ok, False, ExpositionLimits(max_labels_per_series=4))))[0].samples) == 1
    with pytest.raises(ScrapeLimitExceeded, match="series x has 4 labels"):
        list(parse_families(ok, False, ExpositionLimits(max_labels_per_series=3)))


def test_too_many_series_fail_the_scrape() -> None:
    text = "".join(f"m{i} 1\n" for i in range(11))
    assert sum(1 for _ in parse_families(text, False, ExpositionLimits(max_series=11))) == 11
    with pytest.raises(ScrapeLimitExceeded, match="more than 10 series"):
        list(parse_families(text, False, ExpositionLimits(max_series=10)))


def test_parsing_stops_itself_at_the_deadline() -> None:
    text = "".join(f'm{{a="{i}"}} 1\n' for i in range(200_000))
    limits = ExpositionLimits("t", deadline=Deadline("t", 0.05, "sources.prometheus.parse_timeout"))
    started = time.monotonic()
    with pytest.raises(ScrapeLimitExceeded, match=r"parsing took longer than 0.05s"):
        map_exposition(text, False, None, {}, limits=limits)
    assert time.monotonic() - started < 1.0


def test_hostile_numbers_are_dropped_never_escape() -> None:
    # Each of these escaped the old mapping as OverflowError or ValueError.
    text = ("# TYPE h histogram\n"
            'h_bucket{le="1"} +Inf\nh_bucket{le="+Inf"} 1\nh_count 1\n'
            "# TYPE g histogram\n"
            'g_bucket{le="zz"} 1\ng_count 1\n'
            "# TYPE s summary\ns_count +Inf\n"
            "t 1 99999999999999999999\n")
    r = map_exposition(text, False, None, {}, now_ns=7, start_ns=3)
    assert [m.name for m in r.request.resource_metrics[0].scope_metrics[0].metrics] == ["t"] and r.dropped == 3
    om = "# TYPE c counter\nc_total 1\nc_created +Inf\n# EOF\n"
    r = map_exposition(om, True, None, {}, now_ns=7, start_ns=3)
    assert r.request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].start_time_unix_nano == 3
    r.request.SerializeToString()


def test_jolokia_answers_that_are_not_json_give_short_errors_naming_the_target() -> None:
    url = "http://broker:8778/jolokia"
    with pytest.raises(JolokiaError) as e:
        parse_answer(b"[" * 100_000, url)
    assert str(e.value) == f"{url} answered JSON nested too deeply to decode"
    with pytest.raises(JolokiaError) as e:
        parse_answer(b'[{"a": 1}, ' + b"x" * 10_000_000 + b"]", url)
    assert len(str(e.value)) < 300 and url in str(e.value) and "at offset 11" in str(e.value)
    with pytest.raises(JolokiaError, match="did not answer UTF-8 JSON"):
        parse_answer(b'["\xff\xfe\xfa"]', url)
    assert parse_answer(json.dumps([{"status": 200}]).encode(), url) == [{"status": 200}]


def test_jolokia_mapping_stops_at_the_deadline() -> None:
    from relay.sources.jolokia import bulk_request, map_response

    maps = mapping.load(["kafka", "jvm"])
    sent = bulk_request(maps)
    deadline = Deadline("j", -1.0, "sources.jolokia.parse_timeout")  # already passed
    with pytest.raises(ScrapeLimitExceeded, match=r"sources\.jolokia\.parse_timeout"):
        map_response(sent, [{"status": 404}] * len(sent), maps, {}, deadline=deadline)
