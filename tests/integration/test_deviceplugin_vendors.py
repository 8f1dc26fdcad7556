"""`hami device-plugin --vendor ascend|hygon|amd` on the real control plane.

For each vendor: a fake node registered by the plugin itself (`--fake-devices`, `--kubeconfig`),
a pod scheduled onto it by the real kube-scheduler through `hami scheduler`, then Allocate over
the plugin's socket, as kubelet would call it, returns what the contract says the container
gets, and the pod is marked done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from hami.config import HamiConfig
from hami.deviceplugin.api import api_pb2, api_pb2_grpc
from hami.vendors.registry import VendorSet
from tests.cluster import ControlPlane, wait_for
from tests.integration.hami_stack import HamiScheduler, create_pod

VENDORS = VendorSet.from_config(HamiConfig())
NPU = "2A3F1C0E-0B5D4E21-7C8A9B10-3E4F5A6B-0000000{}"
GPU = "6aff74a1-0000-1000-8035-6bf3b2c4e7a{}"


@contextmanager
def device_plugin(cp: ControlPlane, vendor: str, node: str, devices: dict[str, Any], workdir: Path,
                  *extra: str) -> Iterator[Path]:
    """`hami device-plugin` in its own process; yields its socket."""
    fake = workdir / f"{vendor}.yaml"
    fake.write_text(yaml.safe_dump(devices))
    plugin_dir = Path(tempfile.mkdtemp(prefix="vdp"))  # short: unix socket paths are limited
    log_file = workdir / f"{vendor}-plugin.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hami", "device-plugin", "--vendor", vendor, "--node-name", node,
             "--fake-devices", str(fake), "--kubeconfig", str(cp.kubeconfig), "--device-plugin-path", str(plugin_dir),
             "--hook-path", str(workdir / "hook"), "--register-interval", "1", *extra],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    socket = plugin_dir / f"hami-{vendor}.sock"
    try:
        wait_for(lambda: process.poll() is None and socket.exists(), timeout=30, poll=0.2,
                 message=f"{vendor} plugin socket\n{log_file.read_text(errors='replace')}")
        yield socket
    finally:
        process.terminate()
        process.wait(timeout=15)


def node_annotation(cp: ControlPlane, node: str, key: str) -> str:
    found: str = wait_for(lambda: (cp.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {})
                          .get(key), timeout=30, poll=0.3, message=f"{key} on {node}")
    return found


def schedule(cp: ControlPlane, namespace: str, scheduler: str, name: str, limits: dict[str, Any],
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    create_pod(cp, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"schedulerName": scheduler, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": "example.invalid/ai:1", "resources": {"limits": limits}}]},
    })

    def bound() -> dict[str, Any] | None:
        obj = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return obj if (obj.get("spec") or {}).get("nodeName") else None

    pod: dict[str, Any] = wait_for(bound, timeout=60, poll=0.3, message=f"pod {name} bound")
    return pod


def kubelet_allocates(socket: Path, count: int) -> Any:
    """What kubelet does: the plugin's device IDs (ListAndWatch), then Allocate for one container."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = api_pb2_grpc.DevicePluginStub(channel)
        stream = stub.ListAndWatch(api_pb2.Empty(), timeout=10)
        ids = [d.ID for d in next(stream).devices]
        stream.cancel()
        container = api_pb2.ContainerAllocateRequest(devices_ids=ids[:count])
        request = api_pb2.AllocateRequest(container_requests=[container])
        return stub.Allocate(request, timeout=10).container_responses[0]


@pytest.fixture
def scheduler(control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any) -> Iterator[str]:
    name = f"hami-vdp-{namespace}"[:60]
    hami = HamiScheduler(control_plane, tmp_path / "hami", scheduler_name=name).start()
    config = hami.extender_config()
    config["extenders"][0]["managedResources"] = [{"name": n, "ignoredByScheduler": True}
                                                  for n in VENDORS.managed_resources()]
    start_scheduler(config)
    try:
        yield name
    finally:
        hami.stop()


