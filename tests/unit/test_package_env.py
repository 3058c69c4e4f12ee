"""scripts/package-env.sh (what `./spark-submit.sh --package-env` runs) refuses, before building anything, an
archive Spark could not unpack on the executors: a plain .tar (Spark's Java untar refuses the
virtualenv's bin/python link: "expanding bin/python3.11 would create entry outside of ...")."""

from __future__ import annotations

import pytest

from tests.support.paths import ROOT
from tests.support.procs import run_script


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # A plain .tar: the message names the way to an uncompressed archive that works.
        (["--output", "env.tar"], ("must end in .tar.gz", "with links intact", "add --compress-level 0")),
        (["--output", "env.zip"], ("must end in .tar.gz",)),
        (["--output", "env.tar.gz", "--compress-level", "fast"], ("--compress-level must be 0-9",)),
    ],
)
def test_an_archive_spark_cannot_unpack_is_refused_before_anything_is_built(tmp_path, args, says):
    work = tmp_path / "work"
    result = run_script([str(ROOT / "scripts" / "package-env.sh"), "--work", str(work), *args], cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.count("\n") == 1 and all(part in result.stderr for part in says), result.stderr
    assert list(tmp_path.iterdir()) == []  # no virtualenv, no archive
