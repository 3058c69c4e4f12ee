"""Hostile and odd inputs at the images.decode level, fast and exhaustive: every file of the corpus
(tests/support/corpus.py) decodes to the picture a person sees, or is refused with one specific
error kind. The same corpus through storage: tests/unit/io/test_uris_hostile.py; through the embed
job: tests/spark/embed/test_hostile_inputs.py (S3, max_error_fraction) and
tests/e2e/test_hostile_corpus.py (the whole corpus, ./spark-submit.sh over a local directory).
"""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from PIL import Image

from lookalike.embed import images
from tests.support import corpus

CASES = corpus.cases()
OK = [c for c in CASES if c.ok]
BAD = [c for c in CASES if not c.ok]
MAX_PIXELS = 50_000_000  # the config default


def at_model_size(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("RGB").resize(images.TARGET_SIZE, Image.BILINEAR), dtype=np.float64)


def pixel_distance(pixels: np.ndarray, rgb: np.ndarray) -> float:
    return float(np.abs(pixels.astype(np.float64) - at_model_size(rgb)).mean())


# --- images.decode: every case ---------------------------------------------------------------


def test_the_corpus_covers_what_the_issue_lists():
    names = {c.name for c in CASES}
    assert {
        "zero_bytes",
        "truncated_jpeg",
        "corrupt_jpeg_header",
        "random_bytes",
        "html_error_page",
        "png_alpha",
        "palette_gif",
        "animated_gif",
        "png_16bit_grey",
        "greyscale_jpeg",
        "cmyk_jpeg",
        "exif_rotated_jpeg",
        "webp",
        "tiff",
        "one_pixel",
        "very_wide_10000x10",
        "bomb_png",
        "unicode_space_key",
    } <= names
    assert len({corpus.item_id(c) for c in CASES}) == len(CASES)
    # Corpus files are made, not committed: every byte string is deterministic.
    assert [c.data for c in corpus.cases()] == [c.data for c in CASES]


@pytest.mark.parametrize("case", OK, ids=lambda c: c.name)
def test_decode_gives_the_picture_a_person_sees(case):
    pixels, size = images.decode(case.data, MAX_PIXELS)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert size == case.size
    assert pixel_distance(pixels, case.reference) <= case.tolerance
    if case.not_like is not None:  # e.g. the unrotated EXIF image, transparency shown as black
        assert pixel_distance(pixels, case.not_like) > 30


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_decode_refuses_with_one_specific_kind(case):
    with pytest.raises(images.ImageError) as refused:
        images.decode(case.data, MAX_PIXELS)
    assert refused.value.kind == case.kind
    assert case.message.lower() in refused.value.message.lower()
    assert "\n" not in refused.value.message and "Traceback" not in refused.value.message


def test_exif_orientation_swaps_width_and_height_and_rotates_the_pixels():
    case = corpus.by_name()["exif_rotated_jpeg"]
    stored = Image.open(io.BytesIO(case.data))
    assert stored.size == (60, 40) and stored.getexif()[0x0112] == 6
    pixels, size = images.decode(case.data)
    assert size == (40, 60)
    # Stored top-left is red; after a clockwise quarter turn red is at the top right.
    assert tuple(map(int, pixels[10, 200])) == pytest.approx((220, 30, 30), abs=12)
    assert tuple(map(int, pixels[10, 10])) == pytest.approx((30, 30, 220), abs=12)


def test_a_large_jpeg_records_its_real_size_not_the_draft_mode_size():
    case = corpus.by_name()["large_exif_rotated_jpeg"]
    stored = Image.open(io.BytesIO(case.data))
    assert stored.size == (2400, 1600) and stored.getexif()[0x0112] == 6
    stored.draft("RGB", (448, 448))
    assert stored.size[0] < 2400  # draft mode does shrink this file: the test would see the bug
    pixels, size = images.decode(case.data, MAX_PIXELS)
    assert size == (1600, 2400)
    # Another input size (a backbone at 300x260) gets pixels of that size and the same real size.
    other, size = images.decode(case.data, MAX_PIXELS, (300, 260))
    assert other.shape == (260, 300, 3) and size == (1600, 2400)


def test_decompression_bomb_is_refused_from_the_header_without_allocating_it():
    bomb = corpus.by_name()["bomb_png"]
    assert len(bomb.data) < 1000  # declares 100000x100000: 30 GB of RGB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(images.ImageError) as refused:
        images.decode(bomb.data, MAX_PIXELS)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert refused.value.kind == "too_large" and "10000000000 pixels" in refused.value.message
    assert grown_mb < 100
    # The limit is input.max_pixels, not a constant: a small photo is refused under a small limit.
    with pytest.raises(images.ImageError, match="input.max_pixels=1000"):
        images.decode(corpus.by_name()["plain_jpeg"].data, max_pixels=1000)


@pytest.mark.parametrize("case", OK + [c for c in BAD if "max_pixels" in c.message], ids=lambda c: c.name)
def test_report_thumbnails_follow_the_same_rules(case):
    if not case.ok:
        with pytest.raises(images.ImageError) as refused:
            images.thumbnail(case.data, 64, MAX_PIXELS)
        assert refused.value.kind == "too_large"
        return
    thumb = Image.open(io.BytesIO(images.thumbnail(case.data, 64, MAX_PIXELS)))
    assert thumb.format == "JPEG" and thumb.mode == "RGB" and max(thumb.size) <= 64
    width, height = case.size
    assert (thumb.size[0] >= thumb.size[1]) == (width >= height)  # EXIF rotation applied here too
