"""Run an ASGI app with uvicorn over HTTP or HTTPS; certificates are reloaded when their files change."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import uvicorn

from hami.errors import HamiError

log = logging.getLogger(__name__)


def _mtimes(*paths: str) -> tuple[float, ...]:
    return tuple(os.stat(p).st_mtime_ns for p in paths)


def watch_certificates(config: uvicorn.Config, cert: str, key: str, stop: threading.Event,
                       interval: float = 2.0) -> None:
    """Load a changed certificate into the live SSL context: new connections get it, none is dropped."""
    seen = _mtimes(cert, key)
    while not stop.wait(interval):
        try:
            current = _mtimes(cert, key)
            if current != seen and config.ssl is not None:
                config.ssl.load_cert_chain(cert, key)
                seen = current
                log.info("reloaded TLS certificate %s", cert)
        except (OSError, ValueError) as exc:  # a half-written pair: try again next round
            log.warning("TLS certificate reload failed: %s", exc)


def serve(app: Any, host: str, port: int, cert: str | None, key: str | None, stop: threading.Event) -> None:
    if (cert is None) != (key is None):
        raise HamiError("--tls-cert and --tls-key go together")
    for path in (cert, key):
        if path is not None and not Path(path).is_file():
            raise HamiError(f"TLS file {path} not found")
    # The standard library's event loop and TLS and the h11 parser, named so that what else is
    # installed does not change them (uvloop and httptools bought no measurable speed here).
    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=cert, ssl_keyfile=key, log_level="warning",
                            access_log=False, loop="asyncio", http="h11")
    server = uvicorn.Server(config)
    if cert and key:
        config.load()
        threading.Thread(target=watch_certificates, args=(config, cert, key, stop), daemon=True,
                         name="tls-reload").start()

    def stopper() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=stopper, daemon=True, name="http-stop").start()
    server.run()
