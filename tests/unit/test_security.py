"""Security: credentials come only from boto3's default chain and never appear in summaries, error
rows or messages; configs are parsed with a safe YAML loader; nothing is unpickled from data.

tests/support/env.py puts a recognisable fake secret (FAKE_SECRET) and access key id in the
environment before anything starts. The embed job with an S3 endpoint that misbehaves on purpose
(tests/support/faultproxy.py: errors that quote the request's Authorization header): a listing that
fails in tests/spark/jobs/test_security_listing.py, a fetch that fails, as a whole spark-submit
process whose every log line and output is searched, in tests/e2e/test_security_process.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from lookalike.config import S3Config, load_config, load_dict, parse_override
from lookalike.errors import ConfigError
from lookalike.io.redact import redact
from tests.support.e2e_credentials import ACCESS_KEY_ID, assert_no_credentials
from tests.support.env import FAKE_SECRET
from tests.support.faultproxy import FaultProxy
from tests.support.paths import ROOT

# --- configuration -------------------------------------------------------------------------------


def test_yaml_python_tags_are_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_dict(str(config))
    config.write_text("spark: !!python/object:lookalike.config.SparkConfig {master: local}\n")
    with pytest.raises(ConfigError):
        load_config(str(config))
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_override(f'model.name=!!python/object/apply:os.system ["touch {marker}"]')
    assert not marker.exists()


def test_credentials_have_no_config_key_and_are_not_echoed_when_someone_tries(tmp_path):
    assert not any("secret" in f or "access_key" in f or "token" in f for f in S3Config.model_fields)
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"s3.aws_secret_access_key={FAKE_SECRET}"])
    assert "unknown config key 's3.aws_secret_access_key'" in str(refused.value)
    assert_no_credentials("the config error", str(refused.value))
    config = tmp_path / "job.yaml"
    config.write_text(f"s3:\n  aws_access_key_id: {ACCESS_KEY_ID}\n  aws_secret_access_key: {FAKE_SECRET}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(str(config))
    assert_no_credentials("the config error", str(refused.value))


def test_nothing_is_unpickled_or_evaluated_from_data():
    """No loader in the library can run code from a file it reads."""
    forbidden = re.compile(
        r"\b(pickle\.loads?|cloudpickle\.loads?|dill\.loads?|joblib\.load|read_pickle|"
        r"yaml\.load\(|yaml\.unsafe_load|yaml\.full_load|allow_pickle\s*=\s*True|"
        r"marshal\.loads?|shelve\.open|eval\(|exec\()"
    )
    sources = sorted((ROOT / "lib" / "lookalike").rglob("*.py"))
    assert len(sources) > 10
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []


def test_redact_removes_the_credentials_in_use_and_anything_shaped_like_one():
    text = (
        f"denied for {ACCESS_KEY_ID} with {FAKE_SECRET}; Authorization: AWS4-HMAC-SHA256 "
        f"Credential=SOMEONEELSE/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, "
        f"Signature=0123abcd; url ?X-Amz-Credential=K%2F1&X-Amz-Signature=ff&X-Amz-Security-Token=tok "
        f"key AKIAABCDEFGHIJKLMNOP"
    )
    out = redact(text)
    assert_no_credentials("redacted text", out)
    for leaked in ("SOMEONEELSE", "0123abcd", "K%2F1", "tok ", "AKIAABCDEFGHIJKLMNOP"):
        assert leaked not in out
    assert "Credential=***" in out and "SignedHeaders=host" in out  # still says what happened


def test_clients_use_the_default_chain_shared_credentials_file(tmp_path, s3_endpoint, s3, bucket):
    """With no keys in the environment boto3 finds the profile file; nothing else is consulted."""
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = lookalikeFILEKEYID\naws_secret_access_key = fileSecretNeverLogged123\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
        AWS_CONFIG_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
    )
    with FaultProxy(s3_endpoint) as proxy:
        code = (
            "import sys; from lookalike.io import storage; from lookalike.config import S3Config; "
            f"sys.stdout.write(storage.fetch('s3://{bucket}/a.jpg', S3Config(endpoint_url='{proxy.url}'), 10).decode())"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout == "x", done.stderr
        assert dict(proxy.stats.signed_by) == {"lookalikeFILEKEYID": 1}
