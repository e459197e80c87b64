"""Body compression for outgoing requests, and bounded decompression for incoming ones.

Owns: the zstd/gzip codecs and the guard against decompression bombs (output is
capped while streaming, never inflated in full first).
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
        dctx = zstandard.ZstdDecompressor()
        try:
            reader = dctx.stream_reader(body, read_across_frames=True)
            out = reader.read(max_size + 1)
        except zstandard.ZstdError as e:
            raise BadEncoding(f"invalid zstd data: {e}") from None
        if len(out) > max_size:
            raise BodyTooLarge(f"decompressed body exceeds {max_size} bytes")
        return out
    raise BadEncoding(f"unsupported Content-Encoding {encoding!r}")
