"""`hami scheduler` on the real control plane: the real kube-scheduler calls our extender, the real
API server calls our webhook. No kubelet: bound pods stay Pending, and hold their devices."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from hami.annotations import keys
from hami.annotations.pod_devices import pod_allocation_from_annotations
from hami.config import HamiConfig
from hami.scheduler.engine import schedule
from hami.scheduler.state import ClusterState
from hami.snapshot import registered_node
from hami.vendors.nvidia import pod_request
from tests.cluster import ApiCallError, ControlPlane, wait_for
from tests.integration.hami_stack import (  # noqa: F401 - `stack` is a fixture
    RETRY_WITHIN_S,
    HamiScheduler,
    create_pod,
    gpu_node_annotations,
    gpu_pod,
    pods_in,
    stack,
    usage_by_device,
    wait_bound,
)


def engine_expectation(cp: ControlPlane, node_names: list[str], pod: dict) -> tuple[str | None, list[list[str]]]:  # type: ignore[type-arg]
    """What the engine says for `pod` on the cluster as the API server has it now."""
    registered = [registered_node(cp.api("GET", f"/api/v1/nodes/{name}")) for name in node_names]
    state = ClusterState([n for n in registered if n is not None])
    for other in cp.api("GET", "/api/v1/pods")["items"]:
        allocation = pod_allocation_from_annotations(other["metadata"].get("annotations") or {})
        node = (other["metadata"].get("annotations") or {}).get(keys.VGPU_NODE)
        if allocation and node in node_names:
            state.add_pod(f"{other['metadata']['namespace']}/{other['metadata']['name']}", node, allocation)
    decision = schedule(state, pod_request(pod, HamiConfig().nvidia), nodes=node_names)
    return decision.node, [[d.uuid for d in c] for c in decision.allocation]


def test_pods_are_placed_as_the_engine_says(control_plane: ControlPlane, namespace: str, stack, add_node) -> None:  # type: ignore[no-untyped-def]
    hami, scheduler = stack
    nodes = [f"{namespace}-a", f"{namespace}-b"]
    for node in nodes:
        add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    sizes = [(8000, 30), (8000, 30), (20000, 50), (12000, 20), (4000, 10), (24000, 100)]
    for i, (memory, cores) in enumerate(sizes):
        pod = gpu_pod(f"p{i}", scheduler, memory=memory, cores=cores)
        expected = engine_expectation(control_plane, nodes, pod)
        create_pod(control_plane, namespace, pod)
        bound = wait_bound(control_plane, namespace, i + 1, timeout=60)
        mine = next(p for p in bound if p["metadata"]["name"] == f"p{i}")
        annotations = mine["metadata"]["annotations"]
        got = [[d.uuid for d in c] for c in pod_allocation_from_annotations(annotations) or ()]
        assert (mine["spec"]["nodeName"], got) == expected, hami.log_tail()
        assert annotations[keys.VGPU_NODE] == mine["spec"]["nodeName"]
        assert annotations[keys.BIND_PHASE] == "allocating"
    # Binpack (the default node policy) filled node a before b.
    placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods_in(control_plane, namespace)}
    assert placed["p0"] == placed["p1"] == nodes[0]
    # The lock is released right after binding, so no node is left locked.
    for node in nodes:
        assert keys.NODE_LOCK not in (
            control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {}
        )


def test_many_pods_at_once_never_overcommit(control_plane: ControlPlane, namespace: str, stack, add_node) -> None:  # type: ignore[no-untyped-def]
    hami, scheduler = stack
    for n in range(10):
        node = f"{namespace}-n{n}"
        add_node(node, annotations=gpu_node_annotations(node, gpus=4, memory=24000, split=10))
    # 6000 MiB each: 4 per GPU by memory, 160 of 200 can be placed.
    pods = [gpu_pod(f"p{i:03d}", scheduler, memory=6000, cores=10) for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: create_pod(control_plane, namespace, p), pods))
    wait_bound(control_plane, namespace, 160, timeout=300)
    # Give kube-scheduler time to try the remaining ones again; none may be placed.
    wait_for(lambda: _unschedulable(control_plane, namespace) >= 40, timeout=120, message="40 unschedulable pods")
    final = pods_in(control_plane, namespace)
    bound = [p for p in final if p["spec"].get("nodeName")]
    assert len(bound) == 160
    for uuid, (tasks, memory, cores) in usage_by_device(final).items():
        assert tasks <= 10 and memory <= 24000 and cores <= 100, (uuid, tasks, memory, cores)
    for pod in bound:
        assert pod["metadata"]["annotations"][keys.VGPU_NODE] == pod["spec"]["nodeName"]


def _unschedulable(cp: ControlPlane, namespace: str) -> int:
    count = 0
    for pod in pods_in(cp, namespace):
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                count += 1
    return count


def test_restart_in_the_middle_loses_nothing(control_plane: ControlPlane, namespace: str, stack, add_node) -> None:  # type: ignore[no-untyped-def]
    hami, scheduler = stack
    for n in range(3):
        node = f"{namespace}-n{n}"
        add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=20000, split=10))
    # Capacity: 6 GPUs x 4 pods of 5000 MiB = 24; ask for exactly 24.
    pods = [gpu_pod(f"p{i:02d}", scheduler, memory=5000, cores=5) for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: create_pod(control_plane, namespace, p), pods))
    wait_bound(control_plane, namespace, 8, timeout=120)
    hami.kill()
    hami.start()  # same port and certificate: kube-scheduler keeps calling the same URL
    final = wait_bound(control_plane, namespace, 24, timeout=240)
    usage = usage_by_device(final)
    assert len(usage) == 6
    assert all(tasks == 4 and memory == 20000 for tasks, memory, _ in usage.values()), usage


def test_a_deleted_pod_frees_its_share(control_plane: ControlPlane, namespace: str, stack, add_node) -> None:  # type: ignore[no-untyped-def]
    hami, scheduler = stack
    node = f"{namespace}-solo"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    create_pod(control_plane, namespace, gpu_pod("first", scheduler, memory=20000, cores=50))
    wait_bound(control_plane, namespace, 1, timeout=60)
    create_pod(control_plane, namespace, gpu_pod("second", scheduler, memory=20000, cores=50))
    wait_for(lambda: _unschedulable(control_plane, namespace) >= 1, timeout=60, message="second pod unschedulable")
    events = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any("CardInsufficientMemory" in (e.get("message") or "") for e in events), events
    control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/first", {"gracePeriodSeconds": 0})
    # kube-scheduler retries on the deletion; when its watch saw it before ours, our /filter refused
    # again (about 1 run in 13 before hami.scheduler.requeue) and hami asks it to try once more.
    pods = wait_bound(control_plane, namespace, 1, timeout=RETRY_WITHIN_S)
    assert [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName")] == ["second"]


def test_webhook_mutates_and_denies(control_plane: ControlPlane, namespace: str, stack) -> None:  # type: ignore[no-untyped-def]
    hami, scheduler = stack
    hook = f"hami-{namespace}"
    hami.register_webhook(hook, namespace)
    try:
        only_memory = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "only-memory"},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpumem": 3000}}}]},
        }
        created = wait_for(
            lambda: _try_create(control_plane, namespace, only_memory), timeout=30, message="webhook reachable"
        )
        assert created["spec"]["schedulerName"] == scheduler
        assert created["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        privileged = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "x",
                        "securityContext": {"privileged": True},
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            },
        }
        with pytest.raises(ApiCallError) as denied:
            create_pod(control_plane, namespace, privileged)
        assert "privileged" in str(denied.value)
        ignored = {**privileged, "metadata": {"name": "ignored", "labels": {keys.WEBHOOK_LABEL: keys.WEBHOOK_IGNORE}}}
        assert create_pod(control_plane, namespace, ignored)["spec"]["schedulerName"] == "default-scheduler"
    finally:
        control_plane.api("DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{hook}")


def _try_create(cp: ControlPlane, namespace: str, pod: dict) -> dict | None:  # type: ignore[type-arg]
    try:
        return create_pod(cp, namespace, pod)
    except ApiCallError as exc:
        if "failed calling webhook" in str(exc):
            return None
        raise


def test_two_replicas_elect_one_leader_and_fail_over(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    lease = f"hami-{namespace}"[:60]
    args = ["--leader-elect", "--lease-namespace", "kube-system", "--lease-name", lease]
    first = HamiScheduler(control_plane, tmp_path / "a", "hami-a", [*args, "--identity", "a"]).start("/healthz")
    second = HamiScheduler(control_plane, tmp_path / "b", "hami-b", [*args, "--identity", "b"]).start("/healthz")
    try:
        wait_for(lambda: first.answers() or second.answers(), timeout=60, message="a leader")
        leader, follower = (first, second) if first.answers() else (second, first)
        assert not follower.answers(), "both replicas report ready"
        holder = control_plane.api("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{lease}")
        assert holder["spec"]["holderIdentity"] == ("a" if leader is first else "b")
        leader.kill()
        wait_for(follower.answers, timeout=90, message="the other replica takes over")
    finally:
        first.stop()
        second.stop()


def test_a_stale_or_orphaned_node_lock_is_taken_over(
    control_plane: ControlPlane,
    namespace: str,
    stack,  # type: ignore[no-untyped-def]
    add_node,
) -> None:
    hami, scheduler = stack
    node = f"{namespace}-locked"
    # A node whose device plugin needs HAMi's lock, with a lock left by a pod that no longer
    # exists (a scheduler that died mid-bind, say).
    annotations = gpu_node_annotations(node, gpus=1, matched_by_kubelet=False)
    annotations[keys.NODE_LOCK] = f"2026-01-01T00:00:00Z,{namespace},gone"
    add_node(node, annotations=annotations)
    create_pod(control_plane, namespace, gpu_pod("next", scheduler, memory=1000, cores=10))
    (pod,) = wait_bound(control_plane, namespace, 1, timeout=60)
    assert pod["spec"]["nodeName"] == node
    # The new pod holds it now, until the device plugin has allocated it.
    after = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {}
    assert after[keys.NODE_LOCK].endswith(f",{namespace},next")
