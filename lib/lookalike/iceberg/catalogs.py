"""A pyiceberg catalog from lookalike's settings, and what its failures mean for the exit code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from lookalike.config import S3Config
from lookalike.errors import ConfigError, TransientError
from lookalike.io.current import file_io_properties
from lookalike.io.s3client import aws_client

CatalogType = Literal["sql", "glue", "rest"]


@dataclass(frozen=True)
class CatalogSpec:
    """Where the tables are registered.

    ``sql``: ``uri`` is a SQLite file path (or any SQLAlchemy URL); ``glue``: AWS Glue in
    ``region``, ``endpoint_url`` for a Glue-compatible endpoint; ``rest``: an Iceberg REST catalog
    at ``uri`` (S3 Tables, Polaris, Nessie, Lakekeeper), ``warehouse`` and ``credential``/``token``
    as that catalog wants them, else from the environment (LOOKALIKE_CATALOG_CREDENTIAL,
    LOOKALIKE_CATALOG_TOKEN), never written to logs."""

    type: CatalogType = "sql"
    uri: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    warehouse: str | None = None
    credential: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    name: str = "lookalike"


def open_catalog(spec: CatalogSpec, s3: S3Config | None = None):
    """The pyiceberg catalog ``spec`` describes. Opening a SQL catalog creates its file (and the
    directory it is in); the others connect only when first used."""
    props = file_io_properties(s3)
    try:
        if spec.type == "sql":
            from pyiceberg.catalog.sql import SqlCatalog

            if not spec.uri:
                raise ConfigError("output.catalog.uri: the SQLite file of the catalog is not set")
            url = spec.uri if "://" in spec.uri else f"sqlite:///{os.path.abspath(spec.uri)}"
            if url.startswith("sqlite:///"):
                os.makedirs(os.path.dirname(url[len("sqlite:///") :]) or ".", exist_ok=True)
            return SqlCatalog(spec.name, uri=url, **props)
        if spec.type == "glue":
            from pyiceberg.catalog.glue import GlueCatalog

            region = spec.region or props.get("s3.region") or "us-east-1"
            glue: dict[str, Any] = {**props, "glue.region": region}
            if spec.endpoint_url:
                glue["glue.endpoint"] = spec.endpoint_url
            catalog = GlueCatalog(spec.name, **glue)
            # The client pyiceberg made has boto3's default retries and timeouts; the catalog gets
            # the same budget as every S3 call of the run (s3.max_attempts, s3.retry_mode, timeouts).
            catalog.glue = aws_client("glue", s3 or S3Config(), spec.endpoint_url, region)
            return catalog
        if spec.type == "rest":
            from pyiceberg.catalog.rest import RestCatalog

            if not spec.uri:
                raise ConfigError("output.catalog.uri: the REST catalog's URL is not set")
            rest = {"uri": spec.uri}
            credential = spec.credential or os.environ.get("LOOKALIKE_CATALOG_CREDENTIAL")
            token = spec.token or os.environ.get("LOOKALIKE_CATALOG_TOKEN")
            rest.update(
                {k: v for k, v in (("warehouse", spec.warehouse), ("credential", credential), ("token", token)) if v}
            )
            if ".amazonaws.com" in spec.uri:
                # AWS's REST endpoints (S3 Tables, Glue) take SigV4-signed requests, not tokens.
                service = "s3tables" if "s3tables." in spec.uri else "glue"
                region = spec.region or props.get("s3.region") or "us-east-1"
                rest.update({"rest.sigv4-enabled": "true", "rest.signing-name": service, "rest.signing-region": region})
            return RestCatalog(spec.name, **props, **rest)
    except ConfigError:
        raise
    except Exception as exc:
        raise catalog_failure(spec, "open", exc) from None
    raise ConfigError(f"output.catalog.type: {spec.type!r} is not one of sql, glue, rest")


def is_transient(exc: BaseException) -> bool:
    """Whether a catalog call failed because the service or the network did (retry later), not
    because of the request: connection and timeout errors of every client pyiceberg uses, 5xx
    answers, and a database that is locked by another writer."""
    from lookalike.io.s3client import is_transient as s3_transient

    name = type(exc).__name__
    if name in (
        "ConnectionError",
        "Timeout",
        "ConnectTimeout",
        "ReadTimeout",
        "ServerError",
        "ServiceUnavailableError",
    ):
        return True
    if name == "OperationalError" and "locked" in str(exc):
        return True
    if s3_transient(exc):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def catalog_failure(spec: CatalogSpec, what: str, exc: BaseException) -> Exception:
    """A catalog error as one line of lookalike's: transient (exit 75) when the service failed."""
    where = spec.uri or spec.endpoint_url or spec.region or spec.type
    message = f"cannot {what} the {spec.type} catalog at {where}: {type(exc).__name__}: {_short(exc)}"
    if is_transient(exc):
        return TransientError(message + "; nothing was committed: run again later")
    return ConfigError(message)


def _short(exc: BaseException) -> str:
    from lookalike.io.redact import redact

    text = " ".join(str(exc).split())
    return redact(text[:300] + (" ..." if len(text) > 300 else ""))
