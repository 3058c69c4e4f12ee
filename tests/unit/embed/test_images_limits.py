"""lookalike is a library in other people's processes: the image limits it needs are passed to each
call instead of Pillow's process-wide decompression-bomb limit (that importing and using lookalike
leaves that limit alone is tested in tests/models/test_good_guest.py)."""

from __future__ import annotations

import struct
import zlib

import pytest

from lookalike.embed import images


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data never comes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("max_pixels", [0, 50_000_000])
def test_an_image_past_pillows_own_limit_is_too_large_whatever_max_pixels_says(max_pixels):
    bomb = png_header(20_000, 10_000)  # 200M pixels: past twice Pillow's default limit
    with pytest.raises(images.ImageError) as caught:
        images.decode(bomb, max_pixels)
    assert caught.value.kind == "too_large"
    with pytest.raises(images.ImageError) as caught:
        images.thumbnail(bomb, 64, max_pixels)
    assert caught.value.kind == "too_large"


def test_max_pixels_is_checked_per_call_from_the_header():
    big = png_header(8_000, 8_000)  # 64M pixels: under Pillow's limit
    with pytest.raises(images.ImageError, match="input.max_pixels=50000000") as caught:
        images.decode(big, 50_000_000)
    assert caught.value.kind == "too_large"
    # The thumbnail's default is the jobs' default limit, not "no limit".
    with pytest.raises(images.ImageError) as caught:
        images.thumbnail(big)
    assert caught.value.kind == "too_large"
