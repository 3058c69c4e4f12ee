"""Credentials never reach the logs or outputs of a real process: ./spark-submit.sh embed at DEBUG,
signing with the fake credentials of tests/support/env.py, reads S3 through an endpoint whose
errors quote the request's Authorization header, and one image fails on every attempt. Everything
the process prints (the JVM's log, the driver's, the Python workers') and every file it writes is
searched. The same job whose listing fails, in the tests' session: tests/spark/jobs/test_security_listing.py."""

from __future__ import annotations

import pytest

from tests.support.e2e_credentials import (
    ACCESS_KEY_ID,
    assert_no_credentials,
    assert_no_credentials_in_files,
    embed_job_args,
    put_shop,
)
from tests.support.faultproxy import FaultProxy
from tests.support.outputs import read_output
from tests.support.procs import run_script


@pytest.mark.slow  # a spark-submit application of its own
def test_job_with_a_fetch_error_never_writes_or_logs_credentials(tmp_path, s3, bucket, s3_endpoint, toy_overrides):
    shop = put_shop(s3, bucket)
    with FaultProxy(
        s3_endpoint, always_fail={"shop/always-fails.jpg"}, kinds=("internal",), echo_authorization=True
    ) as proxy:
        done = run_script(
            [
                "./spark-submit.sh",
                "embed",
                "--master",
                "local[2]",
                *embed_job_args(tmp_path / "out", shop, proxy.url, toy_overrides),
            ],
            timeout=900,
        )
        assert proxy.stats.signed_by[ACCESS_KEY_ID] >= 5  # the job really signed with the fake key
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_no_credentials("stdout", done.stdout)
    assert_no_credentials("stderr", done.stderr)
    assert assert_no_credentials_in_files(tmp_path / "out") >= 4  # tables, summaries, markers

    errors = read_output(str(tmp_path / "out" / "err")).to_pandas()
    assert errors["error"].tolist() == ["fetch_error"]
    # The server did echo the signature into its message: what the row says was redacted, not absent.
    assert "Credential=***" in errors["message"][0] and "Signature=***" in errors["message"][0]
