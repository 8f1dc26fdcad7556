"""`hami monitor`: the per-node monitor (HAMi's vGPUmonitor): metrics, task priority, resizes, cleanup.

HAMi's interface: env HOOK_PATH (the containers' caches are under $HOOK_PATH/containers),
NODE_NAME, optional HAMI_RESYNC_INTERVAL (a Go duration, default 5m), and the flags
--metrics-bind-address (default :9394) and --legacy-metrics; kubeconfig or in-cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from hami.errors import HamiError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (`5m`, `90s`, `1h30m`, `250ms`); a bare number is seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise HamiError(f"{text!r} is not a duration (e.g. 5m, 90s, 1h30m)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def parse_bind_address(text: str) -> tuple[str, int]:
    """`:9394`, `0.0.0.0:9394`, `[::]:9394` -> (host, port); an empty host means all addresses."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise HamiError(f"--metrics-bind-address {text!r}: expected [host]:port, e.g. :9394")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-bind-address", default=":9394", metavar="[HOST]:PORT",
                        help="where /metrics is served (default :9394)")
    parser.add_argument("--legacy-metrics", action="store_true", help="also export HAMi's pre-v2.5 metric names")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                        help="this node's name (default: $NODE_NAME, else the host name)")
    parser.add_argument("--hook-path", default=os.environ.get("HOOK_PATH"), metavar="DIR",
                        help="default $HOOK_PATH: the caches are under DIR/containers (HAMi's chart: /usr/local/vgpu)")
    parser.add_argument("--resync-interval", default=os.environ.get("HAMI_RESYNC_INTERVAL", "5m"), metavar="DURATION",
                        help="a gone pod's cache is removed once unchanged this long "
                             "(default $HAMI_RESYNC_INTERVAL, else 5m)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--kubeconfig", metavar="FILE",
                        help="API server access (default: in-cluster service account, else $KUBECONFIG)")
    source.add_argument("--pods", metavar="FILE",
                        help="no API server: the node's pods from this `kubectl get pods -o yaml` file")
    parser.add_argument("--fake-devices", metavar="FILE",
                        help="host GPUs from this YAML file (the device plugin's) instead of NVML")
    parser.add_argument("--priority-window", type=float, default=0.5, metavar="SECONDS",
                        help="work counts as running until this long after its last launch (default 0.5, min 0.1)")
    parser.add_argument("--core-limit-switching", action="store_true",
                        help="HAMi's rule: lift a container's gpucores cap while no other container of the same "
                             "or higher priority runs on its GPU (containers with GPU_CORE_UTILIZATION_POLICY=force "
                             "keep it)")
    parser.add_argument("--scan-interval", type=float, default=1.0, metavar="SECONDS",
                        help="full pass over every region at least this often (default 1)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _pods_from_file(path: str) -> list[dict[str, Any]]:
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise HamiError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise HamiError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return []
    items = data.get("items") if isinstance(data, dict) and "items" in data else [data]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise HamiError(f"{path}: expected a Pod or a List of Pods")
    return [i for i in items if i.get("kind", "Pod") == "Pod"]


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from hami.monitor import endpoint
    from hami.monitor.host import FakeHost, HostSource, NvmlHost
    from hami.monitor.metrics import MonitorCollector
    from hami.monitor.node import MonitorOptions, NodeMonitor
    from hami.monitor.pods import PodIndex

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if not args.hook_path:
        raise HamiError("set HOOK_PATH (or --hook-path): the directory whose containers/ holds the caches")
    if args.priority_window < 0.1:
        raise HamiError("--priority-window must be at least 0.1 s")
    node = args.node_name or socket.gethostname()
    host, port = parse_bind_address(args.metrics_bind_address)
    grace = parse_duration(args.resync_interval)
    stop = threading.Event()
    monitor: NodeMonitor | None = None
    pods = PodIndex(on_change=lambda: monitor.wake() if monitor is not None else None)
    options = MonitorOptions(root=Path(args.hook_path) / "containers", window_s=args.priority_window,
                             core_limit_switching=args.core_limit_switching, scan_interval_s=args.scan_interval,
                             grace_s=grace, cleanup_interval_s=min(30.0, max(1.0, grace / 2)))
    monitor = NodeMonitor(options, pods)
    source: HostSource = FakeHost(args.fake_devices) if args.fake_devices else NvmlHost()

    if args.pods:
        pods.replace(_pods_from_file(args.pods))
    else:
        from lightkube.resources.core_v1 import Pod

        from hami.scheduler.informer import Informer
        from hami.scheduler.kube import make_client

        try:
            client = make_client(args.kubeconfig)
        except Exception as exc:  # noqa: BLE001 - lightkube raises several types for a missing or bad config
            raise HamiError(f"cannot load Kubernetes config: {exc}") from None
        informer = Informer(client, Pod, pods.replace, pods.upsert, pods.delete, stop,
                            fields={"spec.nodeName": node})
        threading.Thread(target=informer.run, daemon=True, name="informer-pods").start()

    registry = CollectorRegistry()
    registry.register(MonitorCollector(node, monitor, source, legacy=args.legacy_metrics))
    try:
        endpoint.start(host, port, endpoint.app(registry, endpoint.Health(monitor, pods)))
    except OSError as exc:
        raise HamiError(f"cannot serve metrics on {args.metrics_bind_address}: {exc.strerror}") from None

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if monitor is not None:
            monitor.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("hami").info("monitoring %s on node %s; metrics on %s:%d", options.root, node, host, port)
    try:
        monitor.run(stop)
    finally:
        monitor.close()
    return 0
