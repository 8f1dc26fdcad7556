"""Regression tests for defects found by trying the engine and webhook as a hostile user would."""

from __future__ import annotations

from typing import Any

from hami.config import HamiConfig, NvidiaConfig
from hami.errors import HamiError
from hami.scheduler.engine import schedule
from hami.scheduler.state import ClusterState
from hami.vendors.registry import VendorSet
from hami.webhook.mutate import WebhookOptions, mutate
from tests.unit.engine_helpers import container, gpu, node, place, pod

VENDORS = VendorSet.from_config(HamiConfig())


def sidecar_pod(name: str, sidecar_mem: int, app_mem: int) -> Any:
    sidecar = {**container("sidecar", gpu=1, mem=sidecar_mem, cores=10), "restartPolicy": "Always"}
    return pod(name, container("app", gpu=1, mem=app_mem, cores=10), init=(sidecar,))


def test_native_sidecar_holds_its_device_beside_the_app() -> None:
    # A sidecar runs for the pod's whole life: 6000 + 6000 MiB do not fit one 8000 MiB GPU.
    state = ClusterState([node("n1", gpu("g0", mem=8000))])
    decision = schedule(state, sidecar_pod("p", 6000, 6000))
    assert decision.node is None
    assert decision.reasons == {"n1": "1/1 CardInsufficientMemory"}
    # An ordinary init container of 6000 finishes first: it fits, and the pod holds 6000 at its peak.
    ordinary = pod("q", container("app", gpu=1, mem=6000, cores=10), init=(container("init", gpu=1, mem=6000),))
    assert place(state, ordinary).node == "n1"
    assert state.usedmem.tolist() == [6000]


def test_sidecar_usage_counts_from_the_decision_after_a_restart() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=16000), gpu("g1", mem=16000))])
    request = sidecar_pod("p", 4000, 5000)
    decision = place(state, request)
    assert decision.node == "n1"
    # Both on one GPU under spread? No: the sidecar takes one, the app sees it and spreads to the other.
    rebuilt = ClusterState([node("n1", gpu("g0", mem=16000), gpu("g1", mem=16000))])
    rebuilt.add_pod(request.key, "n1", decision.allocation, request.init_count, sidecars=request.sidecars)
    assert sorted(rebuilt.usedmem.tolist()) == sorted(state.usedmem.tolist())
    assert int(rebuilt.usedmem.sum()) == 9000


def test_a_sidecar_counts_for_later_init_containers() -> None:
    # sidecar 5000, then an ordinary init container of 5000, then a tiny app: on one 8000 GPU,
    # the init container runs while the sidecar runs: 10000 > 8000.
    state = ClusterState([node("n1", gpu("g0", mem=8000))])
    sidecar = {**container("sidecar", gpu=1, mem=5000, cores=10), "restartPolicy": "Always"}
    request = pod("p", container("app", gpu=1, mem=100, cores=10), init=(sidecar, container("init", gpu=1, mem=5000)))
    assert schedule(state, request).node is None


def test_zero_devices_ask_for_no_device() -> None:
    request = pod("p", container(gpu=0))
    assert not request.wants_devices
    assert not VENDORS.wants_devices({"spec": {"containers": [container(gpu=0)]}})
    verdict = mutate({"metadata": {"name": "p"}, "spec": {"containers": [container(gpu=0)]}}, NvidiaConfig())
    assert verdict.allowed and verdict.patch == []


def test_huge_quantities_are_refused_with_a_reason() -> None:
    for limits in ({"gpu": 1, "mem": "1e30"}, {"gpu": "1e30"}, {"gpu": 1, "mem": 3 * 10**9}):
        try:
            pod("p", container(**limits))
        except HamiError as exc:
            assert "larger than HAMi's limit" in str(exc)
        else:
            raise AssertionError(f"{limits} was accepted")
    verdict = mutate({"metadata": {"name": "p"}, "spec": {"containers": [container(gpu=1, mem="1e30")]}},
                     NvidiaConfig())
    assert not verdict.allowed and "larger than HAMi's limit" in verdict.message


def test_pods_for_another_scheduler_are_left_alone() -> None:
    for scheduler in ("volcano", "my-scheduler"):
        p = {"metadata": {"name": "p"}, "spec": {"schedulerName": scheduler, "containers": [container(gpu=1)]}}
        verdict = mutate(p, NvidiaConfig())
        assert verdict.allowed and verdict.patch == [], scheduler
    # default-scheduler is ours to take only when overwriting it is allowed.
    p = {"metadata": {"name": "p"}, "spec": {"schedulerName": "default-scheduler", "containers": [container(gpu=1)]}}
    assert mutate(p, NvidiaConfig(), WebhookOptions(overwrite_default_scheduler=False)).patch == []
    assert mutate(p, NvidiaConfig()).patch  # cores 100 and our scheduler name


def test_zero_counts_of_any_vendor_leave_the_pod_alone() -> None:
    for limits in ({"hygon.com/dcunum": 0}, {"iluvatar.ai/BI-V150-vgpu": 0}, {"birentech.com/gpu": 0},
                   {"enflame.com/gcu": 0}):
        p = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}
        verdict = mutate(p, VENDORS)
        assert verdict.allowed and verdict.patch == [], limits
        assert not VENDORS.wants_devices(p)
