"""./spark-submit.sh embed as whole processes: what only the wrapper and a process of its own can
show. Everything else the embed job does is tested in the tests' session (tests/spark/embed);
the full embed run as a process is the hostile corpus (tests/e2e/test_hostile_corpus.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.procs import run_script


def submit(*args, timeout=600):
    """Run ./spark-submit.sh; ``.output`` is stdout and stderr together, because spark-submit's
    PythonRunner merges the driver's stderr into its stdout."""
    result = run_script([str(ROOT / "spark-submit.sh"), *args], timeout=timeout)
    result.output = result.stdout + result.stderr
    return result


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_config_mistake_is_one_clear_line_and_exit_2():
    result = submit("embed", "--set", "model.pooling=mean", timeout=300)
    assert result.returncode == 2
    assert "'model.pooling': 'mean' is not one of avg, max, flatten" in result.output
    assert "Traceback" not in result.output
    bad_job = submit("nosuchjob", timeout=60)  # the wrapper alone: no JVM
    assert bad_job.returncode == 2 and "unknown job 'nosuchjob'" in bad_job.output


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_dry_run_prints_the_summary_line_and_creates_no_output(tmp_path, toy_overrides):
    # The wrapper hands --dry-run to the job (not to spark-submit): the flag's way through it.
    sets = [a for s in toy_overrides for a in ("--set", s)]
    result = submit(
        "embed",
        "--dry-run",
        "--config",
        str(ROOT / "conf" / "local.yaml"),
        *sets,
        "--set",
        f"input.uri={SAMPLE_DIR}",
        "--set",
        f"output.embeddings={tmp_path}/out/emb",
        "--set",
        f"output.errors={tmp_path}/out/err",
    )
    assert result.returncode == 0, result.output[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    listed = len(list(SAMPLE_DIR.rglob("*.jpg")))
    assert summary["dry_run"] is True and summary["listed"] == summary["new"] == summary["attempted"] == listed
    assert summary["reused"] == summary["changed"] == summary["deleted"] == summary["retried"] == 0
    assert not (tmp_path / "out").exists()
    assert "would embed" in result.output and "model loads" not in result.output