def annotations_of(cp: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    return dict(cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")["metadata"]["annotations"])


def test_ascend_node_pod_and_allocate(control_plane: ControlPlane, namespace: str, tmp_path: Path,
                                      add_node: Any, scheduler: str) -> None:
    cp, node = control_plane, f"{namespace}-npu"
    add_node(node, capacity={"huawei.com/Ascend910B3": "8"})
    npus = {"chipName": "910B3", "devices": [{"uuid": NPU.format(i), "phyId": 4 + i} for i in range(2)]}
    with device_plugin(cp, "ascend", node, npus, tmp_path) as socket:
        registered = json.loads(node_annotation(cp, node, "hami.io/node-register-Ascend910B3"))
        assert [(d["id"], d["count"], d["devmem"]) for d in registered] == [(NPU.format(i), 4, 65536) for i in (0, 1)]
        assert node_annotation(cp, node, "hami.io/node-handshake-Ascend910B3").startswith("Reported_")
        pod = schedule(cp, namespace, scheduler, "npu", {"huawei.com/Ascend910B3": 1,
                                                          "huawei.com/Ascend910B3-memory": 16384})
        assert pod["spec"]["nodeName"] == node
        (chosen,) = json.loads(pod["metadata"]["annotations"]["huawei.com/Ascend910B3"])
        assert chosen["temp"] == "vir05_1c_16g"
        got = kubelet_allocates(socket, 1)
        phy = 4 + [NPU.format(i) for i in (0, 1)].index(chosen["UUID"])
        assert dict(got.envs) == {"ASCEND_VISIBLE_DEVICES": str(phy), "ASCEND_VNPU_SPECS": "vir05_1c_16g"}
    after = annotations_of(cp, namespace, "npu")
    assert after["hami.io/bind-phase"] == "success" and after["hami.io/Ascend910B3-devices-to-allocate"] == ";"


def test_hygon_node_pod_and_allocate(control_plane: ControlPlane, namespace: str, tmp_path: Path,
                                     add_node: Any, scheduler: str) -> None:
    cp, node = control_plane, f"{namespace}-dcu"
    add_node(node, capacity={"hygon.com/dcunum": "4"})
    dcus = {"devices": [{"serial": "SN1", "name": "Z100L", "memory": 32752, "computeUnits": 60,
                         "pciBusId": "0000:3B:00.0", "card": 1, "render": 128}]}
    with device_plugin(cp, "hygon", node, dcus, tmp_path, "--vdev-dir", str(tmp_path / "vdev"),
                       "--hygon-driver-path", "/opt/hygon") as socket:
        assert node_annotation(cp, node, "hami.io/node-dcu-register") == "DCU-SN1,4,32752,100,DCU-Z100L,0,true,0,hami:"
        node_annotation(cp, node, "hami.io/node-handshake-dcu")
        pod = schedule(cp, namespace, scheduler, "dcu", {"hygon.com/dcunum": 1, "hygon.com/dcumem": 8000,
                                                         "hygon.com/dcucores": 30})
        assert pod["metadata"]["annotations"]["hami.io/dcu-devices-to-allocate"] == "DCU-SN1,DCU,8000,30:;"
        got = kubelet_allocates(socket, 1)
        uid = pod["metadata"]["uid"]
        vdev = tmp_path / "hook" / "dcu" / f"{uid}_main_0_0_0_000000000003ffff_0000000000000000"
        assert [(d.container_path, d.permissions) for d in got.devices] == [
            ("/dev/kfd", "rwm"), ("/dev/mkfd", "rwm"), ("/dev/dri/card1", "rw"), ("/dev/dri/renderD128", "rw")]
        assert [(m.container_path, m.host_path) for m in got.mounts] == [
            ("/opt/hyhal", "/opt/hyhal"), ("/etc/vdev/docker/", str(vdev)), ("/opt/hygondriver", "/opt/hygon")]
        assert "cu_count: 18\nmem: 8000 MiB\n" in (vdev / "vdev0.conf").read_text()
    assert annotations_of(cp, namespace, "dcu")["hami.io/bind-phase"] == "success"


@pytest.mark.skipif("AMD" not in VENDORS, reason="the scheduler side's AMD vendor (hami.vendors.amd) is not in this "
                                                 "build")
def test_amd_node_pod_and_allocate(control_plane: ControlPlane, namespace: str, tmp_path: Path,
                                   add_node: Any, scheduler: str) -> None:
    cp, node = control_plane, f"{namespace}-amd"
    add_node(node, capacity={"amd.com/gpu": "10"})  # HAMi's health check for AMD: the count resource
    gpus = {"devices": [{"uuid": GPU.format(1), "product": "AMD Instinct MI300X", "memory": 196592,
                         "computeUnits": 304, "pciBDF": "0000:05:00.0", "rocrUuid": "GPU-4b1f9e2a1c3d5e7f",
                         "card": 1, "render": 128}]}
    with device_plugin(cp, "amd", node, gpus, tmp_path) as socket:
        (registered,) = json.loads(node_annotation(cp, node, "hami.io/node-amd-register"))
        assert (registered["devcore"], registered["devicevendor"]) == (304, "amd")
        pod = schedule(cp, namespace, scheduler, "gpu", {"amd.com/gpu": 1, "amd.com/gpumem": 8000,
                                                         "amd.com/gpucores": 25})
        assert pod["spec"]["nodeName"] == node
        got = kubelet_allocates(socket, 1)
        assert dict(got.envs) == {"HSA_CU_MASK": "0:0-75", "ROCR_VISIBLE_DEVICES": "GPU-4b1f9e2a1c3d5e7f",
                                  "HIP_DEVICE_MEMORY_LIMIT": "8000m", "LD_AUDIT": "/usr/local/vgpu/libamvgpu.so"}
        assert [(m.container_path, m.host_path) for m in got.mounts] == [
            ("/usr/local/vgpu/libamvgpu.so", str(tmp_path / "hook" / "libamvgpu.so"))]
    after = annotations_of(cp, namespace, "gpu")
    assert json.loads(after["hami.io/amd-cu-allocated"]) == {GPU.format(1): "0-75"}
    assert after["hami.io/bind-phase"] == "success"
