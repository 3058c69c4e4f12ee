"""The REST catalog (S3 Tables, Polaris, Nessie, Lakekeeper) against a local HTTP server that
answers as one does and records what it was sent: the URL, the token from the environment, and
a server that is down as the transient exit code."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lookalike.errors import TransientError
from lookalike.iceberg.catalogs import CatalogSpec, open_catalog
from tests.support.net import free_port

ANSWERS = {
    "/v1/config": {"defaults": {}, "overrides": {}},
    "/v1/namespaces": {"namespaces": [["lookalike"]]},
}


@pytest.fixture
def rest_server():
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            seen.append({"path": path, "authorization": self.headers.get("Authorization")})
            body = json.dumps(ANSWERS.get(path, {"error": {"message": "no", "type": "NotFound", "code": 404}}))
            self.send_response(200 if path in ANSWERS else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_rest_catalog_is_asked_with_the_token_from_the_environment(rest_server, monkeypatch):
    url, seen = rest_server
    monkeypatch.setenv("LOOKALIKE_CATALOG_TOKEN", "t0ken-from-env")
    spec = CatalogSpec(type="rest", uri=url)
    catalog = open_catalog(spec)
    assert catalog.list_namespaces() == [("lookalike",)]
    assert [r["path"] for r in seen] == ["/v1/config", "/v1/namespaces"]
    assert all(r["authorization"] == "Bearer t0ken-from-env" for r in seen)
    assert "t0ken" not in repr(spec)  # a spec in a log never shows a secret


def test_a_rest_catalog_that_is_down_is_transient():
    spec = CatalogSpec(type="rest", uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError) as down:
        open_catalog(spec)
    assert down.value.exit_code == 75 and str(down.value).startswith(
        "cannot open the rest catalog at http://127.0.0.1:"
    )
