"""Shared pieces of the device-plugin tests (no tests here): a kubelet double from the same proto, fake GPUs, pods."""

from __future__ import annotations

import queue
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hami.annotations import keys
from hami.config import HamiConfig, NvidiaConfig
from hami.deviceplugin.api import api_pb2, api_pb2_grpc
from hami.deviceplugin.fake import FakeBackend
from hami.deviceplugin.pods import InMemoryPodSource
from hami.deviceplugin.server import DevicePlugin, PluginOptions

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
NODE = "node-1"

FAKE_GPUS: dict[str, Any] = {
    "devices": [
        {"uuid": GPU_A, "name": "NVIDIA A100-SXM4-80GB", "memory": 81920, "smCount": 108, "numa": 0,
         "nvlink": [GPU_B]},
        {"uuid": GPU_B, "name": "NVIDIA A100-SXM4-80GB", "memory": 81920, "smCount": 108, "numa": 1,
         "nvlink": [GPU_A]},
    ]
}


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()

    def Register(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.requests.put(request)
        return api_pb2.Empty()


class KubeletDouble:
    """kubelet's side: the Registration service on kubelet.sock, and a DevicePlugin client."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.registration = _Registration()
        self.server: grpc.Server | None = None

    @property
    def socket(self) -> Path:
        return self.plugin_dir / "kubelet.sock"

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self.registration, self.server)
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()

    def restart(self) -> None:
        """What kubelet does when it restarts: stop, remove every socket, listen again."""
        self.stop()
        for path in self.plugin_dir.glob("*.sock"):
            path.unlink()
        self.registration = _Registration()
        self.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None

    def next_registration(self, timeout: float = 5.0) -> Any:
        return self.registration.requests.get(timeout=timeout)

    @contextmanager
    def client(self, endpoint: str) -> Iterator[Any]:
        with grpc.insecure_channel(f"unix://{self.plugin_dir / endpoint}") as channel:
            yield api_pb2_grpc.DevicePluginStub(channel)


def gpu_pod(
    name: str,
    containers: list[tuple[str, int]],
    decision: str,
    *,
    init: list[tuple[str, int]] | None = None,
    uid: str = "uid-1",
    node: str = NODE,
    phase: str = "allocating",
    env: dict[str, list[dict[str, str]]] | None = None,
    priority: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A bound pod with the scheduler's decision; containers are (name, nvidia.com/gpu count, 0 = none)."""

    def spec(cname: str, count: int) -> dict[str, Any]:
        limits: dict[str, Any] = {"nvidia.com/gpu": str(count)} if count else {}
        if priority and cname in priority:
            limits["nvidia.com/priority"] = str(priority[cname])
        item: dict[str, Any] = {"name": cname, "image": "cuda", "resources": {"limits": limits}}
        if env and cname in env:
            item["env"] = env[cname]
        return item

    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid,
            "annotations": {
                keys.VGPU_NODE: node,
                keys.DEVICES_TO_ALLOCATE: decision,
                keys.DEVICES_ALLOCATED: decision,
                keys.BIND_PHASE: phase,
                keys.BIND_TIME: "1700000000",
            },
        },
        "spec": {
            "nodeName": node,
            "initContainers": [spec(c, n) for c, n in init or []],
            "containers": [spec(c, n) for c, n in containers],
        },
    }


@dataclass
class Harness:
    kubelet: KubeletDouble
    plugin: DevicePlugin
    backend: FakeBackend
    source: InMemoryPodSource
    root: Path

    @property
    def endpoint(self) -> str:
        return self.plugin.options.socket_name

    def annotations(self, pod: str) -> dict[str, str]:
        found = self.source.get_pod("default", pod)
        assert found is not None
        return dict(found["metadata"]["annotations"])


@contextmanager
def running_plugin(config: HamiConfig | None = None, pods: list[dict[str, Any]] | None = None,
                   lock: str | None = None, gpus: dict[str, Any] | None = None) -> Iterator[Harness]:
    config = config or HamiConfig(nvidia=NvidiaConfig(deviceSplitCount=4))
    # Short directory names: unix socket paths are limited to about 107 bytes.
    with tempfile.TemporaryDirectory(prefix="dp") as tmp:
        root = Path(tmp)
        plugin_dir = root / "k"
        plugin_dir.mkdir()
        kubelet = KubeletDouble(plugin_dir)
        kubelet.start()
        node_ann = {keys.NODE_LOCK: lock} if lock else {}
        source = InMemoryPodSource(list(pods or []), nodes={NODE: node_ann})
        backend = FakeBackend(data=gpus or FAKE_GPUS)
        options = PluginOptions(node=NODE, plugin_dir=str(plugin_dir), socket_name="hami.sock",
                                hook_path="/usr/local/vgpu", cache_root=str(root / "c"),
                                register_interval_s=0.2, watch_interval_s=0.05)
        plugin = DevicePlugin(backend, source, config, options)
        plugin.start()
        try:
            yield Harness(kubelet, plugin, backend, source, root)
        finally:
            plugin.stop()
            kubelet.stop()
