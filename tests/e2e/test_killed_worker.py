"""A Python worker dies in the middle of a task: Spark retries the task and the published tables are
identical to an undisturbed run's, with no duplicate rows.

The crash is injected from outside the product: Spark starts tests/e2e/hooks/crashing_worker.py in place
of pyspark.worker (spark.python.worker.module, without the forking daemon), and that worker exits
the process after its first embedded batch, once per run (LOOKALIKE_TEST_CRASH_ONCE names the
marker file). Python workers inherit the driver's environment, so it is set for a spark-submit
subprocess, never for the shared test session. Both runs embed with the toy model
(tests/support/toy_model.py): what is tested is Spark's retry and the job's publishing, not the backbone.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pandas as pd
import pytest

from lookalike.config import load_config
from lookalike.jobs import embed as embed_job
from tests.support.embed_rows import assert_embeddings_agree
from tests.support.outputs import read_output
from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.procs import run_script

pytestmark = pytest.mark.slow  # a spark-submit application (make test-fast leaves it out)

# local[2,4]: two task threads and up to four attempts per task (plain local[2] never retries).
MASTER = "local[2,4]"


HOOKS = ROOT / "tests" / "e2e" / "hooks"
CRASHING_WORKER = ["--conf", "spark.python.use.daemon=false", "--conf", "spark.python.worker.module=crashing_worker"]


# Small batches and tasks: several tasks per run, so that one fails while the others go on.
BATCHES = ["model.batch_size=2", "input.partition_size=4"]


def embed(images, out, settings, env=None, spark_args=()):
    result = run_script(
        [
            str(ROOT / "spark-submit.sh"),
            "embed",
            "--master",
            MASTER,
            *spark_args,
            *[a for s in settings for a in ("--set", s)],
            "--set",
            f"input.uri={images}",
            "--set",
            f"output.embeddings={out}/emb",
            "--set",
            f"output.errors={out}/err",
        ],
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # spark-submit merges the Python driver's stderr into stdout: the summary is the last JSON line.
    summary = [line for line in result.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(summary), result.stdout + result.stderr


def read(path) -> pd.DataFrame:
    return read_output(str(path)).to_pandas().sort_values("item_id").reset_index(drop=True)


def test_a_killed_python_worker_is_retried_and_the_tables_equal_an_undisturbed_run(spark, tmp_path, toy_overrides):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[::5]:
        shutil.copy(path, images / path.name)
    marker = tmp_path / "crashed-once"
    settings = [*toy_overrides, *BATCHES]

    # The undisturbed run: the same job and config in this session (spark-submit.sh's default
    # config is conf/local.yaml), which saves CI an application.
    calm = embed_job.run(
        spark,
        load_config(
            str(ROOT / "conf" / "local.yaml"),
            [
                *settings,
                f"input.uri={images}",
                f"output.embeddings={tmp_path}/calm/emb",
                f"output.errors={tmp_path}/calm/err",
            ],
        ),
    )
    path = os.pathsep.join(p for p in (str(HOOKS), os.environ.get("PYTHONPATH")) if p)
    hit, output = embed(
        images,
        tmp_path / "hit",
        settings,
        env={"LOOKALIKE_TEST_CRASH_ONCE": str(marker), "PYTHONPATH": path},
        spark_args=CRASHING_WORKER,
    )

    assert marker.exists(), "the hook did not fire: the worker was never killed"
    # The first attempt of a task failed because its worker died; a later attempt succeeded.
    assert re.search(r"Lost task \d+\.0 in stage \S+ \(TID \d+\).*Python worker exited unexpectedly", output), output[
        -3000:
    ]
    assert (hit["listed"], hit["embedded"], hit["errors"]) == (calm["listed"], calm["embedded"], 0) == (12, 12, 0)

    a, b = read(tmp_path / "calm" / "emb"), read(tmp_path / "hit" / "emb")
    assert len(b) == b["item_id"].nunique() == 12  # the retried task's rows are there once
    ignore = ["embedding", "run_id", "embedded_at"]
    pd.testing.assert_frame_equal(a.drop(columns=ignore), b.drop(columns=ignore))
    assert_embeddings_agree(a["embedding"], b["embedding"])  # the session may batch them otherwise
    assert len(read(tmp_path / "hit" / "err")) == 0
