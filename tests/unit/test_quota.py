"""GPU quotas per namespace: reading ResourceQuota as HAMi does, usage from decisions, the
engine's ResourceQuotaNotFit per device, and the webhook's check."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from hami.annotations.node_register import encode_node_devices
from hami.annotations.pod_devices import decision_annotations
from hami.config import HamiConfig
from hami.model import ContainerDevice, DeviceInfo
from hami.scheduler.cache import ClusterCache
from hami.scheduler.engine import PolicyDefaults, schedule
from hami.scheduler.quota import NO_QUOTA, QuotaBook, QuotaLeft, VendorRoom, pod_usage
from hami.scheduler.state import ClusterState
from hami.vendors.registry import VendorSet
from hami.webhook.mutate import WebhookOptions, mutate
from tests.unit.engine_helpers import container, gpu, node, pod

VENDORS = VendorSet.from_config(HamiConfig())


def gpumem(value: Any, name: str = "q", namespace: str = "team") -> dict[str, Any]:
    return {"kind": "ResourceQuota", "metadata": {"name": name, "namespace": namespace},
            "spec": {"hard": {"limits.nvidia.com/gpumem": value}}}


def nvidia(mem: int, cores: int = 0, *uuids: str) -> tuple[tuple[ContainerDevice, ...], ...]:
    return (tuple(ContainerDevice(u, "NVIDIA", mem, cores) for u in uuids),)


# ---- reading ResourceQuota -----------------------------------------------------------------


def test_limits_are_read_in_the_containers_unit_as_kubernetes_stores_them() -> None:
    book = QuotaBook(VENDORS)
    obj = {"metadata": {"name": "q", "namespace": "team"},
           "spec": {"hard": {"limits.nvidia.com/gpumem": "20k", "limits.nvidia.com/gpucores": "150",
                             "requests.nvidia.com/gpu": "4", "limits.memory": "10Gi", "pods": "10"}}}
    assert book.upsert_quota(obj) == []
    assert book.snapshot() == {"team": {"nvidia.com/gpumem": (0, 20000), "nvidia.com/gpucores": (0, 150)}}
    left = book.left_for("team")
    assert left.room("NVIDIA") == VendorRoom("NVIDIA", 20000, 150)
    assert book.left_for("other") is NO_QUOTA


def test_memory_factor_scales_the_limit_as_hami_does() -> None:
    book = QuotaBook(VENDORS)
    obj = {"metadata": {"name": "q", "namespace": "team"}, "spec": {"hard": {"limits.iluvatar.ai/BI-V100.vMem": 8}}}
    assert book.upsert_quota(obj) == []
    room = book.left_for("team").room("BI-V100")
    assert room is not None and room.memory == 8 * 256 and room.cores is None
    assert book.snapshot()["team"]["iluvatar.ai/BI-V100.vMem"] == (0, 8)  # as written, for the metric


def test_the_smallest_cap_of_several_quotas_counts() -> None:
    book = QuotaBook(VENDORS)
    book.upsert_quota(gpumem(20000, "a"))
    book.upsert_quota(gpumem(12000, "b"))
    assert book.left_for("team").room("NVIDIA") == VendorRoom("NVIDIA", 12000, None)
    book.delete_quota(gpumem(12000, "b"))
    assert book.left_for("team").room("NVIDIA") == VendorRoom("NVIDIA", 20000, None)
    book.replace_quotas([])
    assert book.left_for("team") is NO_QUOTA


@pytest.mark.parametrize(("value", "words"), [
    ("20Gi", "byte-style quantity"),
    ("1500m", "not a whole"),
    ("-5", "not a whole, non-negative"),
    ("lots", "not a number"),
])
def test_a_limit_in_units_we_do_not_understand_is_ignored_with_a_message(value: str, words: str) -> None:
    book = QuotaBook(VENDORS)
    problems = book.upsert_quota(gpumem(value))
    assert len(problems) == 1
    assert "ResourceQuota team/q: limits.nvidia.com/gpumem" in problems[0] and words in problems[0]
    assert problems[0].endswith("this entry is ignored")
    assert book.left_for("team") is NO_QUOTA


def test_any_whole_quantity_is_understood() -> None:
    book = QuotaBook(VENDORS)
    assert book.upsert_quota(gpumem("2.5k")) == []
    assert book.left_for("team").room("NVIDIA") == VendorRoom("NVIDIA", 2500, None)


def test_a_zero_limit_blocks_everything() -> None:
    book = QuotaBook(VENDORS)
    book.upsert_quota(gpumem(0))
    assert book.left_for("team").room("NVIDIA") == VendorRoom("NVIDIA", 0, None)


# ---- usage from decisions --------------------------------------------------------------------


def test_usage_is_per_device_amount_times_devices_and_init_containers_collapse() -> None:
    two = nvidia(3000, 30, "g0", "g1")
    assert pod_usage(two, 0) == {"NVIDIA": [6000, 60]}
    # An init container (5000 on g0) before an app container (3000 on g0, 3000 on g1): per
    # device the larger of the two, so 5000 + 3000.
    with_init = ((ContainerDevice("g0", "NVIDIA", 5000, 0),),
                 (ContainerDevice("g0", "NVIDIA", 3000, 0), ContainerDevice("g1", "NVIDIA", 3000, 0)))
    assert pod_usage(with_init, 1) == {"NVIDIA": [8000, 0]}
    # A sidecar runs beside the app containers: added, not collapsed.
    assert pod_usage(with_init, 1, frozenset({0})) == {"NVIDIA": [11000, 0]}


def test_usage_counts_decisions_and_frees_them() -> None:
    book = QuotaBook(VENDORS)
    book.upsert_quota(gpumem(20000))
    book.count_pod("team/a", nvidia(3000, 0, "g0", "g1"))
    book.count_pod("team/b", nvidia(5000, 0, "g2"))
    book.count_pod("other/c", nvidia(7000, 0, "g3"))
    assert book.snapshot()["team"]["nvidia.com/gpumem"] == (11000, 20000)
    assert book.left_for("team").room("NVIDIA") == VendorRoom("NVIDIA", 9000, None)
    # Its own decision does not count against a pod being decided again.
    assert book.left_for("team", exclude="team/a").room("NVIDIA") == VendorRoom("NVIDIA", 15000, None)
    book.count_pod("team/a", nvidia(1000, 0, "g0"))  # moved: replaced, not added
    assert book.snapshot()["team"]["nvidia.com/gpumem"] == (6000, 20000)
    book.count_pod("team/a", None)
    book.count_pod("team/b", None)
    assert book.snapshot()["team"]["nvidia.com/gpumem"] == (0, 20000)
    assert book.snapshot()["other"] == {"nvidia.com/gpumem": (7000, None)}  # used without a quota


# ---- the engine refuses what would go over ----------------------------------------------------


def room(memory: int | None = None, cores: int | None = None) -> QuotaLeft:
    return QuotaLeft("team", (VendorRoom("NVIDIA", memory, cores),))


def test_the_engine_refuses_a_pod_over_quota_with_hamis_reason() -> None:
    state = ClusterState([node("n1", gpu("a0"), gpu("a1")), node("n2", gpu("b0"))])
    two = pod("p", container(gpu=2, mem=4000, cores=10))
    assert schedule(state, two, quota=room(8000)).node == "n1"
    decision = schedule(state, two, quota=room(7999))
    assert decision.node is None
    assert decision.reasons["n1"] == "1/2 ResourceQuotaNotFit, 1/2 AllocatedCardsInsufficientRequest"
    assert decision.reasons["n2"] == "1/1 NodeInsufficientDevice"
    assert schedule(state, two, quota=room(None, 19)).node is None
    assert schedule(state, two, quota=room(None, 20)).node == "n1"


def test_a_percentage_ask_takes_the_device_that_fits_the_quota() -> None:
    # 50 % of a 24000 MiB GPU is over a 10000 MiB quota; 50 % of the 16000 one is not.
    state = ClusterState([node("n1", gpu("small", mem=16000), gpu("big", mem=24000))])
    half = pod("p", container(gpu=1, pct=50))
    assert schedule(state, half).allocation[0][0].uuid == "big"  # equal scores: the higher index
    decision = schedule(state, half, quota=room(10000))
    assert decision.node == "n1" and decision.allocation[0][0].uuid == "small"
    assert schedule(state, half, quota=room(7999)).reasons["n1"] == "2/2 ResourceQuotaNotFit"


def test_containers_of_one_pod_count_together() -> None:
    state = ClusterState([node("n1", gpu("a0"), gpu("a1"))])
    both = pod("p", container("x", gpu=1, mem=6000), container("y", gpu=1, mem=6000))
    assert schedule(state, both, quota=room(12000)).node == "n1"
    assert schedule(state, both, quota=room(11999)).node is None
    # An init container before them counts per device with the larger of the two.
    with_init = pod("p", container("x", gpu=1, mem=6000), init=(container("i", gpu=1, mem=9000),))
    assert schedule(state, with_init, quota=room(9000)).node == "n1"
    assert schedule(state, with_init, quota=room(8999)).node is None


def test_a_vendor_without_a_quota_is_not_capped() -> None:
    state = ClusterState([node("n1", gpu("a0"))])
    other = QuotaLeft("team", (VendorRoom("DCU", 0, 0),))
    assert schedule(state, pod("p", container(gpu=1, mem=6000)), quota=other).node == "n1"


# ---- the webhook's check (HAMi's fitResourceQuota) ---------------------------------------------


def review_pod(namespace: str = "team", **limits: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace},
            "spec": {"containers": [{"name": "main", "resources": {"limits": dict(limits)}}]}}


def test_the_webhook_denies_a_pod_that_would_exceed_the_quota() -> None:
    book = QuotaBook(VENDORS)
    book.upsert_quota(gpumem(10000))
    book.count_pod("team/a", nvidia(4000, 0, "g0"))
    options = WebhookOptions(quota=book)
    ok = mutate(review_pod(**{"nvidia.com/gpu": 2, "nvidia.com/gpumem": 3000}), VENDORS, options)
    assert ok.allowed
    over = mutate(review_pod(**{"nvidia.com/gpu": 2, "nvidia.com/gpumem": 3001}), VENDORS, options)
    assert not over.allowed
    assert over.message == ("exceeding resource quota: the pod asks 6002 MiB of nvidia.com/gpumem in namespace team, "
                            "which has 6000 left (limits.nvidia.com/gpumem: 10000 in ResourceQuota q)")
    # Other namespaces, and a webhook without the scheduler's book, are not checked.
    assert mutate(review_pod("other", **{"nvidia.com/gpu": 2, "nvidia.com/gpumem": 9000}), VENDORS, options).allowed
    assert mutate(review_pod(**{"nvidia.com/gpu": 2, "nvidia.com/gpumem": 9000}), VENDORS, WebhookOptions()).allowed


# ---- the scheduler's cache feeds the book ------------------------------------------------------


def test_the_cache_counts_decisions_not_holds_and_decides_within_the_quota() -> None:
    cache = ClusterCache(HamiConfig())
    book = QuotaBook(cache.vendors)
    cache.quota = book
    cache.listeners.append(book.on_holding)
    devices = [DeviceInfo(id=f"g{i}", count=10, devmem=24000, devcore=100, type="NVIDIA-A10", index=i)
               for i in range(2)]
    cache.replace_nodes([{"metadata": {"name": "n1", "annotations": {
        "hami.io/node-nvidia-register": encode_node_devices(devices)}}}])
    book.upsert_quota(gpumem(10000))

    def gpu_pod(name: str, mem: int) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "team"}, "spec": {"containers": [
            {"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem}}}]}}

    running = gpu_pod("running", 6000)
    running["spec"]["nodeName"] = "n1"
    running["metadata"]["annotations"] = decision_annotations("n1", nvidia(6000, 0, "g0"), datetime(2026, 1, 1))
    cache.replace_pods([running])
    assert book.snapshot()["team"]["nvidia.com/gpumem"] == (6000, 10000)
    # A hold (devices kept for a preempting pod) is not a decision: not counted.
    cache.hold("team/held", "n1", nvidia(3000, 0, "g1"), 0)
    assert book.snapshot()["team"]["nvidia.com/gpumem"] == (6000, 10000)
    # Decisions see the room left: 4000 fits, 4001 is refused with HAMi's reason.
    assert cache.decide(gpu_pod("small", 4000), ["n1"], PolicyDefaults()).node == "n1"
    refused = cache.decide(gpu_pod("large", 4001), ["n1"], PolicyDefaults())
    assert refused.node is None and refused.reasons["n1"] == "2/2 ResourceQuotaNotFit"
    # Deleting the running pod frees its share.
    cache.delete_pod(running)
    assert book.snapshot()["team"]["nvidia.com/gpumem"] == (0, 10000)
    assert cache.decide(gpu_pod("large", 4001), ["n1"], PolicyDefaults()).node == "n1"
