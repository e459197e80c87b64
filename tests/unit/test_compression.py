from __future__ import annotations

import gzip
import os

import pytest
import zstandard

from relay.compression import BadEncoding, BodyTooLarge, compress, decompress


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "none"])
def test_round_trip(encoding: str) -> None:
    body = os.urandom(1000) + b"a" * 100_000
    assert decompress(compress(body, encoding), encoding, len(body)) == body


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_bomb_is_refused_without_inflating_it(encoding: str) -> None:
    bomb = (zstandard.ZstdCompressor().compress if encoding == "zstd" else gzip.compress)(b"\0" * (200 << 20))
    assert len(bomb) < 1 << 20
    with pytest.raises(BodyTooLarge):
        decompress(bomb, encoding, 1 << 20)


def test_garbage_and_unknown_encodings() -> None:
    with pytest.raises(BadEncoding):
        decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(BadEncoding):
        decompress(b"not zstd", "zstd", 1000)
    with pytest.raises(BadEncoding):
        decompress(b"x", "br", 1000)
    with pytest.raises(BadEncoding):
        decompress(gzip.compress(b"x" * 1000)[:-12], "gzip", 10_000)
    with pytest.raises(BadEncoding):
        decompress(zstandard.ZstdCompressor().compress(b"x" * 10_000)[:-6], "zstd", 100_000)


def test_concatenated_zstd_frames() -> None:
    c = zstandard.ZstdCompressor()
    assert decompress(c.compress(b"a" * 5000) + c.compress(b"b" * 7000), "zstd", 20_000) == b"a" * 5000 + b"b" * 7000
