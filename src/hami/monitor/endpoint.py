"""`hami monitor`'s HTTP endpoint: Prometheus metrics, and /healthz and /readyz for kubelet.

/healthz fails once the monitor loop has not finished a pass for STALL_AFTER_S (or 5 scan
intervals, if longer): a loop stuck in a driver call, or failing on every pass, no longer
drives task priority, and kubelet's liveness probe restarts the container. /readyz waits for the
first list of the node's pods and the first pass. Any other path answers the metrics, as
prometheus_client's own server does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from hami.monitor.node import NodeMonitor
from hami.monitor.pods import PodIndex

STALL_AFTER_S = 30.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Health:
    """Whether the monitor loop runs and has what it needs; each answer None or why not."""

    def __init__(self, monitor: NodeMonitor, pods: PodIndex, clock: Callable[[], float] = time.monotonic):
        self.monitor = monitor
        self.pods = pods
        self.clock = clock
        self.started = clock()
        self.stall_after = max(STALL_AFTER_S, 5 * monitor.options.scan_interval_s)

    def live(self) -> str | None:
        last = self.monitor.last_pass
        quiet = self.clock() - (self.started if last is None else last)
        if quiet <= self.stall_after:
            return None
        return f"the monitor loop has not finished a pass for {quiet:.0f} s (more than {self.stall_after:.0f} s)"

    def ready(self) -> str | None:
        if not self.pods.synced:
            return "waiting for the first list of this node's pods"
        if self.monitor.last_pass is None:
            return "waiting for the monitor's first pass"
        return None


def app(registry: CollectorRegistry, health: Health) -> WsgiApp:
    metrics = make_wsgi_app(registry)
    checks = {"/healthz": health.live, "/readyz": health.ready}

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        check = checks.get(str(environ.get("PATH_INFO") or ""))
        if check is None:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        problem = check()
        body = b"ok\n" if problem is None else f"{problem}\n".encode()
        start_response("200 OK" if problem is None else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return serve


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes every few seconds are not worth a log line each."""


def start(host: str, port: int, wsgi: WsgiApp) -> ThreadingWSGIServer:
    """Serve `wsgi` on host:port (IPv6 too) from a daemon thread; OSError if the port is taken."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(host, port, wsgi, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
    return server
