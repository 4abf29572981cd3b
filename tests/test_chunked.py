"""wsrelay.http.chunked: the bound on chunk extensions over a whole body."""

from __future__ import annotations

import pytest

from wsrelay.errors import BadRequest
from wsrelay.http.chunked import ChunkedDecoder


def chunks(count: int, extension: bytes) -> bytes:
    return b"".join(b"1" + extension + b"\r\nx\r\n" for _ in range(count)) + b"0\r\n\r\n"


def test_chunk_extensions_are_bounded_over_the_whole_body() -> None:
    """Each size line under 4K, but 1K of extension on each of 20 chunks: refused once their total
    passes the bound (16K here), not read without end."""
    decoder = ChunkedDecoder(16384)
    with pytest.raises(BadRequest, match="chunk extensions"):
        decoder.feed(chunks(20, b";a=" + b"v" * 1024))


def test_small_extensions_and_many_chunks_pass() -> None:
    """Many small chunks with short extensions, under the bound: decoded whole."""
    decoder = ChunkedDecoder(16384)
    data, rest = decoder.feed(chunks(1000, b";k=v") + b"NEXT")
    assert b"".join(data) == b"x" * 1000 and decoder.done and rest == b"NEXT"
