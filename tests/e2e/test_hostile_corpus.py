"""The hostile corpus (tests/support/corpus.py) through the real embed job as a whole process:
./spark-submit.sh over a local directory. Every file gives a correct embedding or exactly one error
row of a specific kind, without touching any other image, and the job exits 0. The model is the toy
(tests/support/toy_model.py): what is tested is the job around it.

This run is also the test of what a successful `./spark-submit.sh embed` shows as a process: the
summary JSON as the last line of stdout, the "embed done" log line with images/s, and the summary
published beside the table."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lookalike.config import load_config
from lookalike.embed import images, model
from lookalike.io import uris
from tests.support import corpus
from tests.support.outputs import output_summary, read_output
from tests.support.paths import SAMPLE_DIR
from tests.support.procs import run_script

CASES = corpus.cases()
OK = [c for c in CASES if c.ok]
BAD = [c for c in CASES if not c.ok]
SEED = 5


def read_table(path: str):
    return read_output(path).to_pandas()


def write_config(tmp_path, uri: str, toy_model_file, *extra: str):
    lines = [
        "spark:",
        "  master: local[2]",
        "  conf:",
        "    spark.ui.enabled: 'false'",
        "    spark.sql.shuffle.partitions: 4",
        "input:",
        f"  uri: {json.dumps(str(uri))}",
        "  partition_size: 8",
        "  max_error_fraction: 0.6",
        "model:",
        "  name: keras_file",
        f"  file: {json.dumps(str(toy_model_file))}",
        "  preprocessing: tf",
        "  precision: float32",
        "  runtime: keras",
        f"  seed: {SEED}",
        "  batch_size: 8",
        "output:",
        f"  embeddings: {tmp_path}/out/embeddings",
        f"  errors: {tmp_path}/out/errors",
        *extra,
    ]
    path = tmp_path / "job.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow  # a spark-submit application of its own
def test_embed_job_over_the_whole_corpus_exits_0_with_one_row_per_file(tmp_path, toy_model_file, toy_overrides):
    root = tmp_path / "bucket"
    corpus.write(root)
    samples = sorted(SAMPLE_DIR.rglob("*.jpg"))[::10]  # ordinary photos next to the odd files
    for path in samples:
        (root / "photos").mkdir(exist_ok=True)
        (root / "photos" / path.name).write_bytes(path.read_bytes())
    os.mkfifo(root / "named-pipe.jpg")
    config = write_config(tmp_path, root, toy_model_file)

    done = run_script(["./spark-submit.sh", "embed", "--config", str(config)], timeout=900)
    output = done.stdout + done.stderr  # spark-submit merges the driver's stderr into stdout
    assert done.returncode == 0, output[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    n_files = len(CASES) + len(samples) + 1
    assert summary["listed"] == n_files

    emb = read_table(str(tmp_path / "out" / "embeddings")).set_index("item_id")
    err = read_table(str(tmp_path / "out" / "errors")).set_index("item_id")
    # Exactly one row per file, in exactly one of the two tables.
    assert len(emb) + len(err) == n_files and not set(emb.index) & set(err.index)
    assert emb.index.is_unique and err.index.is_unique
    # What the process says: the log line, and the summary published with the version.
    assert (summary["embedded"], summary["errors"]) == (len(emb), len(err))
    assert f"embed done: listed {n_files}, embedded {len(emb)}, errors {len(err)}" in output
    assert "images/s" in output
    on_disk = output_summary(tmp_path / "out" / "embeddings")
    assert on_disk["run_id"] == summary["run_id"]

    expected_errors = {corpus.item_id(c): c.kind for c in BAD} | {"named-pipe": "unsupported"}
    assert err["error"].to_dict() == expected_errors
    assert summary["errors_by_kind"] == {
        k: list(expected_errors.values()).count(k) for k in set(expected_errors.values())
    }
    for case in BAD:
        assert case.message.lower() in err.loc[corpus.item_id(case), "message"].lower()

    # Every other file embeds, with the size a person sees and the embedding the model gives its
    # pixels when called directly: no odd file disturbed its neighbours in the batch.
    reference = model.Embedder(load_config(None, [*toy_overrides, f"model.seed={SEED}"]).model, threads=2)
    size = reference.input_size
    direct_pixels, ids = [], []
    for case in OK:
        row = emb.loc[corpus.item_id(case)]
        assert (row["width"], row["height"]) == case.size, case.name
        assert uris.local_path(row["uri"]) == str(root / case.key)
        direct_pixels.append(images.decode(case.data, 0, size)[0])
        ids.append(corpus.item_id(case))
    for path in samples:
        direct_pixels.append(images.decode(path.read_bytes(), 0, size)[0])
        ids.append(f"photos/{path.stem}")
    expected = reference.embed(np.stack(direct_pixels))
    got = np.stack(emb.loc[ids, "embedding"].to_numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    print(
        f"\nCORPUS: {n_files} files, {len(emb)} embedded, {len(err)} error rows "
        f"{summary['errors_by_kind']}, rows lost {n_files - len(emb) - len(err)}"
    )
