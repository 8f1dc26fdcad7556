"""Dynamic MIG end to end on the real control plane: the device plugin registers a MIG GPU
(profiles discovered through the fake NVML), kube-scheduler and `hami scheduler` place a pod on
a profile and placement, kubelet's Allocate (real gRPC, kubelet's proto) gets the MIG UUID of
the instance the plugin made, the UUID is recorded on the pod, and the instance goes with the pod.
A restarted plugin adopts the instances of live pods."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hami.annotations import keys
from hami.annotations.mig import decode_mig_allocations
from hami.config import parse_config
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.fake import FakeBackend
from hami.deviceplugin.pods import KubePodSource
from hami.deviceplugin.server import DevicePlugin, PluginOptions
from tests.cluster import ControlPlane, wait_for
from tests.integration.hami_stack import create_pod, gpu_pod, stack, wait_bound  # noqa: F401 - `stack` is a fixture
from tests.unit.test_deviceplugin_support import KubeletDouble

A100 = "GPU-4a100000-0000-0000-0000-00000000a100"
T4 = "GPU-7e400000-0000-0000-0000-0000000000t4"


@contextmanager
def plugin_on(control_plane: ControlPlane, node: str, backend: FakeBackend) -> Iterator[tuple[DevicePlugin, Any]]:
    """Our device plugin for `node`, talking to the real API server and to a kubelet double."""
    config = parse_config({"nodeconfig": [{"name": node, "operatingmode": "mig"}]})
    with tempfile.TemporaryDirectory(prefix="mig") as tmp:
        plugin_dir = Path(tmp) / "k"
        plugin_dir.mkdir()
        kubelet = KubeletDouble(plugin_dir)
        kubelet.start()
        options = PluginOptions(node=node, plugin_dir=str(plugin_dir), socket_name="hami.sock",
                                cache_root=str(Path(tmp) / "c"), register_interval_s=0.5, watch_interval_s=0.1,
                                mig_cleanup_interval_s=0.5)
        plugin = DevicePlugin(backend, KubePodSource(str(control_plane.kubeconfig)), config, options)
        plugin.start()
        try:
            with kubelet.client("hami.sock") as stub:
                yield plugin, stub
        finally:
            plugin.stop()
            kubelet.stop()


def node_annotations(cp: ControlPlane, node: str) -> dict[str, str]:
    return dict(cp.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {})


def annotations_of(cp: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    return dict(cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")["metadata"].get("annotations") or {})


def test_pod_to_mig_uuid_and_back(control_plane: ControlPlane, namespace: str, stack, add_node) -> None:  # type: ignore[no-untyped-def]
    hami, scheduler = stack
    node = f"{namespace}-mig"
    add_node(node)
    backend = FakeBackend(data={"devices": [
        # MIG mode off: the plugin turns it on.
        {"uuid": A100, "name": "NVIDIA A100-SXM4-40GB", "memory": 40960, "smCount": 108},
        {"uuid": T4, "name": "Tesla T4", "memory": 15360, "numa": 1},
    ]})
    with plugin_on(control_plane, node, backend) as (_, stub):
        registered = wait_for(lambda: node_annotations(control_plane, node).get(keys.NODE_NVIDIA_REGISTER),
                              timeout=20, message="registration")
        modes = {d["id"]: d["mode"] for d in json.loads(registered)}
        assert modes == {A100: "mig", T4: "hami-core"}

        pod = gpu_pod("train", scheduler, memory=9000)
        pod["metadata"]["annotations"] = {keys.VGPU_MODE: "mig"}
        create_pod(control_plane, namespace, pod)
        wait_bound(control_plane, namespace, 1, timeout=60)
        annotations = annotations_of(control_plane, namespace, "train")
        [reserved] = decode_mig_allocations(annotations[keys.MIG_ALLOCATIONS])
        assert (reserved.gpu_uuid, reserved.profile, reserved.placement.start, reserved.placement.size) == (
            A100, "2g.10gb", 0, 2)
        assert annotations[keys.DEVICES_ALLOCATED] == f"{A100},NVIDIA,9984,29:;"

        response = stub.Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[f"{A100}-3"])]), timeout=10)
        [instance] = backend.gpu_instances(A100)
        assert dict(response.container_responses[0].envs) == {"NVIDIA_VISIBLE_DEVICES": instance.mig_uuid}
        annotations = annotations_of(control_plane, namespace, "train")
        [realized] = decode_mig_allocations(annotations[keys.MIG_ALLOCATIONS])
        assert (realized.mig_uuid, realized.gpu_instance_id, realized.compute_instance_id) == (
            instance.mig_uuid, instance.gpu_instance_id, 0)
        assert annotations[keys.BIND_PHASE] == "success"

    # A restarted plugin keeps the live pod's instance (adopted) and still cleans up after it.
    with plugin_on(control_plane, node, backend) as (plugin, _):
        assert plugin.vendor.features is not None and plugin.vendor.features.mig is not None
        assert [k.profile for k in plugin.vendor.features.mig.manager.managed] == ["2g.10gb"]
        assert [i.mig_uuid for i in backend.gpu_instances(A100)] == [instance.mig_uuid]
        control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/train?gracePeriodSeconds=0")
        wait_for(lambda: backend.gpu_instances(A100) == [], timeout=30, poll=0.2, message="MIG cleanup")
