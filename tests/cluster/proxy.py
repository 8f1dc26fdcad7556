"""A TCP proxy in front of a server (the API server, say) that a test can freeze: connections
stay open but no byte moves either way, as when a network path or a server hangs. TLS passes
through untouched, so clients keep verifying the real server's certificate.

With a function as its target, it picks the server for each new connection, as a Service
routes to the replicas that report ready.

    with TcpProxy("127.0.0.1", cp.apiserver_port) as proxy:
        kubeconfig = cp.kubeconfig_through(proxy.port, path)
        proxy.freeze()   # calls through the proxy hang from now on
        proxy.thaw()     # and go on
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

Target = tuple[str, int]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int = 0,
                 pick: Callable[[], Target | None] | None = None) -> None:
        """Forward to target_host:target_port, or to what `pick` returns for each connection
        (None: refuse it, as a Service without ready endpoints does)."""
        self.pick = pick or (lambda: (target_host, target_port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=f"tcp-proxy-{self.port}").start()

    def freeze(self) -> None:
        """From now on, nothing is forwarded (data already sent on stays sent)."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                target = self.pick()
                if target is None:
                    raise OSError("no ready backend")
                upstream = socket.create_connection(target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._guard:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                if self._closed.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._guard:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
