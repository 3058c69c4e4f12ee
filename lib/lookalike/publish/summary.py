"""The run summary published with each version (``_lookalike_summary.json``): what a run wrote,
from which inputs, with which settings. The jobs write it through OutputSet.commit."""

from __future__ import annotations

import json
import logging

from lookalike.config import S3Config
from lookalike.io.current import read_text, resolve
from lookalike.io.storage import storage_for
from lookalike.publish.layouts import SUMMARY

log = logging.getLogger(__name__)


def read_summary(path: str, s3: S3Config | None = None) -> dict | None:
    """The ``_lookalike_summary.json`` of the current version of ``path``; None when there is none."""
    where = resolve(path, s3).rstrip("/") + "/" + SUMMARY
    text = read_text(storage_for(where, s3), where)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", where)
        return None
