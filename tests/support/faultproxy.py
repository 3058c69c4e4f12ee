"""A fault-injecting HTTP proxy for tests: 127.0.0.1, between boto3 and the moto server.

Point ``s3.endpoint_url`` at ``proxy.url``. Each request is forwarded to moto unless a fault is
injected instead: ``slowdown`` (503 SlowDown), ``internal`` (500 InternalError), ``drop`` (the
connection is closed before any response) or ``truncate`` (headers and half the body, then the
connection is closed; GetObject only).

Which request fails is deterministic for a seed, whatever the order in which concurrent Spark
workers send them: the decision for the n-th attempt at one (operation, resource) is a hash of
(seed, operation, resource, n). ``max_consecutive`` caps the failures in a row for one resource,
so a transient fault is transient by construction; ``always_fail`` names keys (or ``"list"`` for
every listing request) that fail on every attempt. Everything the proxy saw is counted in
``stats`` so that tests can prove their requests went through the faults.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

FAULT_KINDS = ("slowdown", "internal", "drop", "truncate")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def _error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
    ).encode()


class Stats:
    """What the proxy saw. ``attempts[(op, resource)]`` counts every request, failed or not."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # op -> requests
        self.faults: Counter = Counter()  # (op, kind) -> faults injected
        self.attempts: Counter = Counter()  # (op, resource) -> requests
        self.failed: Counter = Counter()  # (op, resource) -> faults injected
        self.signed_by: Counter = Counter()  # access key id in the SigV4 Authorization header -> requests

    def faults_for(self, op: str) -> int:
        return sum(n for (o, _), n in self.faults.items() if o == op)

    def summary(self) -> dict:
        return {"requests": dict(self.requests), "faults": {f"{o}:{k}": n for (o, k), n in self.faults.items()}}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        rates: dict[str, float] | None = None,
        kinds: Iterable[str] = ("slowdown", "internal", "drop"),
        max_consecutive: int = 2,
        always_fail: Iterable[str] = (),
        echo_authorization: bool = False,
    ):
        """``rates``: share of requests to fail per operation: ``get`` (GetObject), ``head``,
        ``list`` (ListObjects*), ``other``. ``echo_authorization``: error bodies quote the
        request's Authorization header, like a badly behaved S3-compatible server."""
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.seed = seed
        self.rates = dict(rates or {})
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; have {FAULT_KINDS}")
        self.max_consecutive = max_consecutive
        self.always_fail = set(always_fail)
        self.echo_authorization = echo_authorization
        self.stats = Stats()
        self._streak: Counter = Counter()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- decisions -------------------------------------------------------------------------------
    @staticmethod
    def classify(method: str, target: str) -> tuple[str, str]:
        """(operation, resource) of a path-style S3 request: resource is 'bucket/key' or 'bucket'."""
        parsed = urlparse(target)
        path = unquote(parsed.path).lstrip("/")
        bucket, _, key = path.partition("/")
        if method == "GET" and not key:
            return ("list" if "list-type" in parsed.query or not parsed.query else "other"), bucket
        op = {"GET": "get", "HEAD": "head"}.get(method, "other")
        return op, f"{bucket}/{key}" if key else bucket

    def decide(self, op: str, resource: str, key: str) -> str | None:
        """The fault to inject for this attempt, or None to forward it."""
        with self.stats.lock:
            self.stats.requests[op] += 1
            self.stats.attempts[(op, resource)] += 1
            attempt = self.stats.attempts[(op, resource)]
            if key in self.always_fail or (op == "list" and "list" in self.always_fail):
                fault = self._kind(op, key, attempt)
            else:
                rate = self.rates.get(op, 0.0)
                # Hash the key, not the bucket: tests use fresh bucket names, the faults stay the same.
                draw = self._draw(op, key, attempt)
                fault = None
                if draw < rate and self._streak[(op, resource)] < self.max_consecutive:
                    fault = self._kind(op, key, attempt)
            if fault:
                self._streak[(op, resource)] += 1
                self.stats.faults[(op, fault)] += 1
                self.stats.failed[(op, resource)] += 1
            else:
                self._streak[(op, resource)] = 0
            return fault

    def _hash(self, *parts) -> int:
        text = "\x1f".join(str(p) for p in (self.seed, *parts))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    def _draw(self, op: str, resource: str, attempt: int) -> float:
        return self._hash(op, resource, attempt) / 2.0**64

    def _kind(self, op: str, resource: str, attempt: int) -> str:
        usable = [k for k in self.kinds if k != "truncate" or op == "get"] or ["slowdown"]
        return usable[self._hash("kind", op, resource, attempt) % len(usable)]


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read stats, not logs
        pass

    def _serve(self) -> None:
        proxy = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        op, resource = proxy.classify(self.command, self.path)
        key = resource.partition("/")[2]
        signer = re.search(r"Credential=([^/,\s]+)/", self.headers.get("Authorization", ""))
        with proxy.stats.lock:
            proxy.stats.signed_by[signer.group(1) if signer else None] += 1
        fault = proxy.decide(op, resource, key)
        if fault == "drop":
            self._drop()
            return
        if fault in ("slowdown", "internal"):
            code, status, message = (
                ("SlowDown", 503, "Please reduce your request rate.")
                if fault == "slowdown"
                else ("InternalError", 500, "We encountered an internal error. Please try again.")
            )
            if proxy.echo_authorization:
                message += f" Request was signed with: {self.headers.get('Authorization', '')}"
            self._reply(status, {"Content-Type": "application/xml"}, _error_xml(code, message))
            return
        status, headers, payload = self._forward(body)
        if fault == "truncate" and len(payload) > 1:
            self._reply(status, headers, payload, send=len(payload) // 2)
            self._drop()
            return
        self._reply(status, headers, payload)

    def _forward(self, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return response.status, out, payload
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict, payload: bytes, send: int | None = None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "server", "date"):
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", headers.get("Content-Length", headers.get("content-length", "0")))
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload if send is None else payload[:send])
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _serve
