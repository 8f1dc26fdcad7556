"""`hami device-plugin`: the per-node daemon (GPU discovery, kubelet gRPC, node annotations)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from typing import Any

from hami.errors import HamiError

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                        help="this node's name (default: $NODE_NAME, else the host name)")
    parser.add_argument("--config", metavar="FILE", help="HAMi device config (device-config.yaml shape, nodeconfig)")
    parser.add_argument("--fake-devices", metavar="FILE",
                        help="read GPUs from this YAML file instead of NVML (machines without GPUs)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--kubeconfig", metavar="FILE",
                        help="API server access (default: in-cluster service account, else $KUBECONFIG)")
    source.add_argument("--pods", metavar="FILE",
                        help="no API server: read pods and the node from this `kubectl get pods,nodes -o yaml` "
                             "file and keep annotation changes in memory (printed to the log)")
    parser.add_argument("--device-plugin-path", default=DEFAULT_PLUGIN_DIR, metavar="DIR",
                        help=f"kubelet's device-plugin directory, holding kubelet.sock (default {DEFAULT_PLUGIN_DIR})")
    parser.add_argument("--socket-name", default="hami-nvidia.sock", help="this plugin's socket in that directory")
    parser.add_argument("--hook-path", default="/usr/local/vgpu", metavar="DIR",
                        help="host directory with libvgpu.so and ld.so.preload (default /usr/local/vgpu)")
    parser.add_argument("--cache-dir", default="/usr/local/vgpu/containers", metavar="DIR",
                        help="host directory for the per-container shared regions the monitor reads")
    parser.add_argument("--register-interval", type=float, default=30.0, metavar="SECONDS",
                        help="how often the node annotations are checked (default 30)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _source(args: argparse.Namespace, node: str) -> Any:
    from hami.deviceplugin.pods import KubePodSource, in_memory_from_list

    if args.pods:
        import yaml

        try:
            with open(args.pods) as handle:
                data = yaml.safe_load(handle)
        except OSError as exc:
            raise HamiError(f"cannot read {args.pods}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise HamiError(f"{args.pods} is not valid YAML: {exc}") from None
        memory = in_memory_from_list(data if data is not None else {"items": []}, args.pods)
        memory.nodes.setdefault(node, {})
        memory.log_patches = True
        return memory
    return KubePodSource(args.kubeconfig)


def run(args: argparse.Namespace) -> int:
    from hami.config import load_config
    from hami.deviceplugin.backend import BackendError
    from hami.deviceplugin.fake import FakeBackend
    from hami.deviceplugin.nvml import NvmlBackend
    from hami.deviceplugin.server import DevicePlugin, PluginOptions

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = args.node_name or socket.gethostname()
    config = load_config(args.config)
    backend: Any = FakeBackend(args.fake_devices) if args.fake_devices else NvmlBackend()
    options = PluginOptions(
        node=node,
        plugin_dir=args.device_plugin_path,
        socket_name=args.socket_name,
        hook_path=args.hook_path,
        cache_root=args.cache_dir,
        register_interval_s=args.register_interval,
    )
    plugin = DevicePlugin(backend, _source(args, node), config, options)
    done = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        plugin.start()
    except BackendError as exc:
        hint = " (no NVIDIA driver here? try --fake-devices FILE)" if not args.fake_devices else ""
        raise HamiError(f"GPU discovery failed: {exc}{hint}") from None
    try:
        while not done.wait(1.0):
            pass
    finally:
        plugin.stop()
    return 0
