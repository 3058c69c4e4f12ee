"""The one boto3 S3 client configuration, and the count of HTTP requests each thread sends.

Every S3 request of the jobs and tools goes through :func:`s3_client`: retries (s3.max_attempts
counted as AWS_MAX_ATTEMPTS counts them, s3.retry_mode), timeouts and the connection pool come
from S3Config, credentials from boto3's default chain only.
"""

from __future__ import annotations

import threading

from lookalike.config import S3Config
from lookalike.io.redact import redact, remember_credentials

# HTTP requests sent by this thread's client since the last reset: botocore's connection errors do
# not say how many times they were retried, and the message should. ``limit`` caps the requests
# for one object across botocore's retries and ours (a body cut off mid-transfer).
_sent = threading.local()


class OutOfAttempts(Exception):
    """Raised before a request that would exceed the thread's limit (see :func:`reset_count`)."""


def _count_request(**_) -> None:
    limit = getattr(_sent, "limit", 0)
    if limit and getattr(_sent, "n", 0) >= limit:
        raise OutOfAttempts()  # not retryable: botocore passes it straight up
    _sent.n = getattr(_sent, "n", 0) + 1


def reset_count(limit: int = 0) -> None:
    """Start counting this thread's requests from zero; ``limit`` > 0 refuses any beyond it."""
    _sent.n = 0
    _sent.limit = limit


def requests_sent() -> int:
    return getattr(_sent, "n", 0)


def attempts_text(exc, s3: S3Config) -> str:
    """'3 attempts (s3.max_attempts=3, s3.retry_mode=standard)': how hard we tried."""
    sent: int | None = requests_sent()
    if not sent:
        retries = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("RetryAttempts")
        sent = None if retries is None else retries + 1
    done = f"at most {s3.max_attempts} attempts" if sent is None else f"{sent} attempt{'s' if sent > 1 else ''}"
    return f"{done} (s3.max_attempts={s3.max_attempts}, s3.retry_mode={s3.retry_mode})"


def error_code(exc) -> str:
    """The S3 error code of a botocore ClientError ('NoSuchKey', '404', ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_text(exc) -> str:
    """'Code: message' from a botocore ClientError, redacted."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "?"), error.get("Message", "")
    return redact(f"{code}: {message}" if message else str(code))


# One client per settings in this process, shared by its threads: boto3 clients are thread-safe
# once made (making one is not, hence the lock). A client per task or decode thread would resolve
# credentials again (IMDS on EC2) and open a new connection pool each time.
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def clients_made(endpoint_url: str | None) -> int:
    """How many S3 clients this process has made for ``endpoint_url`` (one per distinct settings)."""
    return sum(1 for key in _clients if key[0] == endpoint_url)


def s3_client(cfg: S3Config):
    """The boto3 S3 client of this process for ``cfg``'s settings, made on first use."""
    import boto3
    from botocore.config import Config as BotoConfig

    key = (
        cfg.endpoint_url,
        cfg.region,
        cfg.max_attempts,
        cfg.retry_mode,
        cfg.connect_timeout,
        cfg.read_timeout,
        cfg.max_pool_connections,
    )
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        if key not in _clients:
            # Credentials: boto3's default chain only (environment, shared files, instance/task role).
            session = boto3.session.Session()
            remember_credentials(session)
            made = session.client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                region_name=cfg.region,
                config=BotoConfig(
                    # total_max_attempts counts the first try, like AWS_MAX_ATTEMPTS; botocore's
                    # "max_attempts" would count retries only (one more request than configured).
                    retries={"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    max_pool_connections=cfg.max_pool_connections,
                ),
            )
            made.meta.events.register("before-send.s3", _count_request)
            _clients[key] = made
        return _clients[key]


# Error codes S3 and S3-compatible servers answer while overloaded or failing; the request may
# succeed later.
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
}


def is_transient(exc) -> bool:
    """Whether a botocore failure (after botocore's own retries) may go away by itself: a 5xx or
    throttling answer, a timeout, a dropped or refused connection, or our attempt limit reached.
    Missing credentials, a denied permission or a missing bucket are not."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

    if isinstance(exc, OutOfAttempts):
        return True
    if isinstance(exc, ClientError):
        status = (exc.response or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error_code(exc) in _TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError))


def aws_client(service: str, cfg: S3Config, endpoint_url: str | None, region: str):
    """A boto3 client for another AWS service the run talks to (the Glue catalog), with the same
    retry budget and timeouts as its S3 calls. Credentials: boto3's default chain only."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        config=BotoConfig(
            retries={"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
        ),
    )
