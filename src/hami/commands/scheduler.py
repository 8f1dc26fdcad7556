"""`hami scheduler`: the kube-scheduler extender (with the webhook, like HAMi) as one process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from hami.annotations.selectors import NODE_POLICIES, Policy
from hami.errors import HamiError

if TYPE_CHECKING:
    from hami.clientauth import ClientCertRule
    from hami.scheduler.app import RequestLimits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    parser.add_argument("--config", metavar="FILE", help="HAMi device config (device-config.yaml shape)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=8443, help="extender and webhook port (default 8443)")
    parser.add_argument("--tls-cert", help="certificate file: serve HTTPS (reloaded when it changes)")
    parser.add_argument("--tls-key", help="key file for --tls-cert")
    add_client_auth_arguments(parser, extender=True)
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="also serve /metrics on this port (HAMi uses 9395); 0 = only on --port")
    parser.add_argument("--scheduler-name", default="hami-scheduler", help="schedulerName the webhook sets")
    parser.add_argument("--no-overwrite-default-scheduler", action="store_true",
                        help="leave pods that name default-scheduler alone")
    parser.add_argument("--no-webhook", action="store_true", help="do not serve /webhook")
    parser.add_argument("--node-policy", choices=[p.value for p in NODE_POLICIES], help="default node policy")
    parser.add_argument("--gpu-policy", choices=[p.value for p in Policy], help="default GPU policy")
    parser.add_argument("--only-best-node", action="store_true",
                        help="/filter returns only our chosen node, as HAMi does (default: every node that fits)")
    parser.add_argument("--hold-lock-until-allocated", action="store_true",
                        help="HAMi's node lock on every node, held from bind until the device plugin releases it "
                             "(default: only on nodes whose device plugin cannot ask kubelet which pod it starts)")
    parser.add_argument("--lock-stale-seconds", type=float, default=60.0,
                        help="a node lock older than this is taken over")
    parser.add_argument("--unbound-decision-ttl", type=int, default=300,
                        help="seconds a decision on a pod that is never bound keeps its devices (default 300)")
    parser.add_argument("--no-preemption", action="store_true",
                        help="never evict lower-priority pods to free devices (see docs/preemption.md)")
    parser.add_argument("--preemption-hold-seconds", type=float, default=60.0,
                        help="seconds the devices freed for a preempting pod wait for it after its victims are "
                             "gone (default 60)")
    parser.add_argument("--leader-elect", action="store_true", help="run for leadership on a Lease (for 2 replicas)")
    parser.add_argument("--lease-namespace", default="kube-system")
    parser.add_argument("--lease-name", default="hami-scheduler")
    parser.add_argument("--identity", default=None, help="this replica's name in the Lease (default: hostname-pid)")
    parser.add_argument("--lease-duration", type=int, default=15, metavar="SECONDS",
                        help="how long the other replica waits, by its own clock, after the lease last changed "
                             "before it takes over (default 15)")
    parser.add_argument("--lease-renew-deadline", type=float, default=10.0, metavar="SECONDS",
                        help="the leader stops leading this long after it sent its last successful renewal "
                             "(default 10; shorter than --lease-duration)")
    parser.add_argument("--lease-retry-period", type=float, default=2.0, metavar="SECONDS",
                        help="how often the lease is renewed or tried (default 2)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_client_auth_arguments(parser: argparse.ArgumentParser, extender: bool) -> None:
    """Client certificates (mTLS) and request limits; `hami webhook` shares the webhook's half."""
    names = "comma-separated subject common names; only these may call (default: any the CA issued)"
    if extender:
        parser.add_argument("--extender-client-ca", metavar="FILE",
                            help="/filter, /prioritize and /bind need a client certificate issued by a CA "
                                 "in this PEM file (kube-scheduler's extender tlsConfig certFile); re-read on change")
        parser.add_argument("--extender-allowed-names", metavar="NAMES", default="", help=names)
    parser.add_argument("--webhook-client-ca", metavar="FILE",
                        help="/webhook needs a client certificate issued by a CA in this PEM file (the one "
                             "kube-apiserver presents per its AdmissionConfiguration); re-read on change")
    parser.add_argument("--webhook-allowed-names", metavar="NAMES", default="", help=names)
    parser.add_argument("--max-request-bytes", type=int, default=64 * 1024 * 1024,
                        help="larger request bodies get 413 (default 64 MiB)")


