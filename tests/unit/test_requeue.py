"""Which refused pods the scheduler asks kube-scheduler to retry, and when (hami.scheduler.requeue):
/filter and the cache are the real ones. The write itself, and kube-scheduler acting on it, are
checked against the real control plane in tests/integration/test_hami_scheduler.py."""

from __future__ import annotations

from typing import Any

import pytest

from hami.config import HamiConfig
from hami.scheduler.cache import ClusterCache
from hami.scheduler.extender import Extender
from hami.scheduler.quota import QuotaBook
from hami.scheduler.requeue import RequeueCollector, Requeuer
from tests.unit.test_extender_http import gpu, node, pod
from tests.unit.test_preempt_shell import running
from tests.unit.test_quota import gpumem


class Cluster:
    """One node, n1, with one 16,000 MiB GPU g0; the extender refuses and the requeuer listens."""

    def __init__(self, *holders: tuple[str, int]):
        self.cache = ClusterCache(HamiConfig())
        self.quota = QuotaBook(self.cache.vendors)
        self.cache.quota = self.quota
        self.cache.listeners.append(self.quota.on_holding)
        self.cache.replace_nodes([node("n1", gpu("g0"))])
        self.holders = {name: running(name, mem, "g0", 0) for name, mem in holders}
        self.cache.replace_pods(list(self.holders.values()))
        self.extender = Extender(self.cache, api=None, locker=None)
        self.requeuer = Requeuer(self.cache, None, self.extender.decide_lock, self.extender.is_leader)
        self.extender.requeuer = self.requeuer
        self.requeuer.listen(self.quota)

    def filter(self, name: str, mem: int) -> list[str]:
        placed: list[str] = self.extender.filter({"Pod": pod(name, mem), "NodeNames": ["n1"]})["NodeNames"]
        return placed

    def leaves(self, name: str) -> None:
        self.cache.delete_pod(self.holders.pop(name))

    def fitting(self) -> list[str]:
        return [refusal.key for refusal in self.requeuer.fitting()]


def test_a_refused_pod_is_due_once_a_holder_leaves_and_not_before() -> None:
    cluster = Cluster(("a", 12000))
    assert cluster.filter("b", 8000) == []
    assert cluster.requeuer.waiting() == ["t/b"]
    assert cluster.fitting() == []  # no room seen yet
    cluster.leaves("a")
    assert cluster.fitting() == ["t/b"]
    assert cluster.fitting() == []  # that room was looked at already


def test_room_too_small_keeps_the_pod_waiting_for_more() -> None:
    cluster = Cluster(("a", 6000), ("c", 6000))
    assert cluster.filter("b", 12000) == []
    cluster.leaves("a")  # 10,000 free: not enough
    assert cluster.fitting() == []
    assert cluster.requeuer.waiting() == ["t/b"]
    cluster.leaves("c")
    assert cluster.fitting() == ["t/b"]


def test_a_pod_placed_meanwhile_is_forgotten() -> None:
    cluster = Cluster(("a", 12000))
    assert cluster.filter("b", 8000) == []
    cluster.leaves("a")
    assert cluster.filter("b", 8000) == ["n1"]  # kube-scheduler's own retry came first
    assert cluster.requeuer.waiting() == []
    assert cluster.fitting() == []


def test_a_pod_deleted_meanwhile_is_forgotten() -> None:
    cluster = Cluster(("a", 12000))
    assert cluster.filter("b", 8000) == []
    cluster.cache.delete_pod(pod("b", 8000))
    cluster.leaves("a")
    assert cluster.fitting() == []
    assert cluster.requeuer.waiting() == []


def test_a_node_whose_devices_grow_makes_room() -> None:
    cluster = Cluster(("a", 12000))
    assert cluster.filter("b", 8000) == []
    cluster.cache.upsert_node(node("n1", gpu("g0"), gpu("g1", index=1)))
    assert cluster.fitting() == ["t/b"]


def test_a_raised_quota_makes_room_in_its_namespace() -> None:
    cluster = Cluster(("a", 8000))
    cluster.quota.upsert_quota(gpumem(10000, namespace="t"))
    assert cluster.filter("b", 6000) == []  # the GPU has room, the quota has not
    cluster.quota.upsert_quota(gpumem(10000, namespace="t"))  # unchanged: no room
    assert cluster.fitting() == []
    cluster.quota.upsert_quota(gpumem(20000, namespace="t"))
    assert cluster.fitting() == ["t/b"]


def test_room_in_another_namespace_on_another_node_is_not_looked_at() -> None:
    cluster = Cluster(("a", 12000))
    assert cluster.filter("b", 8000) == []
    cluster.cache.upsert_node(node("n2", gpu("g9")))
    other = running("x", 4000, "g9", 0)
    other["metadata"]["namespace"] = "elsewhere"
    other["spec"]["nodeName"] = "n2"
    other["metadata"]["annotations"]["hami.io/vgpu-node"] = "n2"
    cluster.cache.upsert_pod(other)
    cluster.requeuer.fitting()  # the new node's room: b was not offered n2
    cluster.cache.delete_pod(other)
    checked: list[Any] = []
    cluster.cache.decide = lambda *a, **k: checked.append(a)  # type: ignore[method-assign]
    assert cluster.fitting() == [] and checked == []
    assert cluster.requeuer.waiting() == ["t/b"]


@pytest.mark.parametrize("leading", [True, False])
def test_without_an_api_or_the_lead_nothing_is_written_and_the_room_is_used_up(leading: bool) -> None:
    cluster = Cluster(("a", 12000))
    assert cluster.filter("b", 8000) == []
    cluster.leaves("a")
    if not leading:
        cluster.extender.is_leader.clear()
    assert cluster.requeuer.tick() == []
    assert cluster.fitting() == []


def test_a_quota_share_freed_on_one_node_makes_room_on_the_others() -> None:
    cluster = Cluster(("a", 8000))  # a holds 8,000 of the namespace's 10,000 on n1
    cluster.quota.upsert_quota(gpumem(10000, namespace="t"))
    cluster.cache.upsert_node(node("n2", gpu("g9")))
    cluster.requeuer.fitting()  # n2's arrival
    refused = cluster.extender.filter({"Pod": pod("b", 6000), "NodeNames": ["n2"]})["NodeNames"]
    assert refused == []  # n2 has the room, the quota has not
    cluster.leaves("a")  # on n1, which b was not offered: the quota share counts
    assert cluster.fitting() == ["t/b"]


def test_the_metrics_count_the_waiting_pods() -> None:
    cluster = Cluster(("a", 12000))
    collector = RequeueCollector(cluster.requeuer)

    def values() -> dict[str, float]:
        return {s.name: s.value for family in collector.collect() for s in family.samples}

    assert values() == {"hami_scheduler_refused_pods": 0.0, "hami_scheduler_retry_requests_total": 0.0}
    assert cluster.filter("b", 8000) == [] and cluster.filter("c", 9000) == []
    assert values()["hami_scheduler_refused_pods"] == 2.0

