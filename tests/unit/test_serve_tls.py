"""HTTPS with certificates from files, reloaded when the files change (no restart, no dropped server),
and client certificates (mTLS) per route group."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hami.clientauth import ClientCertRule
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.scheduler.app import build_app
from hami.scheduler.cache import ClusterCache
from hami.scheduler.extender import Extender
from hami.serve import listen, serve
from hami.webhook.mutate import WebhookOptions
from tests.cluster.pki import CertificateAuthority, serving_cert, write_pair
from tests.unit.test_extender_http import free_port, gpu, node, pod


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


# ---- client certificates (mTLS) ---------------------------------------------------------------


class MtlsServer:
    """The extender and the webhook over HTTPS, each route group trusting its own client CA."""

    def __init__(self, directory: Path) -> None:
        self.server = serving_cert(directory / "server")
        self.extender_ca = CertificateAuthority.create("extender-clients")
        self.webhook_ca = CertificateAuthority.create("webhook-clients")
        self.extender_ca_file = directory / "extender-ca.crt"
        self.webhook_ca_file = directory / "webhook-ca.crt"
        self.extender_ca_file.write_bytes(self.extender_ca.cert_pem)
        self.webhook_ca_file.write_bytes(self.webhook_ca.cert_pem)
        self.directory = directory
        self.cache = ClusterCache(HamiConfig())
        self.cache.replace_nodes([node("n1", gpu("g0"))])
        self.cache.replace_pods([])
        app = build_app(
            Extender(self.cache, api=None, locker=None), CollectorRegistry(), WebhookOptions(),
            ready=lambda: True,
            extender_clients=ClientCertRule(str(self.extender_ca_file), flag="--extender-client-ca"),
            webhook_clients=ClientCertRule(str(self.webhook_ca_file), frozenset({"kube-apiserver"}),
                                           flag="--webhook-client-ca"),
        )
        self.port = free_port()
        self.stop = threading.Event()
        client_cas = [str(self.extender_ca_file), str(self.webhook_ca_file)]
        self.thread = threading.Thread(
            target=serve, args=(app, "127.0.0.1", self.port, str(self.server.cert_file), str(self.server.key_file),
                                self.stop), kwargs={"client_cas": client_cas}, daemon=True)
        self.thread.start()
        wait_until(lambda: self.request("GET", "/healthz")[0] == 200)

    def client_cert(self, ca: CertificateAuthority, name: str) -> tuple[Path, Path]:
        key, cert = ca.issue(name, client=True)
        # Named by serial number: id(cert) is reused once a certificate is freed, and then a second
        # certificate overwrote the first one's files (a rotation test then sent the new one twice).
        return write_pair(self.directory, f"client-{name}-{cert.serial_number:x}", key, cert)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
        context = ssl.create_default_context(cadata=self.server.ca_pem.decode())
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, ssl.SSLError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


FILTER = {"Pod": pod("a", 1000), "NodeNames": ["n1"]}
REVIEW = {"request": {"uid": "u1", "object": pod("w", 100)}}


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[MtlsServer]:
    server = MtlsServer(tmp_path)
    yield server
    server.close()


def test_probes_need_no_certificate_but_the_routes_do(mtls: MtlsServer) -> None:
    assert mtls.request("GET", "/healthz") == (200, "ok")
    assert mtls.request("GET", "/metrics")[0] == 200
    for path, body in (("/filter", FILTER), ("/prioritize", FILTER), ("/webhook", REVIEW),
                       ("/bind", {"PodName": "a", "PodNamespace": "t", "Node": "n1"})):
        status, text = mtls.request("POST", path, body)
        assert status == 401 and "client certificate is required" in text, (path, text)
    assert mtls.cache.holding("t/a") is None  # nothing was decided


def test_each_route_group_takes_only_its_own_clients(mtls: MtlsServer) -> None:
    scheduler = mtls.client_cert(mtls.extender_ca, "kube-scheduler")
    apiserver = mtls.client_cert(mtls.webhook_ca, "kube-apiserver")
    status, text = mtls.request("POST", "/filter", FILTER, cert=scheduler)
    assert status == 200 and json.loads(text)["NodeNames"] == ["n1"]
    status, text = mtls.request("POST", "/webhook", REVIEW, cert=apiserver)
    assert status == 200 and json.loads(text)["response"]["allowed"] is True
    # The API server's certificate cannot bind, kube-scheduler's cannot admit pods.
    status, text = mtls.request("POST", "/bind", {"PodName": "a", "PodNamespace": "t", "Node": "n1"}, cert=apiserver)
    assert status == 403 and "--extender-client-ca" in json.loads(text)["Error"]
    status, text = mtls.request("POST", "/webhook", REVIEW, cert=scheduler)
    assert status == 403 and "--webhook-client-ca" in json.loads(text)["message"]
    # The webhook's CA, but not a name it allows.
    other_name = mtls.client_cert(mtls.webhook_ca, "someone-else")
    status, text = mtls.request("POST", "/webhook", REVIEW, cert=other_name)
    assert status == 403 and "'someone-else' is not allowed" in text


def test_a_certificate_of_another_ca_is_refused_by_tls(mtls: MtlsServer) -> None:
    stranger = mtls.client_cert(CertificateAuthority.create("elsewhere"), "kube-scheduler")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        mtls.request("POST", "/filter", FILTER, cert=stranger)
    assert mtls.cache.holding("t/a") is None


def test_client_ca_files_are_reloaded(mtls: MtlsServer) -> None:
    old = mtls.client_cert(mtls.extender_ca, "kube-scheduler")
    assert mtls.request("POST", "/filter", FILTER, cert=old)[0] == 200
    rotated = CertificateAuthority.create("extender-clients-2")
    new = mtls.client_cert(rotated, "kube-scheduler")
    mtls.extender_ca_file.write_bytes(rotated.cert_pem)
    # The new CA is accepted once the file is read again (the handshake's trust store grows) ...
    wait_until(lambda: mtls.request("POST", "/filter", FILTER, cert=new)[0] == 200)
    # ... and the CA that left the file is refused by the route.
    status, text = mtls.request("POST", "/filter", FILTER, cert=old)
    assert status == 403 and "not issued by a CA of --extender-client-ca" in text


def test_a_missing_or_empty_client_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HamiError, match="client CA file .*missing.crt"):
        ClientCertRule(str(tmp_path / "missing.crt"))
    (tmp_path / "empty.crt").write_text("not a certificate\n")
    with pytest.raises(HamiError, match="holds no PEM certificate"):
        ClientCertRule(str(tmp_path / "empty.crt"))


def test_listening_socket_is_tcp_so_that_answers_are_not_delayed() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; with proto 0 every
    kept-alive call waited ~40 ms for a delayed ACK (Nagle), which bench/http showed."""
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


@pytest.mark.parametrize("command", ["scheduler", "webhook"])
def test_client_certificate_flags_fail_early_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          command: str) -> None:
    from hami.cli import main

    tls = serving_cert(tmp_path)
    https = ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file), "--port", str(free_port())]
    ca = tmp_path / "server-ca.crt"
    cases = [
        (["--webhook-client-ca", str(tmp_path / "missing.crt"), *https], "missing.crt: No such file"),
        (["--webhook-allowed-names", "kube-apiserver", *https], "--webhook-allowed-names needs --webhook-client-ca"),
        (["--webhook-client-ca", str(ca), "--port", str(free_port())], "client certificates need HTTPS"),
        (["--max-request-bytes", "0", *https], "--max-request-bytes must be at least 1"),
    ]
    for args, message in cases:
        assert main([command, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err
