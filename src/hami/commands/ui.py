"""`hami ui`: the web UI, over HTTPS, showing each viewer what their own Kubernetes identity allows."""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path

from hami.annotations.selectors import Policy
from hami.errors import HamiError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig for the UI's own watch of nodes and pods "
                        "(default: in-cluster service account)")
    parser.add_argument("--config", metavar="FILE", help="HAMi device config (device-config.yaml shape)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443)")
    parser.add_argument("--tls-cert", help="certificate file (default: a self-signed one made at start)")
    parser.add_argument("--tls-key", help="key file for --tls-cert")
    parser.add_argument("--proxy-client-ca", metavar="FILE",
                        help="behind an authenticating proxy: accept only clients with a certificate of this CA, "
                        "and take the viewer from their --user-header and --group-header")
    parser.add_argument("--user-header", default="X-Remote-User", help="the proxy's user header")
    parser.add_argument("--group-header", default="X-Remote-Group", help="the proxy's group header (repeated)")
    parser.add_argument("--node-policy", choices=[p.value for p in Policy], help="default node policy")
    parser.add_argument("--gpu-policy", choices=[p.value for p in Policy], help="default GPU policy")
    parser.add_argument("--prometheus", metavar="URL",
                        help="Prometheus that scrapes hami monitor: live memory and utilisation next to allocation")
    parser.add_argument("--prometheus-ca", metavar="FILE", help="CA of Prometheus' HTTPS certificate")
    parser.add_argument("--prometheus-token-file", metavar="FILE",
                        help="bearer token for Prometheus, read again for each query")
    parser.add_argument("--prometheus-interval", type=float, default=10.0, metavar="SECONDS",
                        help="how often to ask Prometheus (default 10)")
    parser.add_argument("--report", action="append", default=[], metavar="FILE",
                        help="a hami simulate report.json to offer on the Simulator page (repeatable)")
    parser.add_argument("--access-ttl", type=float, default=30.0,
                        help="seconds to remember the API server's answer about a viewer (default 30)")
    parser.add_argument("--session-key-file", metavar="FILE",
                        help="a secret of at least 32 bytes that seals the login cookie, so that sessions outlive "
                             "a restart and work across replicas (default: a key made at start)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from lightkube.resources.core_v1 import Node, Pod

    from hami.config import load_config
    from hami.scheduler.engine import PolicyDefaults
    from hami.scheduler.informer import Informer
    from hami.scheduler.kube import make_client
    from hami.serve import watch_certificates
    from hami.ui.access import Endpoint, Reviewer
    from hami.ui.app import UiOptions, build_app
    from hami.ui.prometheus import Prometheus
    from hami.ui.session import session_key
    from hami.ui.store import UiStore
    from hami.ui.tls import self_signed

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    log = logging.getLogger("hami")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise HamiError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key, args.proxy_client_ca, args.prometheus_ca, args.prometheus_token_file,
                 *args.report):
        if path is not None and not Path(path).is_file():
            raise HamiError(f"file {path} not found")
    sealing = {} if args.session_key_file is None else {"session_key": session_key(args.session_key_file)}
    reports: dict[str, Path] = {}
    for path in map(Path, args.report):
        name = path.parent.name + "/" + path.name if path.parent.name else path.name
        reports[name] = path
    config = load_config(args.config)
    defaults = PolicyDefaults(
        node_policy=Policy(args.node_policy) if args.node_policy else config.scheduler.node_policy,
        gpu_policy=Policy(args.gpu_policy) if args.gpu_policy else config.scheduler.gpu_policy,
    )
    try:
        client = make_client(args.kubeconfig)
        endpoint = Endpoint.from_kubeconfig(args.kubeconfig)
    except Exception as exc:  # noqa: BLE001 - a bad kubeconfig or no service account: one line
        raise HamiError(f"cannot read the cluster's address and credentials: {exc}") from None
    store = UiStore(config)
    reviewer = Reviewer(endpoint, client, ttl=args.access_ttl)
    stop = threading.Event()
    prometheus = None
    if args.prometheus:
        prometheus = Prometheus(args.prometheus, ca_file=args.prometheus_ca, token_file=args.prometheus_token_file,
                                interval=args.prometheus_interval)
        threading.Thread(target=prometheus.run, args=(stop,), daemon=True, name="prometheus").start()
    app = build_app(store, reviewer, UiOptions(defaults=defaults, proxy_headers=args.proxy_client_ca is not None,
                                               user_header=args.user_header, group_header=args.group_header,
                                               reports=reports, prometheus=prometheus, **sealing))
    informers = {
        "nodes": Informer(client, Node, store.replace_nodes, store.upsert_node, store.delete_node, stop),
        "pods": Informer(client, Pod, store.replace_pods, store.upsert_pod, store.delete_pod, stop),
    }
    for name, informer in informers.items():
        threading.Thread(target=informer.run, daemon=True, name=f"informer-{name}").start()

    cert, key = args.tls_cert, args.tls_key
    if cert is None:
        cert_path, key_path = self_signed()
        cert, key = str(cert_path), str(key_path)
        log.info("no --tls-cert: serving a self-signed certificate (%s)", cert)
    config_kwargs: dict[str, object] = {}
    if args.proxy_client_ca:
        config_kwargs = {"ssl_ca_certs": args.proxy_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    server_config = uvicorn.Config(app, host=args.host, port=args.port, ssl_certfile=cert, ssl_keyfile=key,
                                   log_level="warning", access_log=False, loop="asyncio", http="h11",
                                   **config_kwargs)  # type: ignore[arg-type]
    server_config.load()
    server = uvicorn.Server(server_config)
    threading.Thread(target=watch_certificates, args=(server_config, cert, key, stop), daemon=True,
                     name="tls-reload").start()

    def stopper() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=stopper, daemon=True, name="http-stop").start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("hami ui on https://%s:%d%s", args.host, args.port,
             " (behind an authenticating proxy)" if args.proxy_client_ca else "")
    try:
        server.run()
    finally:
        stop.set()
        reviewer.close()
    return 0
