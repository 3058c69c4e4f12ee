"""The exit-code contract in one place (lookalike/errors.py): which failures a scheduler retries."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from lookalike import errors
from lookalike.io.base import StorageError
from lookalike.io.s3client import OutOfAttempts, is_transient


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def test_the_codes_are_those_the_docs_promise():
    assert (errors.EXIT_OK, errors.EXIT_BUG, errors.EXIT_USER, errors.EXIT_TRANSIENT) == (0, 1, 2, 75)
    assert errors.ConfigError("x").exit_code == 2 and errors.OutputError("x").exit_code == 2
    assert errors.TransientError("x").exit_code == 75


@pytest.mark.parametrize("user", [errors.InputError, errors.OutputError, errors.WeightsError])
def test_a_storage_failure_keeps_its_kind_and_is_transient_only_when_the_storage_says_so(user):
    lasting = errors.storage_failure(user, "cannot read x", StorageError("fetch_error", "denied"))
    passing = errors.storage_failure(user, "cannot read x", StorageError("fetch_error", "503", transient=True))
    assert type(lasting) is user and lasting.exit_code == 2
    # Callers that catch the user-facing kind still catch the transient one.
    assert isinstance(passing, user) and isinstance(passing, errors.TransientError) and passing.exit_code == 75
    assert str(passing) == "cannot read x"


@pytest.mark.parametrize(
    "failure, transient",
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("Whatever", 502), True),
        (_client_error("TooManyRequestsException", 429), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (OutOfAttempts(), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (_client_error("InvalidAccessKeyId", 403), False),
        (NoCredentialsError(), False),
    ],
)
def test_which_s3_failures_may_pass_by_themselves(failure, transient):
    assert is_transient(failure) is transient


def test_a_job_maps_every_outcome_to_its_code(caplog):
    from lookalike.jobs.common import job_main

    def run_raising(error):
        def run(spark, cfg):
            raise error

        return run

    session = object()  # a caller's session: job_main neither builds nor stops one
    outcomes = {
        "ok": job_main([], lambda spark, cfg: {"ok": True}, "d", spark=session),
        "problems": job_main([], lambda spark, cfg: {"ok": False}, "d", spark=session),
        "user": job_main([], run_raising(errors.ConfigError("input.uri: fix it")), "d", spark=session),
        "transient": job_main([], run_raising(errors.OutputUnavailableError("S3 kept failing")), "d", spark=session),
        "bug": job_main([], run_raising(ZeroDivisionError("oops")), "d", spark=session),
    }
    assert outcomes == {"ok": 0, "problems": 2, "user": 2, "transient": 75, "bug": 1}
    bug = [r for r in caplog.records if "this is a bug" in r.getMessage()]
    assert len(bug) == 1 and bug[0].exc_info and bug[0].exc_info[0] is ZeroDivisionError  # with its traceback
    user = [r for r in caplog.records if "input.uri: fix it" in r.getMessage()]
    assert len(user) == 1 and not user[0].exc_info  # one line, no traceback