def client_rule(ca_file: str | None, allowed_names: str, flag: str) -> ClientCertRule | None:
    from hami.clientauth import ClientCertRule

    if not ca_file:
        if allowed_names:
            raise HamiError(f"{flag.replace('client-ca', 'allowed-names')} needs {flag}")
        return None
    return ClientCertRule(ca_file, frozenset(n.strip() for n in allowed_names.split(",") if n.strip()), flag)


def edge_settings(args: argparse.Namespace) -> tuple[ClientCertRule | None, ClientCertRule | None, RequestLimits]:
    """Who may call the extender routes and the webhook, and the request limits; checked before
    anything starts, so that a wrong flag is a one-line error."""
    from hami.scheduler.app import RequestLimits

    extender = client_rule(getattr(args, "extender_client_ca", None), getattr(args, "extender_allowed_names", ""),
                           "--extender-client-ca")
    webhook = client_rule(args.webhook_client_ca, args.webhook_allowed_names, "--webhook-client-ca")
    if (extender or webhook) and not args.tls_cert:
        raise HamiError("client certificates need HTTPS: give --tls-cert and --tls-key too")
    if args.max_request_bytes < 1:
        raise HamiError("--max-request-bytes must be at least 1")
    return extender, webhook, RequestLimits(max_body_bytes=args.max_request_bytes)


