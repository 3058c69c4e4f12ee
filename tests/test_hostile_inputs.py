"""Hostile and odd inputs: every file of the corpus (tests/corpus.py) gives a correct embedding or
exactly one error row of a specific kind, without touching any other image, and the job exits 0.

Fast and exhaustive at the images.decode / storage.fetch level; then once through the real embed
job (./spark-submit.sh over a local directory), and through S3 (moto) for the keys with spaces and
unicode and for a key that disappears between listing and fetching.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support import corpus
from tests.support.paths import SAMPLE_DIR
from tests.support.procs import run_script
from lookalike import publish
from lookalike.embed import images, listing, model
from lookalike.io import storage, uris
from lookalike.config import ModelConfig, S3Config, load_config
from lookalike.errors import TooManyErrorsError
from lookalike.jobs import embed as embed_job

CASES = corpus.cases()
OK = [c for c in CASES if c.ok]
BAD = [c for c in CASES if not c.ok]
MAX_PIXELS = 50_000_000  # the config default
SEED = 5  # model.seed of the Spark runs here (random-init weights: no download in tests)


def at_model_size(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("RGB").resize(images.TARGET_SIZE, Image.BILINEAR), dtype=np.float64)


def pixel_distance(pixels: np.ndarray, rgb: np.ndarray) -> float:
    return float(np.abs(pixels.astype(np.float64) - at_model_size(rgb)).mean())


# --- images.decode: every case ---------------------------------------------------------------

def test_the_corpus_covers_what_the_issue_lists():
    names = {c.name for c in CASES}
    assert {"zero_bytes", "truncated_jpeg", "corrupt_jpeg_header", "random_bytes", "html_error_page",
            "png_alpha", "palette_gif", "animated_gif", "png_16bit_grey", "greyscale_jpeg", "cmyk_jpeg",
            "exif_rotated_jpeg", "webp", "tiff", "one_pixel", "very_wide_10000x10", "bomb_png",
            "unicode_space_key"} <= names
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


# --- storage: names and files that break naive code ---------------------------------------------

@pytest.mark.parametrize("name", ["summer dress – été ✓.jpg", "odd #1?&%25 100%.jpg", "a%20b.jpg",
                                  "new\nline.jpg", "ünï cödé/ø.png"])
def test_local_file_uris_round_trip_any_name(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data")
    uri = uris.file_uri(str(path))
    assert uri.startswith("file:///") and uris.local_path(uri) == str(path)
    assert storage.fetch(uri, S3Config(), 100) == b"data"


def test_s3_uris_keep_hash_question_mark_and_percent_in_the_key():
    assert uris.split_s3("s3://bkt/dir/odd #1?&%25 100%.jpg") == ("bkt", "dir/odd #1?&%25 100%.jpg")
    assert uris.split_s3("s3://bkt") == ("bkt", "")


def test_fetch_kinds_for_vanished_fifo_and_oversized_local_files(tmp_path):
    gone = tmp_path / "gone.jpg"
    gone.write_bytes(b"x")
    uri = uris.file_uri(str(gone))
    gone.unlink()
    with pytest.raises(storage.StorageError) as missing:
        storage.fetch(uri, S3Config(), 100)
    assert missing.value.kind == "not_found"
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block the task forever
    with pytest.raises(storage.StorageError) as fifo:
        storage.fetch(uris.file_uri(str(tmp_path / "pipe.jpg")), S3Config(), 100)
    assert fifo.value.kind == "unsupported"
    (tmp_path / "big.jpg").write_bytes(b"x" * 101)
    with pytest.raises(storage.StorageError) as big:
        storage.fetch(uris.file_uri(str(tmp_path / "big.jpg")), S3Config(), 100)
    assert big.value.kind == "too_large"


# --- through the real embed job ----------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_embedder():
    return model.Embedder(ModelConfig(weights="none", seed=SEED), threads=2)


def read_table(path: str):
    return pq.read_table(publish.resolve(path)).to_pandas()


def snapshot(root) -> dict:
    """Every file under ``root`` (following the published symlinks) -> sha256."""
    out = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def write_config(tmp_path, uri: str, *extra: str):
    lines = [
        "spark:", "  master: local[2]", "  conf:", "    spark.ui.enabled: 'false'",
        "    spark.sql.shuffle.partitions: 4",
        "input:", f"  uri: {json.dumps(str(uri))}", "  partition_size: 8", "  max_error_fraction: 0.6",
        "model:", "  weights: none", f"  seed: {SEED}", "  batch_size: 8",
        "output:", f"  embeddings: {tmp_path}/out/embeddings", f"  errors: {tmp_path}/out/errors",
        *extra,
    ]
    path = tmp_path / "job.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow  # a spark-submit application of its own
def test_embed_job_over_the_whole_corpus_exits_0_with_one_row_per_file_random_init_weights(
        tmp_path, reference_embedder):
    root = tmp_path / "bucket"
    corpus.write(root)
    samples = sorted(SAMPLE_DIR.rglob("*.jpg"))[::10]  # ordinary photos next to the odd files
    for path in samples:
        (root / "photos").mkdir(exist_ok=True)
        (root / "photos" / path.name).write_bytes(path.read_bytes())
    os.mkfifo(root / "named-pipe.jpg")
    config = write_config(tmp_path, root)

    done = run_script(["./spark-submit.sh", "embed", "--config", str(config)], timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    n_files = len(CASES) + len(samples) + 1
    assert summary["listed"] == n_files

    emb = read_table(str(tmp_path / "out" / "embeddings")).set_index("item_id")
    err = read_table(str(tmp_path / "out" / "errors")).set_index("item_id")
    # Exactly one row per file, in exactly one of the two tables.
    assert len(emb) + len(err) == n_files and not set(emb.index) & set(err.index)
    assert emb.index.is_unique and err.index.is_unique

    expected_errors = {corpus.item_id(c): c.kind for c in BAD} | {"named-pipe": "unsupported"}
    assert err["error"].to_dict() == expected_errors
    assert summary["errors_by_kind"] == {k: list(expected_errors.values()).count(k) for k in set(expected_errors.values())}
    for case in BAD:
        assert case.message.lower() in err.loc[corpus.item_id(case), "message"].lower()

    # Every other file embeds, with the size a person sees and the embedding the model gives its
    # pixels when called directly: no odd file disturbed its neighbours in the batch.
    direct_pixels, ids = [], []
    for case in OK:
        row = emb.loc[corpus.item_id(case)]
        assert (row["width"], row["height"]) == case.size, case.name
        assert uris.local_path(row["uri"]) == str(root / case.key)
        direct_pixels.append(images.decode(case.data)[0])
        ids.append(corpus.item_id(case))
    for path in samples:
        direct_pixels.append(images.decode(path.read_bytes())[0])
        ids.append(f"photos/{path.stem}")
    expected = reference_embedder.embed(np.stack(direct_pixels))
    got = np.stack(emb.loc[ids, "embedding"].to_numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    print(f"\nCORPUS: {n_files} files, {len(emb)} embedded, {len(err)} error rows "
          f"{summary['errors_by_kind']}, rows lost {n_files - len(emb) - len(err)}")


def upload_cases(s3, bucket: str, prefix: str, cases) -> None:
    for case in cases:
        s3.put_object(Bucket=bucket, Key=prefix + case.key, Body=case.data)


def test_s3_keys_with_spaces_unicode_and_a_key_deleted_after_listing_random_init_weights(
        spark, s3, bucket, s3_endpoint, tmp_path, monkeypatch, reference_embedder):
    chosen = [corpus.by_name()[n] for n in ("unicode_space_key", "url_special_key", "nested_space_dir",
                                            "exif_rotated_jpeg", "plain_jpeg", "html_error_page")]
    upload_cases(s3, bucket, "in/", chosen)
    s3.put_object(Bucket=bucket, Key="in/vanishing.jpg", Body=chosen[-2].data)

    real_list = listing.list_images

    def list_then_delete(*args, **kwargs):
        # The race a busy bucket has: the object is listed, then deleted before a task fetches it.
        listed = real_list(*args, **kwargs)
        s3.delete_object(Bucket=bucket, Key="in/vanishing.jpg")
        return listed

    monkeypatch.setattr(listing, "list_images", list_then_delete)
    cfg = load_config(None, [
        f"input.uri=s3://{bucket}/in", f"s3.endpoint_url={s3_endpoint}", "model.weights=none",
        f"model.seed={SEED}", "model.batch_size=4", "input.partition_size=4", "input.max_error_fraction=0.5",
        f"output.embeddings={tmp_path}/emb", f"output.errors={tmp_path}/err",
    ])
    summary = embed_job.run(spark, cfg)
    assert summary["listed"] == 7 and summary["embedded"] == 5
    assert summary["errors_by_kind"] == {"not_found": 1, "decode_error": 1}

    emb = read_table(str(tmp_path / "emb")).set_index("item_id")
    err = read_table(str(tmp_path / "err")).set_index("item_id")
    assert err.loc["vanishing", "error"] == "not_found" and "deleted after listing" in err.loc["vanishing", "message"]
    assert err.loc["error-page", "error"] == "decode_error"
    ok = [c for c in chosen if c.ok]
    for case in ok:
        row = emb.loc[corpus.item_id(case)]
        assert row["uri"] == f"s3://{bucket}/in/{case.key}"  # raw key: '#', '?', '%' kept
        assert (row["width"], row["height"]) == case.size
    expected = reference_embedder.embed(np.stack([images.decode(c.data)[0] for c in ok]))
    got = np.stack(emb.loc[[corpus.item_id(c) for c in ok], "embedding"].to_numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_more_errors_than_max_error_fraction_fails_and_publishes_nothing_random_init_weights(
        spark, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    by_name = corpus.by_name()
    corpus.write(good, [by_name["plain_jpeg"], by_name["webp"], by_name["tiff"]])
    corpus.write(bad, [by_name["plain_jpeg"], by_name["webp"], by_name["zero_bytes"], by_name["html_error_page"]])
    out = tmp_path / "out"

    def cfg(uri, *extra):
        return load_config(None, [f"input.uri={uri}", "model.weights=none", f"model.seed={SEED}",
                                  "model.batch_size=4", f"output.embeddings={out}/emb",
                                  f"output.errors={out}/err", *extra])

    assert embed_job.run(spark, cfg(good))["embedded"] == 3
    before = snapshot(out)
    assert before

    with pytest.raises(TooManyErrorsError) as refused:
        embed_job.run(spark, cfg(bad))  # 2 of 4 failed; the default limit is 0.05
    message = str(refused.value)
    assert "2 of 4 images failed" in message and "input.max_error_fraction=0.05" in message
    assert "Nothing was published" in message and refused.value.exit_code == 2
    assert snapshot(out) == before  # previous output intact, nothing half-written beside it
    assert sorted(read_table(str(out / "emb"))["item_id"]) == ["lossless", "lzw", "plain"]

    # At the limit it publishes: 2 of 4 is not more than 0.5.
    assert embed_job.run(spark, cfg(bad, "input.max_error_fraction=0.5"))["errors"] == 2
