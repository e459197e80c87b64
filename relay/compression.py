"""Body compression for outgoing requests, and bounded decompression for incoming ones.

Owns: the zstd/gzip codecs and the guard against decompression bombs (output is
capped while streaming, never inflated in full first). Shared by the OTLP receiver and the
vendor ingest (decoding), the shipper (encoding) and the outbox (decoding what was sent, to show it).
"""

from __future__ import annotations

import zlib

import zstandard

ENCODINGS = ("zstd", "gzip", "none")


class BodyTooLarge(Exception):
    """The decompressed body would exceed the allowed size."""


class BadEncoding(Exception):
    """The body is not valid data in the declared encoding."""


def compress(body: bytes, encoding: str, zstd_level: int = 3) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=zstd_level).compress(body)
    if encoding == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
        return c.compress(body) + c.flush()
    return body


# Feeding zstd 256 input bytes at a time bounds what one call can inflate to a few MiB
# (a 3-byte RLE block can stand for 128 KiB), so a bomb is caught before it lands in memory.
_ZSTD_FEED = 256


def _zstd_bounded(body: bytes, max_size: int) -> bytes:
    dctx = zstandard.ZstdDecompressor()
    parts: list[bytes] = []
    total = 0
    view = memoryview(body)
    pos = 0
    try:
        while pos < len(body):
            obj = dctx.decompressobj()  # one per frame; bodies may hold several frames
            while pos < len(body) and not obj.eof:
                chunk = view[pos : pos + _ZSTD_FEED]
                out = obj.decompress(chunk)
                pos += len(chunk)
                total += len(out)
                if total > max_size:
                    raise BodyTooLarge(f"decompressed body exceeds {max_size} bytes")
                parts.append(out)
            if not obj.eof:
                raise BadEncoding("truncated zstd data")
            pos -= len(obj.unused_data)
    except zstandard.ZstdError as e:
        raise BadEncoding(f"invalid zstd data: {e}") from None
    return b"".join(parts)


def decompress(body: bytes, encoding: str, max_size: int) -> bytes:
    """Decode a Content-Encoding, never producing more than max_size bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity", "none"):
        if len(body) > max_size:
            raise BodyTooLarge(f"body of {len(body)} bytes exceeds {max_size}")
        return body
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(47 if enc != "deflate" else 15)  # 47: gzip or zlib header
        try:
            out = d.decompress(body, max_size + 1)
        except zlib.error as e:
            raise BadEncoding(f"invalid {enc} data: {e}") from None
        if len(out) > max_size or d.unconsumed_tail:
            raise BodyTooLarge(f"decompressed body exceeds {max_size} bytes")
        if not d.eof:
            raise BadEncoding(f"truncated {enc} data")
        return out
    if enc == "zstd":
        return _zstd_bounded(body, max_size)
    raise BadEncoding(f"unsupported Content-Encoding {encoding!r}")
