"""Shared pieces of the vendor device-plugin tests (no tests here): the plugin of a vendor on real
gRPC sockets against the kubelet double, pods with a vendor's decision, stand-in C libraries."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hami.annotations import keys
from hami.config import HamiConfig
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.pods import InMemoryPodSource
from hami.deviceplugin.server import DevicePlugin, PluginOptions, VendorFactory
from hami.model.devices import NodeDevices
from hami.vendors.registry import VendorSet
from tests.unit.test_deviceplugin_support import NODE, KubeletDouble

LOCK = "2024-05-01T10:00:00Z,default,{name}"


@dataclass
class VendorHarness:
    kubelet: KubeletDouble
    plugin: DevicePlugin
    backend: Any
    source: InMemoryPodSource
    root: Path

    @property
    def endpoint(self) -> str:
        return self.plugin.options.socket_name

    def annotations(self, pod: str) -> dict[str, str]:
        found = self.source.get_pod("default", pod)
        assert found is not None
        return dict(found["metadata"]["annotations"])

    def node(self) -> dict[str, Any]:
        """The node as the scheduler reads it (annotations, and capacity as kubelet would report)."""
        return {"metadata": {"name": NODE, "annotations": dict(self.source.nodes[NODE])},
                "status": {"capacity": {self.plugin.resource_name: str(len(self.plugin.state.shares) * 10)}}}


@contextmanager
def running_vendor_plugin(backend: Any, vendor: VendorFactory, pods: list[dict[str, Any]] | None = None,
                          node_annotations: dict[str, str] | None = None,
                          config: HamiConfig | None = None) -> Iterator[VendorHarness]:
    with tempfile.TemporaryDirectory(prefix="vp") as tmp:  # short: unix socket paths are limited
        root = Path(tmp)
        plugin_dir = root / "k"
        plugin_dir.mkdir()
        kubelet = KubeletDouble(plugin_dir)
        kubelet.start()
        source = InMemoryPodSource(list(pods or []), nodes={NODE: dict(node_annotations or {})})
        options = PluginOptions(node=NODE, plugin_dir=str(plugin_dir), socket_name="v.sock",
                                hook_path=str(root / "hook"), cache_root=str(root / "c"),
                                register_interval_s=0.2, watch_interval_s=0.05)
        plugin = DevicePlugin(backend, source, config or HamiConfig(), options, vendor)
        plugin.start()
        try:
            yield VendorHarness(kubelet, plugin, backend, source, root)
        finally:
            plugin.stop()
            kubelet.stop()


def vendor_pod(name: str, containers: list[tuple[str, dict[str, Any]]], annotations: dict[str, str],
               uid: str = "uid-1") -> dict[str, Any]:
    """A pod bound to NODE, waiting for devices, with the scheduler's annotations given."""
    return {
        "metadata": {
            "name": name, "namespace": "default", "uid": uid,
            "annotations": {keys.VGPU_NODE: NODE, keys.BIND_PHASE: "allocating", keys.BIND_TIME: "1700000000",
                            **annotations},
        },
        "spec": {"nodeName": NODE, "containers": [
            {"name": c, "image": "ai", "resources": {"limits": limits}} for c, limits in containers
        ]},
    }


def registered(node: dict[str, Any], vendors: VendorSet | None = None) -> NodeDevices:
    """What the scheduler side reads back from the node's annotations (no warnings allowed)."""
    found, warnings = (vendors or VendorSet.from_config(HamiConfig())).registered_node(node)
    assert not warnings, warnings
    assert found is not None
    return found


def allocate(stub: Any, *containers: list[str]) -> Any:
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers])
    return stub.Allocate(request, timeout=5)


def mounts(response: Any) -> list[tuple[str, str, bool]]:
    return [(m.container_path, m.host_path, m.read_only) for m in response.mounts]


def device_specs(response: Any) -> list[tuple[str, str, str]]:
    return [(d.container_path, d.host_path, d.permissions) for d in response.devices]


def build_library(directory: Path, name: str, source: str) -> Path:
    """Compile a stand-in C library (the vendor's calls, canned answers) with the system's cc."""
    c_file = directory / f"{name}.c"
    c_file.write_text(source)
    library = directory / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(c_file)], check=True, capture_output=True)
    return library
