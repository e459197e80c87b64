"""Bounds on what a pull target (Prometheus, Jolokia) may send, shared by both sources.

Owns: reading a response body incrementally up to a byte cap (never buffering past it),
the error a scrape fails with when a target passes a limit (naming the target, the limit
and its setting), the parse-time deadline the parsers check as they go (they run in a
worker thread, which cannot be stopped from outside), and the short excerpt, with its
offset, that error messages quote instead of the whole bad input.
"""

from __future__ import annotations

import time

import aiohttp

EXCERPT_CHARS = 60
CHUNK_BYTES = 64 * 1024


class ScrapeLimitExceeded(Exception):
    """A target sent more than a configured limit allows; that scrape fails and is counted."""

    def __init__(self, url: str, what: str, setting: str) -> None:
        super().__init__(f"{url}: {what} (limit: {setting})")


def excerpt(text: str | bytes, offset: int = 0, width: int = EXCERPT_CHARS) -> str:
    """At most `width` characters of `text` from `offset`, quoted, with the offset named."""
    part = text[offset:offset + width]
    more = "..." if len(text) > offset + width else ""
    return f"{part!r}{more} at offset {offset}"


def short(message: str, width: int = 200) -> str:
    """A message cut to `width` characters: a parser may quote the whole bad input."""
    return message if len(message) <= width else f"{message[:width]}... ({len(message)} chars)"


async def read_body(resp: aiohttp.ClientResponse, url: str, max_bytes: int, setting: str) -> bytes:
    """The (decompressed) body, read chunk by chunk; past `max_bytes` the read stops and the
    connection is dropped, so a huge answer costs at most the cap in memory."""
    declared = resp.content_length
    if declared is not None and declared > max_bytes and not resp.headers.get("Content-Encoding"):
        resp.close()
        raise ScrapeLimitExceeded(url, f"the body is {declared} bytes (Content-Length)",
                                  f"{setting} = {max_bytes} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        if len(body) + len(chunk) > max_bytes:
            resp.close()  # the rest is never read
            raise ScrapeLimitExceeded(url, f"the body exceeds {max_bytes} bytes", f"{setting} = {max_bytes} bytes")
        body += chunk
    return bytes(body)


class Deadline:
    """The parse-time bound. The parsers call check() as they go: a thread cannot be
    cancelled, so the bound only holds because the work stops itself."""

    def __init__(self, url: str, seconds: float, setting: str) -> None:
        self.url = url
        self.seconds = seconds
        self.setting = setting
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise ScrapeLimitExceeded(self.url, f"parsing took longer than {self.seconds:g}s",
                                      f"{self.setting} = {self.seconds:g}s")
