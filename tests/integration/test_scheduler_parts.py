"""The scheduler's parts in-process against the real API server: the informer's relist on
410 Gone, the node lock's saved read, and binds that start from the watch's copy of a pod."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from lightkube.resources.core_v1 import ConfigMap

from hami.annotations import keys
from hami.annotations.pod_devices import decision_annotations
from hami.config import HamiConfig
from hami.scheduler.cache import ClusterCache, pod_key
from hami.scheduler.engine import PolicyDefaults
from hami.scheduler.extender import Extender
from hami.scheduler.informer import AsyncInformer
from hami.scheduler.kube import AsyncKubeApi, KubeApi, make_async_client, make_client
from hami.scheduler.nodelock import NodeLocker
from tests.cluster import ControlPlane, wait_for
from tests.integration.event_loop import LoopThread
from tests.integration.hami_stack import create_pod, gpu_node_annotations, gpu_pod


class CountingApi(AsyncKubeApi):
    """The real API, counting the reads the scheduler makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node_reads = 0
        self.pod_reads = 0

    async def get_node(self, name: str) -> dict[str, Any] | None:
        self.node_reads += 1
        return await super().get_node(name)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.pod_reads += 1
        return await super().get_pod(namespace, name)


@pytest.fixture
def api(control_plane: ControlPlane) -> CountingApi:
    return CountingApi(make_async_client(str(control_plane.kubeconfig)))


class CompactedAfterFirstList(AsyncInformer):
    """An informer whose first list is followed by more writes and an etcd compaction, as when
    a watch was down for longer than the API server keeps history."""

    def __init__(self, control_plane: ControlPlane, namespace: str, *args: Any) -> None:
        super().__init__(*args)
        self.control_plane, self.namespace = control_plane, namespace

    async def _list(self) -> str:
        version = await super()._list()
        if self.relists == 1:
            # Two writes, so that the first event after `version` is compacted away too.
            for name in ("written-meanwhile", "and-another"):
                self.control_plane.api("POST", f"/api/v1/namespaces/{self.namespace}/configmaps",
                                       {"metadata": {"name": name}})
            assert self.control_plane.compact_etcd() >= int(version) + 2
        return version


@pytest.mark.timeout(120)
def test_informer_relists_on_410_gone_and_keeps_watching(
    control_plane: ControlPlane, namespace: str, loop: LoopThread
) -> None:
    listed: list[list[str]] = []
    seen: list[str] = []
    informer = CompactedAfterFirstList(
        control_plane, namespace, make_async_client(str(control_plane.kubeconfig)), ConfigMap,
        lambda items, _: listed.append([pod_key(i) for i in items]), lambda obj: seen.append(pod_key(obj)),
        lambda obj: None)
    running = loop.start(informer.run())
    try:
        # The watch from the compacted version is answered 410 Gone: the informer lists again
        # (which brings what was written meanwhile) and watches on from the new list.
        wait_for(lambda: informer.relists >= 2, timeout=60, message="a relist after 410 Gone")
        assert f"{namespace}/written-meanwhile" in listed[1]
        control_plane.api("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "after"}})
        wait_for(lambda: f"{namespace}/after" in seen, timeout=30, message="the new object from the watch")
        assert informer.relists == 2
    finally:
        loop.loop.call_soon_threadsafe(running.cancel)


@pytest.mark.timeout(120)
def test_node_lock_after_our_release_needs_no_read_unless_the_node_changed(
    control_plane: ControlPlane, namespace: str, add_node: Any, api: CountingApi, loop: LoopThread
) -> None:
    node = f"{namespace}-n"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1))
    locker = NodeLocker(api)

    version = loop.run(locker.lock(node, namespace, "first"))
    loop.run(locker.release(node, namespace, "first", version))
    assert api.node_reads == 1

    # The node is as our release left it: the next lock is one conditional PATCH.
    version = loop.run(locker.lock(node, namespace, "second"))
    assert api.node_reads == 1
    held = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"]["annotations"][keys.NODE_LOCK]
    assert held.endswith(f",{namespace},second")
    loop.run(locker.release(node, namespace, "second", version))

    # Someone else changed the node since (the device plugin's handshake): the saved version
    # conflicts, the lock reads the node and still takes it.
    control_plane.api("PATCH", f"/api/v1/nodes/{node}", {"metadata": {"annotations": {keys.NODE_HANDSHAKE: "x"}}},
                      content_type="application/merge-patch+json")
    version = loop.run(locker.lock(node, namespace, "third"))
    assert api.node_reads == 2
    held = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"]["annotations"][keys.NODE_LOCK]
    assert held.endswith(f",{namespace},third")
    loop.run(locker.release(node, namespace, "third", version))
    assert _unlocked(control_plane, node)


