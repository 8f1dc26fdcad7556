"""The device plugin's pod look-up and bookkeeping against the real API server: a pod that our
scheduler bound (through the real kube-scheduler) is found, allocated, and marked done."""

from __future__ import annotations

from hami.annotations import keys
from hami.annotations.pod_devices import decode_pod_devices
from hami.deviceplugin.allocate import AllocateError, AllocateSettings, allocate
from hami.deviceplugin.pods import KubePodSource
from tests.cluster import ControlPlane
from tests.integration.hami_stack import (  # noqa: F401 - `stack` is a fixture
    create_pod,
    gpu_node_annotations,
    gpu_pod,
    stack,
    wait_bound,
)


def test_allocate_finds_the_bound_pod_and_records_success(
    control_plane: ControlPlane,
    namespace: str,
    stack,  # type: ignore[no-untyped-def]
    add_node,
) -> None:
    hami, scheduler = stack
    node = f"{namespace}-gpu"
    add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    pod = gpu_pod("worker", scheduler, memory=5000, cores=20, gpus=2)
    pod["spec"]["containers"].insert(0, {"name": "sidecar", "image": "example.invalid/proxy:1"})
    create_pod(control_plane, namespace, pod)
    (bound,) = wait_bound(control_plane, namespace, 1, timeout=60)
    assert bound["metadata"]["annotations"][keys.BIND_PHASE] == "allocating"

    source = KubePodSource(str(control_plane.kubeconfig))
    settings = AllocateSettings(node=node)
    (grant,) = allocate(source, settings, requests=[2])
    assert grant.container == "main"  # matched by name and count, past the sidecar listed first
    assert sorted(grant.envs["NVIDIA_VISIBLE_DEVICES"].split(",")) == [f"GPU-{node}-0", f"GPU-{node}-1"]
    assert grant.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "5000m" and grant.envs["CUDA_DEVICE_SM_LIMIT"] == "20"

    after = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/worker")["metadata"]["annotations"]
    assert after[keys.BIND_PHASE] == "success"
    assert not any(decode_pod_devices(after[keys.DEVICES_TO_ALLOCATE]))
    assert decode_pod_devices(after[keys.DEVICES_ALLOCATED])[1]  # what the pod holds is kept

    # Nothing else is waiting on this node now: a clear NOT_FOUND, not a crash.
    try:
        allocate(source, settings, requests=[1])
    except AllocateError as exc:
        assert exc.code == "NOT_FOUND" and node in exc.message
    else:
        raise AssertionError("a second Allocate found a pod")


def test_the_node_lock_is_removed_only_while_it_is_the_one_read(
    control_plane: ControlPlane, namespace: str, add_node  # type: ignore[no-untyped-def]
) -> None:
    node = f"{namespace}-locked"
    add_node(node, annotations={keys.NODE_LOCK: f"2026-01-01T00:00:00Z,{namespace},next"})
    source = KubePodSource(str(control_plane.kubeconfig))
    # The plugin read the lock of the pod it allocated; the scheduler has since given it to the next pod.
    assert not source.remove_node_annotation(node, keys.NODE_LOCK, f"2026-01-01T00:00:00Z,{namespace},done")
    assert keys.NODE_LOCK in control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"]["annotations"]
    assert source.remove_node_annotation(node, keys.NODE_LOCK, f"2026-01-01T00:00:00Z,{namespace},next")
    after = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {}
    assert keys.NODE_LOCK not in after
    assert not source.remove_node_annotation(node, keys.NODE_LOCK, "anything")  # gone already: nothing to do
