"""Small JSON-over-HTTP(S) servers for tests: stand-in extenders and webhooks.

    def handle(path: str, body: Any) -> tuple[int, Any]: ...
    with JsonServer(handle) as srv:                       # http://127.0.0.1:<port>
        ...srv.url..., srv.requests                       # [(path, body), ...]
    with JsonServer(handle, tls=pki.serving_cert(d)) as srv:   # https, for webhooks
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .pki import ServingCert

Handler = Callable[[str, Any], tuple[int, Any]]


class JsonServer:
    """Serves POSTed JSON on 127.0.0.1 from a background thread and records every request.

    The handler gets the request path without its query string, and the decoded body;
    it returns (HTTP status, JSON-able reply). `requests` lists (path, body) in order.
    """

    def __init__(self, handler: Handler, tls: ServingCert | None = None, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.requests: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        outer = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                # The apiserver calls webhooks as <path>?timeout=10s: match on the path alone.
                path = urlsplit(self.path).path
                with outer._changed:
                    outer.requests.append((path, body))
                    outer._changed.notify_all()
                try:
                    status, reply = outer.handler(path, body)
                except Exception as e:  # noqa: BLE001 - reported to the caller as HTTP 500
                    status, reply = 500, {"error": f"{type(e).__name__}: {e}"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
                return

        self.server = ThreadingHTTPServer((host, 0), _RequestHandler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port = int(self.server.server_address[1])
        self.url = f"{scheme}://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"json-server-{self.port}", daemon=True)

    def start(self) -> JsonServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> JsonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, path: str) -> list[Any]:
        """Bodies of the requests received on `path` so far."""
        with self._lock:
            return [body for p, body in self.requests if p == path]

    def wait_for_request(self, path: str, timeout: float = 30) -> Any:
        """Waits for the first request on `path`; returns its body."""
        with self._changed:
            ok = self._changed.wait_for(lambda: any(p == path for p, _ in self.requests), timeout)
            if not ok:
                raise TimeoutError(f"no request on {path} within {timeout:.0f}s (got {[p for p, _ in self.requests]})")
            return next(body for p, body in self.requests if p == path)
