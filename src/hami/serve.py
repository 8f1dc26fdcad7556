"""Run an ASGI app with uvicorn over HTTP or HTTPS; certificates are reloaded when their files change.

With client CA files, the TLS layer asks every client for a certificate but does not insist:
a certificate that is presented must chain to one of those CAs (else the handshake fails),
and a client without one still connects, so that probes and Prometheus reach /healthz and
/metrics. Routes that need a certificate check it themselves (`hami.clientauth`), from the
ASGI TLS extension that `HamiH11Protocol` puts into each request's scope.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hami.errors import HamiError

log = logging.getLogger(__name__)


class HamiH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with these additions:

    - the client's certificate in the shape of the ASGI TLS extension
      (`scope["extensions"]["tls"]["client_cert_chain"]`: PEM, the client's own certificate;
      Python's ssl module gives only that one);
    - a request head that has not arrived whole `head_timeout` seconds after its first byte gets
      408 and the connection is closed (uvicorn would wait for it forever); a new connection that
      sends nothing is closed after that time without an answer;
    - a malformed request in the middle of a request gets uvicorn's 400 and nothing else.
    """

    head_timeout = 30.0

    def connection_made(self, transport: Any) -> None:  # asyncio.Transport
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout, self._head_late)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        der = ssl_object.getpeercert(binary_form=True)
        tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [], "server_cert": None,
               "client_cert_name": None, "client_cert_error": None, "tls_version": None, "cipher_suite": None}
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await app(scope, receive, send)

        self.app = with_tls

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        partial_head = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if not partial_head:
            self._stop_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed request, also when it comes in the middle of one (a bad
        chunk): the app, still reading, must then not answer a second time."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            super().send_400_response(msg)
        else:  # our answer to this request is already out: nothing more can be said
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE or answering:
            return
        if self.conn.trailing_data[0]:
            reason = f"request head not received within {self.head_timeout:g} s".encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(reason), reason))
        self.transport.close()


def client_certificate(scope: Mapping[str, Any]) -> str | None:
    """The PEM certificate the client presented on this request's connection, if any."""
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    return str(chain[0]) if chain else None


def _mtimes(*paths: str) -> tuple[float, ...]:
    return tuple(os.stat(p).st_mtime_ns for p in paths)


def server_context(cert: str, key: str, client_cas: Sequence[str] = ()) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_cas:
        context.verify_mode = ssl.CERT_OPTIONAL
        for path in client_cas:
            context.load_verify_locations(cafile=path)
    return context


def watch_certificates(config: uvicorn.Config, cert: str, key: str, stop: threading.Event,
                       interval: float = 2.0, client_cas: Sequence[str] = ()) -> None:
    """Load a changed certificate into the live SSL context: new connections get it, none is dropped.
    A changed client CA file adds its CAs to those the handshake accepts; one removed from the
    file is refused by the routes' own check (OpenSSL's store can only grow)."""
    seen = _mtimes(cert, key)
    seen_cas = _mtimes(*client_cas)
    while not stop.wait(interval):
        try:
            current = _mtimes(cert, key)
            if current != seen and config.ssl is not None:
                config.ssl.load_cert_chain(cert, key)
                seen = current
                log.info("reloaded TLS certificate %s", cert)
            current_cas = _mtimes(*client_cas)
            if current_cas != seen_cas and config.ssl is not None:
                for path in client_cas:
                    config.ssl.load_verify_locations(cafile=path)
                seen_cas = current_cas
                log.info("reloaded client CA files %s", ", ".join(client_cas))
        except (OSError, ValueError) as exc:  # a half-written pair: try again next round
            log.warning("TLS certificate reload failed: %s", exc)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a HamiError that says why not (a port in use, say)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP, so asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HamiError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def serve(app: Any, host: str, port: int, cert: str | None, key: str | None, stop: threading.Event,
          client_cas: Sequence[str] = (), sock: socket.socket | None = None, head_timeout: float = 30.0) -> None:
    """Serve until `stop` is set. `client_cas`: PEM files of the CAs whose client certificates
    the TLS layer accepts (needs `cert`). `sock`: a socket from `listen` (else host:port is bound here).
    `head_timeout`: seconds a request head may take (see HamiH11Protocol)."""
    if (cert is None) != (key is None):
        raise HamiError("--tls-cert and --tls-key go together")
    if client_cas and cert is None:
        raise HamiError("client certificates need HTTPS: give --tls-cert and --tls-key too")
    for path in (cert, key, *client_cas):
        if path is not None and not Path(path).is_file():
            raise HamiError(f"TLS file {path} not found")
    factory: Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = None
    if cert and key:
        try:
            context = server_context(cert, key, client_cas)
        except (OSError, ssl.SSLError) as exc:
            raise HamiError(f"cannot load the TLS files: {exc}") from None
        factory = lambda config, default: context  # noqa: E731 - uvicorn calls it once, at load
    sock = sock or listen(host, port)
    # The standard library's event loop and TLS and the h11 parser, named so that what else is
    # installed does not change them (uvloop and httptools bought no measurable speed here).
    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=cert, ssl_keyfile=key, log_level="warning",
                            access_log=False, loop="asyncio",
                            http=type("HamiH11", (HamiH11Protocol,), {"head_timeout": head_timeout}),
                            ssl_context_factory=factory)
    server = uvicorn.Server(config)
    if cert and key:
        config.load()
        threading.Thread(target=watch_certificates, args=(config, cert, key, stop),
                         kwargs={"client_cas": tuple(client_cas)}, daemon=True, name="tls-reload").start()

    def stopper() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=stopper, daemon=True, name="http-stop").start()
    server.run(sockets=[sock])
