"""The extender in-process against the real API server, in the races a slow API server or a
busy cluster brings: a decision write that lands late, pods deleted and recreated under one name,
relists, and HAMi's older node locks."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hami.annotations import keys
from hami.annotations.pod_devices import pod_allocation_from_annotations
from hami.config import HamiConfig
from hami.scheduler.cache import ClusterCache
from hami.scheduler.extender import Extender
from hami.scheduler.kube import AsyncKubeApi, make_async_client
from hami.scheduler.nodelock import NodeLocker
from tests.cluster import ControlPlane
from tests.integration.event_loop import LoopThread
from tests.integration.hami_stack import create_pod, gpu_node_annotations, gpu_pod


class SlowFirstBinding(AsyncKubeApi):
    """The real API, but the first binding reaches it `delay` seconds late, as when the API
    server is slow to answer and kube-scheduler has moved on."""

    def __init__(self, client: Any, delay: float) -> None:
        super().__init__(client)
        self.delay = delay
        self.delayed = False

    async def bind(self, namespace: str, name: str, uid: str | None, node: str,
                   annotations: dict[str, str] | None = None, resource_version: str | None = None) -> None:
        if not self.delayed:
            self.delayed = True
            await asyncio.sleep(self.delay)
        await super().bind(namespace, name, uid, node, annotations, resource_version)


def _nodes(control_plane: ControlPlane, namespace: str, add_node: Any, count: int, **kwargs: Any) -> list[str]:
    names = [f"{namespace}-{i}" for i in range(count)]
    for n in names:
        add_node(n, annotations=gpu_node_annotations(n, gpus=1, **kwargs))
    return names


def _cache(control_plane: ControlPlane, nodes: list[str]) -> ClusterCache:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([control_plane.api("GET", f"/api/v1/nodes/{n}") for n in nodes])
    cache.replace_pods([])
    return cache


def _bind_args(pod: dict[str, Any], node: str) -> dict[str, Any]:
    metadata = pod["metadata"]
    return {"PodName": metadata["name"], "PodNamespace": metadata["namespace"], "PodUID": metadata["uid"],
            "Node": node}


@pytest.mark.timeout(120)
def test_a_slow_bind_and_its_retry_to_another_node_leave_one_consistent_decision(
    control_plane: ControlPlane, namespace: str, add_node: Any, loop: LoopThread
) -> None:
    # The defect: a decision written apart from the binding (in the background at /filter)
    # could land after a later bind for another node, leaving the pod bound to one node while
    # its annotations named another. Now the decision travels in the Binding itself.
    first, second = _nodes(control_plane, namespace, add_node, 2)
    cache = _cache(control_plane, [first, second])
    api = SlowFirstBinding(make_async_client(str(control_plane.kubeconfig)), delay=3.0)
    extender = Extender(cache, api, NodeLocker(api))
    pod = create_pod(control_plane, namespace, gpu_pod("p", "nobody", memory=1000, cores=10))
    cache.upsert_pod(pod)
    answer = loop.call(extender.filter, {"Pod": pod, "NodeNames": [first, second]})
    assert answer["NodeNames"] == [first, second]
    holding = cache.holding(cache.id_for(namespace, "p"))
    assert holding is not None and holding.node == first
    after_filter = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/p")
    assert keys.VGPU_NODE not in (after_filter["metadata"].get("annotations") or {})  # no write at /filter

    # kube-scheduler binds to our node; the API server is slow, kube-scheduler gives up and
    # binds the pod to the other fitting node while the first binding is still on its way.
    slow = loop.start(extender.bind(_bind_args(pod, first)))
    time.sleep(0.5)
    assert loop.run(extender.bind(_bind_args(pod, second))) == {"Error": ""}
    late = loop.run(asyncio.wait_for(slow, 30))
    assert late == {"Error": f"pod {namespace}/p is already bound to {second}"}

    after = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/p")
    assert after["spec"]["nodeName"] == second
    annotations = after["metadata"]["annotations"]
    assert annotations[keys.VGPU_NODE] == second and annotations[keys.BIND_PHASE] == "allocating"
    ((device,),) = pod_allocation_from_annotations(annotations) or ()
    assert device.uuid == f"GPU-{second}-0"
    holding = cache.holding(cache.id_for(namespace, "p"))
    assert holding is not None and holding.node == second


@pytest.mark.timeout(120)
def test_hamis_bare_timestamp_lock_is_honoured_until_it_expires(
    control_plane: ControlPlane, namespace: str, add_node: Any, loop: LoopThread
) -> None:
    # Older HAMi writes the lock as a bare RFC3339 time, naming no pod.
    (node,) = _nodes(control_plane, namespace, add_node, 1, matched_by_kubelet=False)
    cache = _cache(control_plane, [node])
    api = AsyncKubeApi(make_async_client(str(control_plane.kubeconfig)))
    extender = Extender(cache, api, NodeLocker(api, stale_after=4))
    locked_at = datetime.now(UTC)
    control_plane.api("PATCH", f"/api/v1/nodes/{node}",
                      {"metadata": {"annotations": {keys.NODE_LOCK: locked_at.strftime("%Y-%m-%dT%H:%M:%SZ")}}},
                      content_type="application/merge-patch+json")
    pod = create_pod(control_plane, namespace, gpu_pod("p", "nobody", memory=1000, cores=10))
    cache.upsert_pod(pod)
    assert loop.call(extender.filter, {"Pod": pod, "NodeNames": [node]})["NodeNames"] == [node]
    assert loop.run(extender.bind(_bind_args(pod, node))) == {"Error": ""}
    # Taken only once older than stale_after (the lock's time has whole seconds).
    assert datetime.now(UTC) - locked_at.replace(microsecond=0) > timedelta(seconds=4)
    held = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"]["annotations"][keys.NODE_LOCK]
    assert held.endswith(f",{namespace},p")

    # An expired one is taken over at once.
    control_plane.api("PATCH", f"/api/v1/nodes/{node}",
                      {"metadata": {"annotations": {keys.NODE_LOCK: "2026-01-01T00:00:00Z"}}},
                      content_type="application/merge-patch+json")
    second = create_pod(control_plane, namespace, gpu_pod("q", "nobody", memory=1000, cores=10))
    cache.upsert_pod(second)
    assert loop.call(extender.filter, {"Pod": second, "NodeNames": [node]})["NodeNames"] == [node]
    started = time.monotonic()
    assert loop.run(extender.bind(_bind_args(second, node))) == {"Error": ""}
    assert time.monotonic() - started < 2
