"""Keeping credentials out of messages.

Error text from an S3 server or a proxy is copied into logs and error rows. A misbehaving server
may echo the request's Authorization header; never pass such text on unredacted.
"""

from __future__ import annotations

import os
import re

_known_secrets: set[str] = set()
_SIGNING_PARTS = re.compile(
    r"((?:X-Amz-)?(?:Credential|Signature|Security-Token)=|aws_secret_access_key\s*[=:]\s*)"
    r"[^\s,&\"'<>]+",
    re.IGNORECASE,
)
_ACCESS_KEY_IDS = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")


def remember_credentials(session) -> None:
    """Note the credentials a boto3 ``session`` will sign with, so that :func:`redact` removes
    them even when they came from a profile file or a role rather than the environment."""
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except Exception:  # a broken profile: the first request reports it, inside the callers' handlers
        return
    if frozen is None:
        return
    for value in (frozen.access_key, frozen.secret_key, frozen.token):
        if value and len(value) >= 8:
            _known_secrets.add(value)


def redact(text: str) -> str:
    """``text`` with credentials (the ones in use, and anything shaped like one) replaced by ***."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    for value in list(_known_secrets):
        text = text.replace(value, "***")
    text = _SIGNING_PARTS.sub(r"\1***", text)
    return _ACCESS_KEY_IDS.sub("***", text)
