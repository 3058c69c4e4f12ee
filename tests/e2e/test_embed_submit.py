"""./spark-submit.sh embed as whole processes: what only the wrapper and a process of its own can
show. Everything else the embed job does is tested in the tests' session (tests/spark/embed);
the full embed run as a process is the hostile corpus (tests/e2e/test_hostile_corpus.py)."""

from __future__ import annotations

import json

import pytest

from lookalike.config import load_config
from lookalike.jobs import embed as embed_job
from tests.support.net import free_port
from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.procs import run_script


def embed_settings(tmp_path, toy_overrides, *sets: str) -> list[str]:
    """The embed job on the toy model, writing under tmp_path/out, with more settings."""
    return [*toy_overrides, *sets, f"output.embeddings={tmp_path}/out/emb", f"output.errors={tmp_path}/out/err"]


def embed_args(tmp_path, toy_overrides, *sets: str) -> list[str]:
    """``embed_settings`` as spark-submit.sh's ``--set``s."""
    return [a for s in embed_settings(tmp_path, toy_overrides, *sets) for a in ("--set", s)]


def submit(*args, timeout=600):
    """Run ./spark-submit.sh; ``.output`` is stdout and stderr together, because spark-submit's
    PythonRunner merges the driver's stderr into its stdout."""
    result = run_script([str(ROOT / "spark-submit.sh"), *args], timeout=timeout)
    result.output = result.stdout + result.stderr
    return result


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_config_mistake_is_one_clear_line_and_exit_2(tmp_path):
    result = submit("embed", "--set", "model.pooling=mean", timeout=300)
    assert result.returncode == 2
    assert "'model.pooling': 'mean' is not one of avg, max, flatten" in result.output
    assert "Traceback" not in result.output
    latin1 = tmp_path / "latin1.yaml"  # issue 24: a UnicodeDecodeError traceback before
    latin1.write_bytes("input:\n  uri: /data/caf\u00e9\n".encode("latin-1"))
    not_utf8 = submit("embed", "--config", str(latin1), timeout=300)
    assert not_utf8.returncode == 2 and "Traceback" not in not_utf8.output, not_utf8.output[-3000:]
    assert f"config file {latin1} is not UTF-8" in not_utf8.output
    bad_job = submit("nosuchjob", timeout=60)  # the wrapper alone: no JVM
    assert bad_job.returncode == 2 and "unknown job 'nosuchjob'" in bad_job.output
    for option in ("--config", "--set", "--master", "--log-level", "--env"):  # issue 24: bash's "unbound variable"
        missing = submit("embed", option, timeout=60)
        assert missing.returncode == 2 and missing.output.strip().splitlines() == [missing.output.strip()], (
            missing.output
        )
        assert f"spark-submit.sh: {option} needs a value, e.g. {option} " in missing.output


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_dry_run_prints_the_summary_line_and_creates_no_output(tmp_path, toy_overrides):
    # The wrapper hands --dry-run to the job (not to spark-submit): the flag's way through it.
    result = submit(
        "embed",
        "--dry-run",
        "--config",
        str(ROOT / "conf" / "local.yaml"),
        *embed_args(tmp_path, toy_overrides, f"input.uri={SAMPLE_DIR}"),
    )
    assert result.returncode == 0, result.output[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    listed = len(list(SAMPLE_DIR.rglob("*.jpg")))
    assert summary["dry_run"] is True and summary["listed"] == summary["new"] == summary["attempted"] == listed
    assert summary["reused"] == summary["changed"] == summary["deleted"] == summary["retried"] == 0
    assert not (tmp_path / "out").exists()
    assert "would embed" in result.output and "model loads" not in result.output


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_storage_that_keeps_failing_exits_75_for_the_scheduler_to_retry(tmp_path, toy_overrides):
    # Nothing listens on the endpoint: every attempt is refused, which a later run may not be.
    result = submit(
        "embed",
        *embed_args(
            tmp_path,
            toy_overrides,
            "input.uri=s3://shop/images",
            f"s3.endpoint_url=http://127.0.0.1:{free_port()}",
            "s3.max_attempts=2",
        ),
        timeout=300,
    )
    assert result.returncode == 75, result.output[-3000:]
    assert "cannot list s3://shop/images" in result.output and "Nothing was written" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_a_catalog_that_is_down_exits_75_and_commits_nothing(tmp_path):
    # Nothing listens where the Glue catalog should be: checked before any work, retried later.
    result = submit(
        "neighbours",
        "--set",
        f"output.embeddings={tmp_path}/out/emb",
        "--set",
        f"output.neighbours={tmp_path}/out/neighbours",
        "--set",
        "output.catalog.type=glue",
        "--set",
        f"output.catalog.endpoint_url=http://127.0.0.1:{free_port()}",
        "--set",
        "s3.max_attempts=2",
        timeout=300,
    )
    assert result.returncode == 75, result.output[-3000:]
    assert "cannot load table lookalike.neighbours from the glue catalog" in result.output
    assert "nothing was committed: run again later" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a spark-submit application of its own
def test_a_run_killed_while_it_writes_blocks_nothing_and_the_next_run_commits(spark, tmp_path, toy_overrides):
    # kill -9 of the whole application (driver and workers) as it starts writing: its staging
    # folder exists, the commit is seconds of Spark work away. The next run is the same job and
    # config in this session (spark-submit.sh's default config is conf/local.yaml): what it must
    # cope with is on disk, not in a process, and the session saves CI an application.
    import os
    import signal
    import subprocess
    import time

    from lookalike.io.current import current

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[:8]:
        (images / path.name).write_bytes(path.read_bytes())
    sets = (f"input.uri={images}", "input.partition_size=2")
    args = embed_args(tmp_path, toy_overrides, *sets)
    data = tmp_path / "out" / "emb" / "data"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [str(ROOT / "spark-submit.sh"), "embed", *args], cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while not data.exists() and proc.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert current(str(tmp_path / "out" / "emb")) is None  # nothing committed: readers see no table
    overrides = embed_settings(tmp_path, toy_overrides, *sets)
    summary = embed_job.run(spark, load_config(str(ROOT / "conf" / "local.yaml"), overrides))
    assert summary["ok"] and summary["published"] and summary["embedded"] == 8
    found = current(str(tmp_path / "out" / "emb"))
    assert found.format == "iceberg"
    # Only the new run's files are the table; the killed run's stay until they are old (2 days).
    assert len({f.rsplit("/", 2)[1] for f in found.files}) == 1