def run(args: argparse.Namespace) -> int:
    from lightkube.resources.core_v1 import Node, Pod, ResourceQuota
    from prometheus_client import CollectorRegistry

    from hami.allocator import tune_allocator
    from hami.config import load_config
    from hami.scheduler.app import build_app
    from hami.scheduler.cache import ClusterCache
    from hami.scheduler.engine import PolicyDefaults
    from hami.scheduler.extender import Extender, ExtenderOptions
    from hami.scheduler.handshake import HandshakeKeeper
    from hami.scheduler.informer import AsyncInformer, Informer
    from hami.scheduler.kube import AsyncKubeApi, KubeApi, make_async_client, make_client
    from hami.scheduler.leader import LeaderElector
    from hami.scheduler.metrics import SchedulerCollector
    from hami.scheduler.nodelock import NodeLocker
    from hami.scheduler.preemption import PreemptionOptions, Preemptor
    from hami.scheduler.quota import QuotaBook
    from hami.scheduler.quotawatch import QuotaWatch
    from hami.scheduler.requeue import RequeueCollector, Requeuer
    from hami.scheduler.resize import Resizer
    from hami.serve import listen, serve
    from hami.webhook.mutate import WebhookOptions

    tune_allocator()  # the engine's per-decision arrays stay on the heap (hami.allocator)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per API call otherwise
    # /filter, binds, decision writes and the informers share the event loop; the threads left
    # (leader election, handshake, expiry, certificate reload) wake rarely. A 1 ms switch
    # interval (not Python's 5 ms) bounds the loop's wait for the GIL when one of them runs.
    sys.setswitchinterval(0.001)
    if args.leader_elect and not 0 < args.lease_renew_deadline < args.lease_duration:
        raise HamiError("--lease-renew-deadline must be positive and shorter than --lease-duration")
    config = load_config(args.config)
    extender_clients, webhook_clients, limits = edge_settings(args)
    client_cas = [r.ca_file for r in (extender_clients, webhook_clients) if r is not None]
    sock = listen(args.host, args.port)  # a taken port fails now, before the informers start
    metrics_sock = listen(args.host, args.metrics_port) if args.metrics_port else None
    client = make_client(args.kubeconfig)  # for the threads: handshake, resizer
    api = KubeApi(client)
    async_client = make_async_client(args.kubeconfig)  # for the event loop: informers, binds, writes
    async_api = AsyncKubeApi(async_client)
    cache = ClusterCache(config)
    defaults = PolicyDefaults(
        node_policy=Policy(args.node_policy) if args.node_policy else config.scheduler.node_policy,
        gpu_policy=Policy(args.gpu_policy) if args.gpu_policy else config.scheduler.gpu_policy,
    )
    extender = Extender(cache, async_api, NodeLocker(async_api, stale_after=args.lock_stale_seconds),
                        ExtenderOptions(defaults=defaults, only_best_node=args.only_best_node,
                                        hold_lock_until_allocated=args.hold_lock_until_allocated))
    # GPU quotas count what decisions hold (a preemption's hold is not a decision).
    quota = QuotaBook(cache.vendors)
    cache.quota = quota
    cache.listeners.append(quota.on_holding)
    preemptor = Preemptor(cache, api, extender.decide_lock, extender.is_leader,
                          PreemptionOptions(defaults=defaults, hold_seconds=args.preemption_hold_seconds), quota)
    if not args.no_preemption:
        extender.preemptor = preemptor
    # Refused pods are asked for again when room appears that kube-scheduler may not retry them for.
    requeuer = Requeuer(cache, api, extender.decide_lock, extender.is_leader, defaults)
    extender.requeuer = requeuer
    requeuer.listen(quota)
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(cache, quota))
    registry.register(RequeueCollector(requeuer))
    stop = threading.Event()

    def start(target: object, name: str) -> None:
        threading.Thread(target=target, daemon=True, name=name).start()  # type: ignore[arg-type]

    # Live resizing (hami.io/vgpu-resize) sees every pod update after the cache has.
    resizer = Resizer(cache, api, extender.decide_lock, extender.is_leader)
    start(lambda: resizer.run(stop), "resizer")
    informers = [
        AsyncInformer(async_client, Node, cache.replace_nodes, cache.upsert_node,
                      lambda n: cache.delete_node(n["metadata"]["name"])),
        AsyncInformer(async_client, Pod, resizer.replace_hook(preemptor.replace_hook(cache.replace_pods)),
                      resizer.upsert_hook(preemptor.upsert_hook(cache.upsert_pod)),
                      preemptor.delete_hook(cache.delete_pod)),
    ]
    quotas = QuotaWatch(quota, api, extender.is_leader)
    start(Informer(client, ResourceQuota, quotas.replace, quotas.upsert, quotas.delete, stop).run,
          "informer-resourcequotas")
    if not args.no_preemption:
        start(lambda: preemptor.run(stop), "preemption")
    start(lambda: requeuer.run(stop), "requeue")
    if args.leader_elect:
        extender.is_leader.clear()
        identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
        # Its own client, whose calls time out well within the renew deadline.
        elector = LeaderElector(make_client(args.kubeconfig, timeout=args.lease_renew_deadline / 2),
                                args.lease_namespace, args.lease_name, identity, extender.is_leader,
                                lease_seconds=args.lease_duration, renew_deadline=args.lease_renew_deadline,
                                retry_period=args.lease_retry_period)
        start(lambda: elector.run(stop), "leader-election")
    def expire() -> None:
        while not stop.wait(15):
            for key in cache.expire_unbound(int(time.time()), args.unbound_decision_ttl):
                logging.getLogger("hami").info("pod %s: decision expired unbound; its devices are free", key)

    start(expire, "expire-unbound")
    start(lambda: HandshakeKeeper(api, cache, extender.is_leader).run(stop), "handshake")

    def ready() -> bool:
        return cache.ready and extender.is_leader.is_set()

    if metrics_sock is not None:  # plain HTTP for Prometheus, as HAMi's :9395
        metrics_app = build_app(None, registry, None, ready=ready, limits=limits)
        start(lambda: serve(metrics_app, args.host, args.metrics_port, None, None, stop, sock=metrics_sock),
              "metrics-http")

    webhook = None if args.no_webhook else WebhookOptions(
        scheduler_name=args.scheduler_name, overwrite_default_scheduler=not args.no_overwrite_default_scheduler,
        quota=quota)
    app = build_app(extender, registry, webhook, ready=ready, limits=limits,
                    extender_clients=extender_clients, webhook_clients=webhook_clients,
                    background=[informer.run for informer in informers])
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.getLogger("hami").info("serving on %s:%d (%s%s)", args.host, args.port,
                                   "https" if args.tls_cert else "http", ", client certificates" if client_cas else "")
    serve(app, args.host, args.port, args.tls_cert, args.tls_key, stop, client_cas=client_cas, sock=sock)
    stop.set()
    return 0
