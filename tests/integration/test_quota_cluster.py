"""GPU quotas per namespace on the real control plane: a ResourceQuota with
`limits.nvidia.com/gpumem` caps what the namespace's pods hold, counted from the decisions (so it
survives a restart), refused with ResourceQuotaNotFit by the extender and "exceeding resource
quota" by the webhook, freed when a pod is deleted, and reported with HAMi's metric names."""

from __future__ import annotations

import time
from typing import Any

from tests.cluster import ApiCallError, ControlPlane, wait_for
from tests.integration.hami_stack import (  # noqa: F401 - `stack` is a fixture
    RETRY_WITHIN_S,
    HamiScheduler,
    create_pod,
    gpu_node_annotations,
    gpu_pod,
    pods_in,
    stack,
)


def make_quota(cp: ControlPlane, namespace: str, hard: dict[str, Any], name: str = "gpu") -> dict[str, Any]:
    return dict(cp.api("POST", f"/api/v1/namespaces/{namespace}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}}))


def bound(cp: ControlPlane, namespace: str, name: str) -> str | None:
    pod = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return pod["spec"].get("nodeName")  # type: ignore[no-any-return]


def wait_bound(cp: ControlPlane, namespace: str, name: str, timeout: float = 60) -> str:
    node: str = wait_for(lambda: bound(cp, namespace, name), timeout=timeout, message=f"pod {name} bound")
    return node


def filter_events(cp: ControlPlane, namespace: str, pod: str) -> list[str]:
    found = cp.api("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name={pod}")["items"]
    return [e["message"] for e in found if e["reason"] == "FilteringFailed"]


def metric_lines(hami: HamiScheduler, name: str) -> list[str]:
    status, body = hami.get("/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line.startswith(name + "{")]


def test_quota_refuses_counts_per_device_and_is_freed_by_deletion(
        control_plane: ControlPlane, namespace: str, stack: Any, add_node: Any) -> None:
    hami, scheduler = stack
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=4, memory=24000))
    make_quota(control_plane, namespace, {"limits.nvidia.com/gpumem": "20000", "limits.nvidia.com/gpucores": "300"})
    # Two GPUs of 6000 count 12000; one of 6000 makes 18000.
    create_pod(control_plane, namespace, gpu_pod("two", scheduler, memory=6000, gpus=2, cores=10))
    create_pod(control_plane, namespace, gpu_pod("one", scheduler, memory=6000, cores=10))
    wait_bound(control_plane, namespace, "two")
    wait_bound(control_plane, namespace, "one")
    # 18000 + 6000 is over 20000: refused, though the node has room.
    create_pod(control_plane, namespace, gpu_pod("over", scheduler, memory=6000, cores=10))
    message = wait_for(lambda: (filter_events(control_plane, namespace, "over") or [None])[0], timeout=60,
                       message="FilteringFailed on the pod over quota")
    assert "ResourceQuotaNotFit" in message, message
    assert bound(control_plane, namespace, "over") is None
    used = metric_lines(hami, "hami_resource_quota_used")
    assert f'hami_resource_quota_used{{limit="20000",namespace="{namespace}",quota_name="nvidia.com/gpumem"}} 18000.0' \
        in used, used
    assert f'hami_resource_quota_limit{{namespace="{namespace}",quota_name="nvidia.com/gpucores"}} 300.0' \
        in metric_lines(hami, "hami_resource_quota_limit")
    # Deleting a pod frees its share of the quota: the waiting pod is placed (kube-scheduler retries
    # it on the deletion, or hami asks it to when its own watch saw the deletion later).
    control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/two",
                      {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    wait_bound(control_plane, namespace, "over", timeout=60)
    assert f'hami_resource_quota_used{{limit="20000",namespace="{namespace}",quota_name="nvidia.com/gpumem"}} 12000.0' \
        in metric_lines(hami, "hami_resource_quota_used")


def test_raising_the_quota_places_a_waiting_pod(control_plane: ControlPlane, namespace: str, stack: Any,
                                               add_node: Any) -> None:
    """kube-scheduler never retries a pod for a ResourceQuota change: hami asks it to."""
    hami, scheduler = stack
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    quota = make_quota(control_plane, namespace, {"limits.nvidia.com/gpumem": "8000"})
    create_pod(control_plane, namespace, gpu_pod("big", scheduler, memory=12000))
    wait_for(lambda: filter_events(control_plane, namespace, "big"), timeout=60, message="FilteringFailed on big")
    quota["spec"]["hard"]["limits.nvidia.com/gpumem"] = "16000"
    control_plane.api("PUT", f"/api/v1/namespaces/{namespace}/resourcequotas/gpu", quota)
    wait_bound(control_plane, namespace, "big", timeout=RETRY_WITHIN_S)
    placed = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/big")
    assert "hami.io/scheduling-retry" in placed["metadata"]["annotations"], hami.log_tail()
    assert "asked kube-scheduler to try it again" in hami.log_tail()
    metrics = hami.get("/metrics")[1].decode().splitlines()
    assert "hami_scheduler_retry_requests_total 1.0" in metrics and "hami_scheduler_refused_pods 0.0" in metrics


def test_quota_usage_is_rebuilt_from_decisions_after_a_restart(
        control_plane: ControlPlane, namespace: str, stack: Any, add_node: Any) -> None:
    hami, scheduler = stack
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    make_quota(control_plane, namespace, {"limits.nvidia.com/gpumem": "10k"})
    create_pod(control_plane, namespace, gpu_pod("first", scheduler, memory=8000))
    wait_bound(control_plane, namespace, "first")
    hami.kill()
    hami.start()
    create_pod(control_plane, namespace, gpu_pod("second", scheduler, memory=4000))
    message = wait_for(lambda: (filter_events(control_plane, namespace, "second") or [None])[0], timeout=60,
                       message="FilteringFailed after the restart")
    assert "ResourceQuotaNotFit" in message
    time.sleep(2)
    assert bound(control_plane, namespace, "second") is None


def test_the_webhook_denies_a_pod_over_quota(control_plane: ControlPlane, namespace: str, stack: Any,
                                             add_node: Any) -> None:
    hami, scheduler = stack
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    make_quota(control_plane, namespace, {"limits.nvidia.com/gpumem": "10000"})
    webhook = f"hami-quota-{namespace}"[:60].rstrip("-")
    hami.register_webhook(webhook, namespace)
    try:
        create_pod(control_plane, namespace, gpu_pod("fits", scheduler, memory=3000, gpus=2))
        wait_bound(control_plane, namespace, "fits")
        try:
            create_pod(control_plane, namespace, gpu_pod("too-much", scheduler, memory=2001, gpus=2))
        except ApiCallError as exc:
            assert exc.status == 403, exc
            assert "exceeding resource quota: the pod asks 4002 MiB of nvidia.com/gpumem" in str(exc), exc
            assert "which has 4000 left" in str(exc)
        else:
            raise AssertionError("the webhook admitted a pod over quota")
        create_pod(control_plane, namespace, gpu_pod("just-fits", scheduler, memory=2000, gpus=2))
        wait_bound(control_plane, namespace, "just-fits")
    finally:
        control_plane.api("DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{webhook}")


def test_a_quota_in_units_we_do_not_understand_is_ignored_with_an_event(
        control_plane: ControlPlane, namespace: str, stack: Any, add_node: Any) -> None:
    hami, scheduler = stack
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    make_quota(control_plane, namespace, {"limits.nvidia.com/gpumem": "20Gi"}, name="bytes")

    def warning() -> str | None:
        found = control_plane.api(
            "GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name=bytes")["items"]
        return next((e["message"] for e in found if e["reason"] == "QuotaNotUnderstood"), None)

    message = wait_for(warning, timeout=60, message="a QuotaNotUnderstood Event on the ResourceQuota")
    assert "limits.nvidia.com/gpumem: 20Gi is a byte-style quantity" in message and "ignored" in message
    # Ignored, as HAMi ignores what it cannot read: pods are placed, the scheduler is fine.
    create_pod(control_plane, namespace, gpu_pod("p", scheduler, memory=16000))
    wait_bound(control_plane, namespace, "p")
    assert hami.answers("/healthz")
    assert not [p for p in pods_in(control_plane, namespace) if not p["spec"].get("nodeName")]
