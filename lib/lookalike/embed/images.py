"""Bytes -> RGB pixels at the model's input size, or a precise reason why not.

Buckets filled by other people hold every kind of file: this module turns each into either an
image the model can take or an :class:`ImageError` whose ``kind`` becomes an error row.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TARGET_SIZE = (224, 224)
# Resize filters by the names KerasHub's image converters give them (the CNNs: bilinear).
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos3": Image.Resampling.LANCZOS,
    "lanczos5": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}
# What a thumbnail refuses to decode unless told otherwise: the jobs' input.max_pixels default.
THUMBNAIL_MAX_PIXELS = 50_000_000

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is process-wide state that belongs
# to whoever imports this module: it is never changed here. Each decode checks the caller's
# ``max_pixels`` from the header instead, and Pillow's limit stays in force above it (an image past
# twice Pillow's limit is refused by Pillow as too_large, whatever max_pixels says).


class ImageError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: Pillow's convert() clips to 0..255 instead of scaling.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent product shots are meant to be seen on a light page, not on black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


_POSSIBLE_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Image.open, with Pillow's refusal of a decompression bomb (its own limit, checked from the
    header before ours can be) worded like ours."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        found = _POSSIBLE_BOMB.search(str(exc))
        if not found:
            raise ImageError(*_decode_failure(exc)) from None
        pixels, limit = int(found.group(1)), int(found.group(2))
        if max_pixels and pixels > max_pixels:
            raise ImageError(
                "too_large",
                f"declared size of {pixels} pixels is more than input.max_pixels={max_pixels} (decompression bomb?)",
            ) from None
        raise ImageError(
            "too_large",
            f"declared size of {pixels} pixels is more than Pillow's limit of "
            f"{limit} pixels (decompression bomb?), which input.max_pixels="
            f"{max_pixels} does not raise",
        ) from None


# EXIF orientations that turn the picture by 90 degrees: width and height swap places.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def _shown_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the full-size image as a person sees it (after EXIF rotation), read
    from the header before draft mode shrinks the decode."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # a corrupt EXIF block: exif_transpose ignores it too
        orientation = None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def decode(
    data: bytes, max_pixels: int = 0, size: tuple[int, int] = TARGET_SIZE, interpolation: str = "bilinear"
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode, orient, convert to RGB and resize to ``size`` (width, height) with ``interpolation``
    (a key of :data:`RESAMPLING`).

    Returns (uint8 array of shape (height, width, 3), (width, height) of the original image after
    EXIF rotation).
    """
    target = (int(size[0]), int(size[1]))
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = _open(data, max_pixels)
            width, height = img.size
            if max_pixels and width * height > max_pixels:
                raise ImageError(
                    "too_large",
                    f"declared size {width}x{height} = {width * height} pixels is more than "
                    f"input.max_pixels={max_pixels} (decompression bomb?)",
                )
            if getattr(img, "is_animated", False):
                img.seek(0)
            # JPEG draft mode decodes at a reduced DCT scale: several times faster on photos far
            # larger than the 224 px the model sees, and still at least twice the target size.
            shown = _shown_size(img)
            if img.format == "JPEG":
                img.draft("RGB", (target[0] * 2, target[1] * 2))
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img).resize(target, RESAMPLING[interpolation])
            arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(*_unidentified(data)) from None
    except MemoryError:
        raise ImageError("too_large", "not enough memory to decode the image; lower input.max_pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(*_decode_failure(exc)) from None
    if arr.shape != (target[1], target[0], 3):
        raise ImageError("unsupported", f"unexpected pixel layout {arr.shape} after conversion")
    # Width/height after EXIF rotation (what a person sees), not the stored orientation, and of
    # the full image, not of draft mode's reduced decode.
    return arr, (int(shown[0]), int(shown[1]))


# Leading bytes of formats people save under image names; used only to word the message.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def _unidentified(data: bytes) -> tuple[str, str]:
    """(kind, message) for bytes that no decoder recognised."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "unsupported", "HEIC/HEIF images are not supported; convert them to JPEG or PNG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "decode_error", "the file starts like a WebP image but its header is corrupt"
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return "decode_error", f"the file starts like a {name} image but its header is corrupt"
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "decode_error", "not an image: the file is HTML/XML text (an error page saved as an image?)"
    if head.startswith(b"%pdf"):
        return "decode_error", "not an image: the file is a PDF document"
    try:
        data[:256].decode("utf-8")
        return "decode_error", "not an image: the file is text"
    except UnicodeDecodeError:
        return "decode_error", "not an image: unrecognised file format"


def _decode_failure(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for a file a decoder recognised but could not turn into pixels."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, Image.DecompressionBombError) or "decompressed data too large" in lowered:
        return "too_large", f"the file decompresses to more data than allowed ({text})"
    if "truncat" in lowered or isinstance(exc, EOFError):
        return "decode_error", f"the image file is truncated (incomplete upload or download?): {text}"
    if "conversion" in lowered and "not supported" in lowered:
        return "unsupported", f"cannot convert the image to RGB: {text}"
    return "decode_error", f"cannot decode the image: {text}"


def thumbnail(data: bytes, size: int = 160, max_pixels: int = THUMBNAIL_MAX_PIXELS) -> bytes:
    """A small JPEG for reports and the shipped sample (same decoding rules as the model input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = _open(data, max_pixels)
        width, height = img.size
        if max_pixels and width * height > max_pixels:
            raise ImageError("too_large", f"{width}x{height} is more than input.max_pixels={max_pixels}")
        if getattr(img, "is_animated", False):
            img.seek(0)
        if img.format == "JPEG":
            img.draft("RGB", (size * 2, size * 2))
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=82)
        return out.getvalue()
