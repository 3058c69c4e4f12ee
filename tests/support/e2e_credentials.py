"""What the credential tests share: the fake credentials the tests run with (tests/support/env.py),
checks that a text or a directory of outputs holds neither, the little shop of S3 objects the embed
job reads through a misbehaving endpoint, and the arguments of that job.

The endpoint is tests/support/faultproxy.py with ``echo_authorization=True``: its errors quote the
request's Authorization header (AWS4-HMAC-SHA256 Credential=<access key id>/..., Signature=...),
so that a message passed on unredacted would carry a credential."""

from __future__ import annotations

from pathlib import Path

from tests.support.env import FAKE_SECRET, TEST_ENV
from tests.support.outputs import read_output
from tests.support.paths import ROOT, SAMPLE_DIR

ACCESS_KEY_ID = TEST_ENV["AWS_ACCESS_KEY_ID"]
CREDENTIALS = (FAKE_SECRET, ACCESS_KEY_ID)


def assert_no_credentials(label: str, text: str) -> None:
    for value in CREDENTIALS:
        assert value not in text, f"{label} contains a credential ({value[:12]}...)"


def assert_no_credentials_in_files(root: Path) -> int:
    """Every file under root, as bytes, and every Parquet table's values. Returns files checked."""
    checked = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for value in CREDENTIALS:
            assert value.encode() not in data, f"{path} contains a credential"
        if path.suffix == ".parquet":  # compressed pages would hide a raw-bytes match
            assert_no_credentials(str(path), read_output(path).to_pandas().to_string())
        checked += 1
    return checked


def put_shop(s3, bucket: str) -> str:
    """Three sample images and ``shop/always-fails.jpg`` (the one a fault proxy can fail on every
    attempt) under s3://bucket/shop; returns that URI."""
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[:3]:
        s3.put_object(Bucket=bucket, Key=f"shop/{path.parent.name}-{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=bucket, Key="shop/always-fails.jpg", Body=path.read_bytes())
    return f"s3://{bucket}/shop"


def embed_job_args(out: Path, uri: str, endpoint: str, model: list[str]) -> list[str]:
    """The embed job's arguments (after ``embed``) on the demo config at DEBUG, reading ``uri``
    through ``endpoint`` with two attempts per request; ``model``: its --set values."""
    sets = [
        f"input.uri={uri}",
        f"s3.endpoint_url={endpoint}",
        "s3.max_attempts=2",
        *model,
        "model.batch_size=4",
        "input.max_error_fraction=0.5",
        "spark.conf={spark.ui.enabled: 'false'}",
        f"output.embeddings={out}/emb",
        f"output.errors={out}/err",
    ]
    return [
        "--config",
        str(ROOT / "conf" / "local.yaml"),
        "--log-level",
        "DEBUG",
        *[a for s in sets for a in ("--set", s)],
    ]