def _extender_with_pod(
    control_plane: ControlPlane, namespace: str, add_node: Any, api: CountingApi, name: str, node_count: int = 1
) -> tuple[Extender, ClusterCache, dict[str, Any], list[str]]:
    """New one-GPU nodes, and an extender whose cache has them and the watch's copy of a new,
    unbound pod decided for the first node."""
    nodes = [f"{namespace}-{i}" for i in range(node_count)]
    for n in nodes:
        add_node(n, annotations=gpu_node_annotations(n, gpus=1))
    node = nodes[0]
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([control_plane.api("GET", f"/api/v1/nodes/{n}") for n in nodes])
    cache.replace_pods([])
    extender = Extender(cache, api, NodeLocker(api))
    pod = create_pod(control_plane, namespace, gpu_pod(name, "nobody", memory=1000, cores=10))
    decision = cache.decide(pod, [node], PolicyDefaults())
    assert decision.node == node
    annotations = dict(decision_annotations(node, decision.allocation, datetime.now(UTC)))
    pod = control_plane.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}",
                            {"metadata": {"annotations": annotations}}, content_type="application/merge-patch+json")
    cache.upsert_pod(pod)
    return extender, cache, pod, nodes


def _unlocked(control_plane: ControlPlane, node: str) -> bool:
    return keys.NODE_LOCK not in control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"]["annotations"]


def _bind_args(pod: dict[str, Any], node: str) -> dict[str, Any]:
    metadata = pod["metadata"]
    return {"PodName": metadata["name"], "PodNamespace": metadata["namespace"], "PodUID": metadata["uid"],
            "Node": node}


@pytest.mark.timeout(120)
def test_bind_starts_from_the_watch_copy_of_the_pod(
    control_plane: ControlPlane, namespace: str, add_node: Any, api: CountingApi, loop: LoopThread
) -> None:
    extender, _, pod, (node,) = _extender_with_pod(control_plane, namespace, add_node, api, "p")

    assert loop.run(extender.bind(_bind_args(pod, node))) == {"Error": ""}
    assert api.pod_reads == 0
    bound = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/p")
    assert bound["spec"]["nodeName"] == node
    assert bound["metadata"]["annotations"][keys.BIND_PHASE] == "allocating"
    assert _unlocked(control_plane, node)


@pytest.mark.timeout(120)
def test_bind_of_a_pod_bound_since_the_watch_copy(
    control_plane: ControlPlane, namespace: str, add_node: Any, api: CountingApi, loop: LoopThread
) -> None:
    extender, cache, pod, (node, other) = _extender_with_pod(control_plane, namespace, add_node, api, "retried", 2)

    # The first bind went through but its answer was lost; the watch has not shown it yet.
    KubeApi(make_client(str(control_plane.kubeconfig))).bind(namespace, "retried", pod["metadata"]["uid"], node)
    assert cache.unbound_pod(cache.id_for(namespace, "retried")) is not None

    # kube-scheduler's retry to the same node is a success, and nothing is undone.
    assert loop.run(extender.bind(_bind_args(pod, node))) == {"Error": ""}
    after = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/retried")
    assert after["spec"]["nodeName"] == node
    assert after["metadata"]["annotations"][keys.VGPU_NODE] == node
    assert cache.holding(cache.id_for(namespace, "retried")) is not None
    assert _unlocked(control_plane, node)

    # A bind to another node is refused and leaves the pod's decision alone.
    result = loop.run(extender.bind(_bind_args(pod, other)))
    assert result["Error"] == f"pod {namespace}/retried is already bound to {node}"
    after = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/retried")
    assert after["metadata"]["annotations"][keys.VGPU_NODE] == node
    assert after["spec"]["nodeName"] == node
    holding = cache.holding(cache.id_for(namespace, "retried"))
    assert holding is not None and holding.node == node and holding.bound
    assert _unlocked(control_plane, other)


@pytest.mark.timeout(120)
def test_bind_rereads_a_pod_changed_since_the_watch_copy(
    control_plane: ControlPlane, namespace: str, add_node: Any, api: CountingApi, loop: LoopThread
) -> None:
    extender, _, pod, (node,) = _extender_with_pod(control_plane, namespace, add_node, api, "changed")
    control_plane.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/changed",
                      {"metadata": {"labels": {"touched": "yes"}}}, content_type="application/merge-patch+json")

    assert loop.run(extender.bind(_bind_args(pod, node))) == {"Error": ""}
    assert api.pod_reads >= 1  # the conditional write failed on the stale copy; the pod was read
    after = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/changed")
    assert after["spec"]["nodeName"] == node
    assert after["metadata"]["labels"]["touched"] == "yes"
    assert after["metadata"]["annotations"][keys.BIND_PHASE] == "allocating"
