"""The scheduler's cache matches pods by UID: events about one pod never touch another of the
same name, a relist keeps what was decided after it was asked for, and a pod already deleted
holds nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.annotations.pod_devices import decision_annotations
from hami.config import HamiConfig
from hami.model import DeviceInfo
from hami.scheduler.cache import ClusterCache, pod_id
from hami.scheduler.engine import PolicyDefaults
from hami.scheduler.extender import Extender


def node(name: str, mem: int = 8000) -> dict[str, Any]:
    device = DeviceInfo(id=f"{name}-g0", count=10, devmem=mem, devcore=100, type="NVIDIA-A10", index=0)
    return {"metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices([device])}}}


def pod(name: str, uid: str, mem: int = 6000, annotations: dict[str, str] | None = None,
        node_name: str | None = None) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem, "nvidia.com/gpucores": 10}
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": "t", "uid": uid, "annotations": dict(annotations or {})},
            "spec": spec}


def decided(cache: ClusterCache, p: dict[str, Any], node_name: str | None = None) -> dict[str, Any]:
    """The pod as the watch shows it once our decision is written on it (and, with node_name, bound)."""
    decision = cache.decide(p, None, PolicyDefaults())
    assert decision.node is not None
    annotations = dict(decision_annotations(decision.node, decision.allocation, datetime.now(UTC)))
    return pod(p["metadata"]["name"], p["metadata"]["uid"], annotations=annotations, node_name=node_name)


def used(cache: ClusterCache) -> int:
    return int(cache.state().usedmem[0])


def filter_(extender: Extender, p: dict[str, Any]) -> dict[str, Any]:
    return extender.filter({"Pod": p, "NodeNames": ["n1"]})


def test_a_late_deleted_event_of_an_old_pod_keeps_the_new_pods_decision() -> None:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1")])
    cache.replace_pods([])
    extender = Extender(cache, api=None, locker=None)
    old = decided(cache, pod("p", "uid-old"), node_name="n1")
    cache.upsert_pod(old)
    assert used(cache) == 6000

    # The pod is deleted and created again under the same name (so the old one is gone from the
    # API server); kube-scheduler sees the new one before our watch delivers the old one's deletion.
    new = pod("p", "uid-new", mem=2000)
    assert filter_(extender, new)["NodeNames"] == ["n1"]
    assert used(cache) == 2000
    # Late events of the old pod: its last update (being deleted), then its deletion.
    cache.upsert_pod({**old, "metadata": {**old["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert used(cache) == 2000
    cache.delete_pod(old)
    assert used(cache) == 2000
    holding = cache.holding(pod_id(new))
    assert holding is not None and holding.uid == "uid-new"
    # What is left is really left: 6000 MiB fit, 6001 do not.
    assert filter_(extender, pod("q", "uid-q", mem=6001))["NodeNames"] == []
    assert filter_(extender, pod("q", "uid-q", mem=6000))["NodeNames"] == ["n1"]


def test_a_relist_keeps_decisions_made_after_it_was_asked_for() -> None:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1")])
    cache.replace_pods([])
    extender = Extender(cache, api=None, locker=None)
    before = pod("before", "uid-b", mem=3000)
    assert filter_(extender, before)["NodeNames"] == ["n1"]  # then the pod is deleted while the watch is down
    asked = time.monotonic()
    after = pod("after", "uid-a", mem=4000)  # created after the list was asked for
    assert filter_(extender, after)["NodeNames"] == ["n1"]
    cache.replace_pods([], listed_at=asked)  # neither pod is in the list
    assert cache.holding(pod_id(before)) is None
    assert cache.holding(pod_id(after)) is not None
    assert used(cache) == 4000


def test_a_filter_for_a_pod_already_deleted_holds_nothing() -> None:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1")])
    cache.replace_pods([])
    extender = Extender(cache, api=None, locker=None)
    gone = pod("gone", "uid-g")
    cache.upsert_pod(gone)
    cache.delete_pod(gone)
    # kube-scheduler's cache lags ours: it still asks about the pod.
    answer = filter_(extender, gone)
    assert answer["NodeNames"] == [] and "was deleted" in answer["Error"]
    assert used(cache) == 0
    cache.upsert_pod(gone)  # a copy read before the deletion (a bind's GET racing it) is ignored
    assert cache.holdings() == {}


def test_pods_are_kept_by_name_with_their_uid() -> None:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1")])
    p = decided(cache, pod("p", "uid-1"), node_name="n1")
    cache.replace_pods([p])
    assert cache.id_for("t", "p") == "t/p" == pod_id(p)
    (holding,) = cache.holdings().values()
    assert (holding.namespace, holding.name, holding.uid) == ("t", "p", "uid-1")
