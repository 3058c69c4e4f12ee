"""The embed job whose S3 listing fails, in the tests' session: exit status 2, one clear line that
says what failed (with the echoed Authorization header redacted), and no credential in anything it
prints or writes. The job runs with the logging its process would set up (jobs/common.py
setup_logging: DEBUG, the redacting filter), writing into the test's captured stderr.

The listing is the driver's (a small S3 prefix): no Spark task runs, so the session's JVM and
Python workers see nothing of it; the whole-process run that also searches their output is
tests/e2e/test_security_process.py."""

from __future__ import annotations

import contextlib
import logging

from lookalike.jobs import common
from lookalike.jobs import embed as embed_job
from tests.support.e2e_credentials import (
    assert_no_credentials,
    assert_no_credentials_in_files,
    embed_job_args,
    put_shop,
)
from tests.support.faultproxy import FaultProxy

NOISY = ("py4j", "botocore", "boto3", "urllib3", "s3transfer", "absl", "tensorflow")


@contextlib.contextmanager
def process_logging(level: str):
    """The logging jobs/common.py's setup_logging gives a job's own process (to sys.stderr, as it is
    when called), put back as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in NOISY}
    root.handlers[:] = []
    try:
        common.setup_logging(level)
        yield
    finally:
        handlers, root_level, levels = saved
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, noisy_level in levels.items():
            logging.getLogger(name).setLevel(noisy_level)


def test_job_whose_listing_fails_never_logs_credentials(spark, tmp_path, s3, bucket, s3_endpoint, capsys):
    shop = put_shop(s3, bucket)
    with FaultProxy(s3_endpoint, always_fail={"list"}, kinds=("slowdown",), echo_authorization=True) as proxy:
        with process_logging("DEBUG"):
            code = embed_job.main(
                embed_job_args(tmp_path / "out", shop, proxy.url, ["model.weights=none"]), spark=spark
            )
        assert proxy.stats.requests["list"] == 2
    assert code == 75  # S3 kept answering SlowDown: a later run may succeed
    done = capsys.readouterr()
    output = done.out + done.err
    assert "cannot list" in output and "Credential=***" in output
    assert "Traceback" not in output
    assert_no_credentials("stdout", done.out)
    assert_no_credentials("stderr", done.err)
    assert_no_credentials_in_files(tmp_path / "out")
