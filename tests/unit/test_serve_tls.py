"""HTTPS with certificates from files, reloaded when the files change (no restart, no dropped server)."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.request
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hami.serve import serve
from tests.cluster.pki import serving_cert
from tests.unit.test_extender_http import free_port


def fetch(port: int, ca_pem: bytes) -> bytes:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=5, context=context) as response:
        return bytes(response.read())


def test_certificate_is_reloaded_when_its_files_change(tmp_path: Path) -> None:
    first = serving_cert(tmp_path / "first")
    second = serving_cert(tmp_path / "second")
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    live_cert.write_bytes(first.cert_file.read_bytes())
    live_key.write_bytes(first.key_file.read_bytes())

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(app, "127.0.0.1", port, str(live_cert), str(live_key), stop), daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert fetch(port, first.ca_pem) == b"hello"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # Rotate: new key first, then the certificate (as cert-manager writes a Secret's files).
        live_key.write_bytes(second.key_file.read_bytes())
        live_cert.write_bytes(second.cert_file.read_bytes())
        deadline = time.monotonic() + 20
        while True:
            try:
                assert fetch(port, second.ca_pem) == b"hello"
                break
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # The old certificate is no longer served.
        try:
            fetch(port, first.ca_pem)
        except (OSError, ssl.SSLError) as exc:
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
        else:
            raise AssertionError("the old certificate is still served")
    finally:
        stop.set()
        thread.join(timeout=10)
