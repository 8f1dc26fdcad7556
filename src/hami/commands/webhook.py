"""`hami webhook`: the mutating admission webhook alone (the scheduler process also serves it)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from hami.commands.scheduler import add_client_auth_arguments, edge_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="HAMi device config (device-config.yaml shape)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--tls-cert", help="certificate file (reloaded when it changes); without it, plain HTTP")
    parser.add_argument("--tls-key", help="key file for --tls-cert")
    add_client_auth_arguments(parser, extender=False)
    parser.add_argument("--scheduler-name", default="hami-scheduler")
    parser.add_argument("--no-overwrite-default-scheduler", action="store_true")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from hami.config import load_config
    from hami.scheduler.app import build_app
    from hami.serve import serve
    from hami.webhook.mutate import WebhookOptions

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    _, clients, limits = edge_settings(args)
    options = WebhookOptions(args.scheduler_name, not args.no_overwrite_default_scheduler)
    app = build_app(None, None, options, ready=lambda: True, vendors=config,
                    limits=limits, webhook_clients=clients)
    serve(app, args.host, args.port, args.tls_cert, args.tls_key, threading.Event(),
          client_cas=[clients.ca_file] if clients else [])
    return 0
