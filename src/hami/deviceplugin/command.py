"""`hami device-plugin`: the per-node daemon (device discovery, kubelet gRPC, node annotations).

`--vendor` picks whose devices it serves: nvidia (NVML), ascend (DCMI), hygon (Hygon's
rocm_smi) or amd (AMD SMI); `--fake-devices FILE` replaces the vendor's library with a YAML file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from hami.errors import HamiError

if TYPE_CHECKING:
    from hami.config import HamiConfig
    from hami.deviceplugin.server import VendorFactory

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
VENDORS = ("nvidia", "ascend", "hygon", "amd")
# What discovery needs on each vendor's node, for the hint when it fails.
LIBRARIES = {"nvidia": "NVIDIA driver (NVML)", "ascend": "Ascend driver (DCMI)",
             "hygon": "Hygon driver (rocm_smi)", "amd": "ROCm (AMD SMI)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vendor", choices=VENDORS, default="nvidia",
                        help="whose devices to serve (default nvidia)")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                        help="this node's name (default: $NODE_NAME, else the host name)")
    parser.add_argument("--config", metavar="FILE", help="HAMi device config (device-config.yaml shape, nodeconfig)")
    parser.add_argument("--fake-devices", metavar="FILE",
                        help="read the devices from this YAML file instead of the vendor's library "
                             "(machines without the devices)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--kubeconfig", metavar="FILE",
                        help="API server access (default: in-cluster service account, else $KUBECONFIG)")
    source.add_argument("--pods", metavar="FILE",
                        help="no API server: read pods and the node from this `kubectl get pods,nodes -o yaml` "
                             "file and keep annotation changes in memory (printed to the log)")
    parser.add_argument("--device-plugin-path", default=DEFAULT_PLUGIN_DIR, metavar="DIR",
                        help=f"kubelet's device-plugin directory, holding kubelet.sock (default {DEFAULT_PLUGIN_DIR})")
    parser.add_argument("--socket-name", help="this plugin's socket in that directory (default hami-<vendor>.sock)")
    parser.add_argument("--hook-path", default="/usr/local/vgpu", metavar="DIR",
                        help="host directory with libvgpu.so and ld.so.preload, or AMD's libamvgpu.so "
                             "(default /usr/local/vgpu)")
    parser.add_argument("--cache-dir", default="/usr/local/vgpu/containers", metavar="DIR",
                        help="host directory for the per-container shared regions the monitor reads")
    parser.add_argument("--no-link-scores", action="store_true",
                        help="do not measure GPU links nor publish hami.io/node-nvidia-score "
                             "(HAMi publishes it only when ENABLE_TOPOLOGY_SCORE=true; we always do)")
    parser.add_argument("--pod-resources-socket", default=DEFAULT_POD_RESOURCES_SOCKET, metavar="PATH",
                        help="kubelet's pod-resources socket, asked which pod kubelet is starting "
                             f"(default {DEFAULT_POD_RESOURCES_SOCKET}; \"\" = never ask, rely on HAMi's node lock)")
    parser.add_argument("--register-interval", type=float, default=30.0, metavar="SECONDS",
                        help="how often the node annotations are checked (default 30)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--library", metavar="PATH",
                        help="ascend, hygon: the vendor's library to load (default: libdcmi.so or librocm_smi64.so "
                             "from the driver's usual places)")
    parser.add_argument("--hami-vnpu-core", choices=["true", "false"],
                        help="ascend: whether this node runs hami-vnpu-core (default: the config's "
                             "vnpus.hamiVnpuCore)")
    parser.add_argument("--vnpu-core-path", default="/usr/local/hami-vnpu-core", metavar="DIR",
                        help="ascend: host directory of hami-vnpu-core (default /usr/local/hami-vnpu-core)")
    parser.add_argument("--vdev-root", metavar="DIR",
                        help="hygon: host directory of the containers' vdev files (default <hook-path>/dcu)")
    parser.add_argument("--vdev-dir", default="/etc/vdev", metavar="DIR",
                        help="hygon: host directory of the node's vdev<N>.conf files (default /etc/vdev)")
    parser.add_argument("--hygon-driver-path", default=os.environ.get("HYGONPATH", ""), metavar="DIR",
                        help="hygon: mounted at /opt/hygondriver for a vdev (default $HYGONPATH; none when empty)")


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


def _vendor(args: argparse.Namespace, config: HamiConfig, node: str) -> tuple[Any, VendorFactory | None]:
    """The backend (the vendor's library, or its fake) and the node side's factory of --vendor."""
    fake = args.fake_devices
    if args.vendor == "ascend":
        from hami.deviceplugin.vendors import ascend

        hami_core = None if args.hami_vnpu_core is None else args.hami_vnpu_core == "true"
        if fake:
            backend: Any = ascend.fake_backend(fake)
        else:
            from hami.deviceplugin.vendors.dcmi import DcmiBackend

            backend = DcmiBackend(args.library)
        return backend, lambda found: ascend.node_vendor(config, node, found, hami_core, args.vnpu_core_path)
    if args.vendor == "hygon":
        from hami.deviceplugin.vendors import hygon

        if fake:
            backend = hygon.fake_backend(fake)
        else:
            from hami.deviceplugin.vendors.rocm_smi import RsmiBackend

            backend = RsmiBackend(args.library)
        vdev_root = args.vdev_root or str(PurePosixPath(args.hook_path) / "dcu")
        return backend, lambda found: hygon.node_vendor(config, node, vdev_root, args.vdev_dir,
                                                        args.hygon_driver_path)
    if args.vendor == "amd":
        from hami.deviceplugin.vendors import amd

        if fake:
            backend = amd.fake_backend(fake)
        else:
            from hami.deviceplugin.vendors.amd_smi import AmdSmiBackend

            backend = AmdSmiBackend()
        return backend, lambda found: amd.node_vendor(config, node, args.hook_path)
    from hami.deviceplugin.fake import FakeBackend
    from hami.deviceplugin.nvml import NvmlBackend

    return (FakeBackend(fake) if fake else NvmlBackend()), None


def run(args: argparse.Namespace) -> int:
    from hami.config import load_config
    from hami.deviceplugin.backend import BackendError
    from hami.deviceplugin.server import DevicePlugin, PluginOptions

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = args.node_name or socket.gethostname()
    config = load_config(args.config)
    backend, vendor = _vendor(args, config, node)
    options = PluginOptions(
        node=node,
        plugin_dir=args.device_plugin_path,
        socket_name=args.socket_name or f"hami-{args.vendor}.sock",
        hook_path=args.hook_path,
        cache_root=args.cache_dir,
        register_interval_s=args.register_interval,
        link_scores=not args.no_link_scores,
        pod_resources_socket=args.pod_resources_socket,
    )
    plugin = DevicePlugin(backend, _source(args, node), config, options, vendor)
    done = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        plugin.start()
    except BackendError as exc:
        hint = f" (no {LIBRARIES[args.vendor]} here? try --fake-devices FILE)" if not args.fake_devices else ""
        what = "GPU" if args.vendor in ("nvidia", "amd") else "device"
        raise HamiError(f"{what} discovery failed: {exc}{hint}") from None
    try:
        while not done.wait(1.0):
            pass
    finally:
        plugin.stop()
    return 0
