"""Hostile and odd image files, made by code (no committed binaries).

``cases()`` returns one :class:`Case` per file: its bytes, the name it is stored under, and what a
correct pipeline must make of it: either an error row of one ``kind`` (with words its message must
contain) or an image of ``size`` whose pixels are close to ``reference`` (what a person sees).
Everything is deterministic, so a failure reproduces.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20240505


@dataclass(frozen=True)
class Case:
    name: str  # short id used in test ids
    key: str  # file name / object key, relative to the input root
    data: bytes
    kind: str | None = None  # expected error kind; None = must embed
    message: str = ""  # words the error message must contain (case-insensitive)
    size: tuple[int, int] | None = None  # (width, height) after EXIF rotation
    reference: np.ndarray | None = None  # RGB uint8 (h, w, 3): the picture a person sees
    tolerance: float = 3.0  # mean absolute difference allowed at 224x224 (lossy codecs)
    not_like: np.ndarray | None = None  # a wrong reading the result must be far from

    @property
    def ok(self) -> bool:
        return self.kind is None


def _rng(salt: int) -> np.random.Generator:
    return np.random.default_rng(SEED + salt)


def photo(width: int = 96, height: int = 64, salt: int = 0) -> np.ndarray:
    """A smooth colourful picture (gradients + blobs): compresses like a photo, survives JPEG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = _rng(salt)
    out = np.zeros((height, width, 3))
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5), rng.uniform(0, 6.28)
        out[..., c] = 127.5 + 127.5 * np.sin(fx * 6.28 * x / width + fy * 6.28 * y / height + phase)
    return np.clip(out, 0, 255).astype(np.uint8)


def quadrants(width: int, height: int) -> np.ndarray:
    """Four flat colours; any rotation or mirroring of it is unmistakable."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height // 2, width // 2
    out[:h, :w] = (220, 30, 30)
    out[:h, w:] = (30, 200, 30)
    out[h:, :w] = (30, 30, 220)
    out[h:, w:] = (240, 240, 240)
    return out


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: for layouts Pillow cannot save (16-bit RGB) and for lying headers."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0) of a baseline JPEG to declare another size."""
    at = data.index(b"\xff\xc0")
    # FFC0, length(2), precision(1), height(2), width(2)
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _white_composite(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)


HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>\n"
    b"<body><h1>Service Unavailable</h1><p>The CDN could not reach the origin. "
    b"Please try again later.</p></body></html>\n"
)


