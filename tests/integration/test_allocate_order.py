"""Pods bound to one node by our scheduler (through the real kube-scheduler) wait for their
devices; a kubelet stand-in starts them in any order against `hami device-plugin` in its own
process. Each container gets its own pod's devices and limits, never another pod's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hami.annotations import keys
from hami.annotations.pod_devices import pod_allocation_from_annotations
from tests.cluster import ControlPlane, wait_for
from tests.integration.hami_stack import (  # noqa: F401 - `stack` is a fixture
    GpuNode,
    create_pod,
    gpu_pod,
    pods_in,
    stack,
    wait_bound,
)


@pytest.fixture
def gpu_node(control_plane: ControlPlane, namespace: str, add_node: Any) -> Iterator[Any]:
    started: list[GpuNode] = []

    def start(pod_resources: bool = True) -> GpuNode:
        name = f"{namespace}-gpu{len(started)}"
        add_node(name)
        node = GpuNode(control_plane, name, gpus=2, memory=24000, pod_resources=pod_resources).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def own_limits(pod: dict[str, Any]) -> dict[str, str]:
    """What the pod's own decision says its one container must get."""
    (container,) = pod_allocation_from_annotations(pod["metadata"]["annotations"]) or ()
    (device,) = container
    return {"NVIDIA_VISIBLE_DEVICES": device.uuid, "CUDA_DEVICE_MEMORY_LIMIT_0": f"{device.usedmem}m",
            "CUDA_DEVICE_SM_LIMIT": str(device.usedcores)}


def _lock(control_plane: ControlPlane, node: str) -> str | None:
    annotations = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {}
    return annotations.get(keys.NODE_LOCK)


@pytest.mark.timeout(240)
def test_pods_started_in_reverse_bind_order_get_their_own_limits(
    control_plane: ControlPlane, namespace: str, stack, gpu_node  # type: ignore[no-untyped-def]
) -> None:
    hami, scheduler = stack
    node = gpu_node()
    for i in range(12):
        create_pod(control_plane, namespace, gpu_pod(f"p{i:02d}", scheduler, memory=1000 + 100 * i, cores=i))
    bound = wait_bound(control_plane, namespace, 12, timeout=120)
    assert {p["spec"]["nodeName"] for p in bound} == {node.node}
    assert _lock(control_plane, node.node) is None  # the plugin asks kubelet: no node lock was needed
    bind_order = sorted(bound, key=lambda p: (int(p["metadata"]["annotations"][keys.BIND_TIME]),
                                              int(p["metadata"]["resourceVersion"])))
    for pod in reversed(bind_order):
        name = pod["metadata"]["name"]
        envs = node.admit(namespace, name).envs("main")
        wanted = own_limits(pod)
        assert {k: envs[k] for k in wanted} == wanted, (name, node.log_tail())
        after = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")["metadata"]["annotations"]
        assert after[keys.BIND_PHASE] == "success"


@pytest.mark.timeout(240)
def test_hami_node_lock_protocol_where_the_plugin_cannot_ask_kubelet(
    control_plane: ControlPlane, namespace: str, stack, gpu_node  # type: ignore[no-untyped-def]
) -> None:
    hami, scheduler = stack
    node = gpu_node(pod_resources=False)
    for i in range(3):
        create_pod(control_plane, namespace, gpu_pod(f"p{i}", scheduler, memory=2000 + 1000 * i, cores=10 + i))
    admitted: set[str] = set()
    while len(admitted) < 3:
        # The scheduler holds HAMi's lock from bind until Allocate: one pod at a time waits.
        waiting = wait_for(lambda: [p for p in pods_in(control_plane, namespace)
                                    if p["spec"].get("nodeName") and p["metadata"]["name"] not in admitted],
                           timeout=90, message="the next pod bound")
        assert len(waiting) == 1, [p["metadata"]["name"] for p in waiting]
        (pod,) = waiting
        name = pod["metadata"]["name"]
        assert (_lock(control_plane, node.node) or "").endswith(f",{namespace},{name}"), hami.log_tail()
        envs = node.admit(namespace, name).envs("main")
        wanted = own_limits(pod)
        assert {k: envs[k] for k in wanted} == wanted, (name, node.log_tail())
        admitted.add(name)
    wait_for(lambda: _lock(control_plane, node.node) is None, timeout=10, message="the lock released")