def cases() -> list[Case]:
    base = photo(96, 64)
    base_jpeg = encode(Image.fromarray(base), "JPEG", quality=92)
    out: list[Case] = []

    # --- files that must be one error row each -------------------------------------------------
    out.append(Case("zero_bytes", "zero-bytes.jpg", b"", kind="empty", message="empty"))
    out.append(
        Case(
            "truncated_jpeg",
            "truncated.jpg",
            base_jpeg[: len(base_jpeg) * 3 // 5],
            kind="decode_error",
            message="truncated",
        )
    )
    # SOI, then a frame header whose marker segment is garbage: a JPEG to the eye, not a decoder.
    corrupt = base_jpeg[:2] + b"\xff\xc0\x00\x11" + bytes(_rng(1).integers(0, 256, 40, dtype=np.uint8)) + base_jpeg[60:]
    out.append(Case("corrupt_jpeg_header", "corrupt-header.jpg", corrupt, kind="decode_error", message="JPEG"))
    noise = bytes(_rng(2).integers(0, 256, 4096, dtype=np.uint8))
    out.append(Case("random_bytes", "random-bytes.jpg", b"\x00" + noise, kind="decode_error", message="not an image"))
    out.append(Case("html_error_page", "error-page.jpg", HTML_ERROR_PAGE, kind="decode_error", message="HTML"))
    # Huge declared sizes, tiny files: refused from the header, before any pixel is allocated.
    out.append(
        Case(
            "bomb_png",
            "bomb-png.png",
            raw_png(100_000, 100_000, 8, 2, b"\x00" * 301),
            kind="too_large",
            message="input.max_pixels",
        )
    )
    out.append(
        Case(
            "bomb_jpeg",
            "bomb-jpeg.jpg",
            _jpeg_with_size(base_jpeg, 65_000, 65_000),
            kind="too_large",
            message="input.max_pixels",
        )
    )

    # A zTXt metadata chunk that inflates to 64 MiB from 64 KiB: a bomb outside the pixel data.
    plain_png = encode(Image.fromarray(photo(40, 30, salt=14)), "PNG")
    idat = plain_png.index(b"IDAT") - 4
    text_bomb = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    out.append(
        Case(
            "png_text_bomb",
            "text-bomb.png",
            plain_png[:idat] + _png_chunk(b"zTXt", text_bomb) + plain_png[idat:],
            kind="too_large",
            message="decompresses",
        )
    )
    # An iPhone photo renamed .jpg: a real ISO-BMFF 'ftyp' box with the HEIC brand.
    heic = struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic" + bytes(200)
    out.append(Case("heic_named_jpg", "iphone.jpg", heic, kind="unsupported", message="HEIC"))

    # --- files that must embed -------------------------------------------------------------------
    out.append(Case("plain_jpeg", "plain.jpg", base_jpeg, size=(96, 64), reference=base, tolerance=4))

    rgba = np.dstack([photo(80, 60, salt=3), np.tile(np.linspace(0, 255, 80), (60, 1)).astype(np.uint8)])
    rgba[:20, :20, 3] = 0  # fully transparent corner: must come out white, not black
    out.append(
        Case(
            "png_alpha",
            "alpha.png",
            encode(Image.fromarray(rgba, "RGBA"), "PNG"),
            size=(80, 60),
            reference=_white_composite(rgba),
            tolerance=1.5,
            not_like=rgba[..., :3],
        )
    )

    pal = quadrants(64, 48)
    pal_img = Image.fromarray(pal).quantize(colors=4, dither=Image.Dither.NONE)
    transparent = pal_img.getpixel((63, 47))  # the white quadrant's palette index
    out.append(
        Case(
            "palette_gif",
            "palette.gif",
            encode(pal_img, "GIF", transparency=transparent),
            size=(64, 48),
            reference=np.where(pal == 240, 255, pal).astype(np.uint8),
            tolerance=2,
        )
    )

    frames = [
        Image.fromarray(np.full((40, 50, 3), colour, dtype=np.uint8))
        for colour in ((200, 20, 20), (20, 200, 20), (20, 20, 200))
    ]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out.append(
        Case(
            "animated_gif",
            "animated.gif",
            animated,
            size=(50, 40),
            reference=np.full((40, 50, 3), (200, 20, 20), dtype=np.uint8),
            tolerance=3,
            not_like=np.full((40, 50, 3), (20, 20, 200), dtype=np.uint8),
        )
    )

    ramp16 = np.tile(np.linspace(0, 65535, 64), (32, 1)).astype(np.uint16)
    out.append(
        Case(
            "png_16bit_grey",
            "grey16.png",
            encode(Image.fromarray(ramp16), "PNG"),
            size=(64, 32),
            reference=np.repeat(np.round(ramp16 / 257.0).astype(np.uint8)[..., None], 3, axis=2),
            tolerance=1.5,
        )
    )
    rgb16 = (photo(48, 32, salt=4).astype(np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + rgb16[r].tobytes() for r in range(32))
    out.append(
        Case(
            "png_16bit_rgb",
            "rgb16.png",
            raw_png(48, 32, 16, 2, rows),
            size=(48, 32),
            reference=photo(48, 32, salt=4),
            tolerance=1.5,
        )
    )

    grey = photo(70, 50, salt=5)[..., 0]
    out.append(
        Case(
            "greyscale_jpeg",
            "grey.jpg",
            encode(Image.fromarray(grey, "L"), "JPEG", quality=92),
            size=(70, 50),
            reference=np.repeat(grey[..., None], 3, axis=2),
            tolerance=4,
        )
    )

    cmyk_src = photo(72, 48, salt=6)
    out.append(
        Case(
            "cmyk_jpeg",
            "cmyk.jpg",
            encode(Image.fromarray(cmyk_src).convert("CMYK"), "JPEG", quality=95),
            size=(72, 48),
            reference=cmyk_src,
            tolerance=5,
        )
    )

    # Stored 60x40 with EXIF orientation 6 ("rotate 90 degrees clockwise to display").
    stored = quadrants(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    out.append(
        Case(
            "exif_rotated_jpeg",
            "exif-rotated.jpg",
            encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()),
            size=(40, 60),
            reference=np.rot90(stored, k=-1).copy(),
            tolerance=4,
            not_like=stored,
        )
    )
    # A camera-sized photo, stored 2400x1600 and shown upright (orientation 6): draft mode decodes it
    # at a reduced scale, but the recorded size is the real one, as a person sees it.
    big = photo(2400, 1600, salt=12)
    out.append(
        Case(
            "large_exif_rotated_jpeg",
            "camera-2400x1600.jpg",
            encode(Image.fromarray(big), "JPEG", quality=90, exif=exif.tobytes()),
            size=(1600, 2400),
            reference=np.rot90(big, k=-1).copy(),
            tolerance=4,
        )
    )
    bad_exif = Image.Exif()
    bad_exif[0x0112] = 9  # not a valid orientation: ignored, image shown as stored
    out.append(
        Case(
            "exif_invalid_orientation",
            "exif-invalid.jpg",
            encode(Image.fromarray(stored), "JPEG", quality=95, exif=bad_exif.tobytes()),
            size=(60, 40),
            reference=stored,
            tolerance=4,
        )
    )

    webp_src = photo(64, 64, salt=7)
    out.append(
        Case(
            "webp",
            "lossless.webp",
            encode(Image.fromarray(webp_src), "WEBP", lossless=True),
            size=(64, 64),
            reference=webp_src,
            tolerance=0.5,
        )
    )
    tiff_src = photo(50, 30, salt=8)
    out.append(
        Case(
            "tiff",
            "lzw.tiff",
            encode(Image.fromarray(tiff_src), "TIFF", compression="tiff_lzw"),
            size=(50, 30),
            reference=tiff_src,
            tolerance=0.5,
        )
    )
    bmp_src = photo(33, 21, salt=9)
    out.append(
        Case(
            "bmp",
            "windows.bmp",
            encode(Image.fromarray(bmp_src), "BMP"),
            size=(33, 21),
            reference=bmp_src,
            tolerance=0.5,
        )
    )
    out.append(
        Case(
            "one_pixel",
            "one-pixel.png",
            encode(Image.fromarray(np.array([[[10, 150, 250]]], dtype=np.uint8)), "PNG"),
            size=(1, 1),
            reference=np.array([[[10, 150, 250]]], dtype=np.uint8),
            tolerance=0.5,
        )
    )
    wide = np.zeros((10, 10_000, 3), dtype=np.uint8)
    wide[..., 0] = np.linspace(0, 255, 10_000)
    wide[..., 2] = 90
    out.append(
        Case(
            "very_wide_10000x10",
            "wide-10000x10.png",
            encode(Image.fromarray(wide), "PNG"),
            size=(10_000, 10),
            reference=wide,
            tolerance=1,
        )
    )
    png_src = photo(40, 40, salt=10)
    out.append(
        Case(
            "png_named_jpg",
            "really-a-png.jpg",
            encode(Image.fromarray(png_src), "PNG"),
            size=(40, 40),
            reference=png_src,
            tolerance=0.5,
        )
    )

    # Keys that break naive URI handling: spaces, non-ASCII, and characters URLs give meaning to.
    for name, key, salt in (
        ("unicode_space_key", "summer dress – été ✓.jpg", 11),
        ("url_special_key", "odd #1?&%25 100%.jpg", 12),
        ("nested_space_dir", "new in/linen shirt.jpg", 13),
    ):
        src = photo(64, 48, salt=salt)
        out.append(
            Case(name, key, encode(Image.fromarray(src), "JPEG", quality=92), size=(64, 48), reference=src, tolerance=6)
        )
    return out


def by_name() -> dict[str, Case]:
    return {c.name: c for c in cases()}


def write(root: Path, chosen: list[Case] | None = None) -> list[Case]:
    """Write the corpus under ``root`` (a directory); returns the cases written."""
    chosen = cases() if chosen is None else chosen
    for case in chosen:
        path = root / case.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
    return chosen


def item_id(case: Case) -> str:
    """The item id the default input.id_regex gives: the key without its extension."""
    return case.key.rsplit(".", 1)[0]
