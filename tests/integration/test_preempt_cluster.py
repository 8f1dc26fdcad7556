"""Preemption for GPU shares on the real control plane: kube-scheduler (its own preemption off,
as the chart runs it) calls `hami scheduler`, which evicts through the real Eviction API.

There is no kubelet: evicted pods with a grace period of 0 are deleted at once; with a longer
one they stay Terminating until the test deletes them, as a kubelet would once they stopped.
There is no disruption controller either: a test that wants a PodDisruptionBudget to allow
evictions writes its status, as that controller would."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hami.annotations import keys
from hami.annotations.pod_devices import pod_allocation_from_annotations
from tests.cluster import ApiCallError, ControlPlane, wait_for
from tests.integration.hami_stack import HamiScheduler, create_pod, gpu_node_annotations, gpu_pod, pods_in

_classes = itertools.count()


@pytest.fixture
def priority(control_plane: ControlPlane, namespace: str) -> Iterator[Callable[[int], str]]:
    """priority(value) -> the name of a new PriorityClass of that value (deleted afterwards)."""
    made: list[str] = []

    def make(value: int, preemption_policy: str | None = None) -> str:
        name = f"{namespace}-p{value}-{next(_classes)}"[:63]
        body: dict[str, Any] = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                "metadata": {"name": name}, "value": value}
        if preemption_policy:
            body["preemptionPolicy"] = preemption_policy
        control_plane.api("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", body)
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(ApiCallError):
            control_plane.api("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")


def chart_config(hami: HamiScheduler, preempt_verb: bool = False) -> dict[str, Any]:
    """kube-scheduler as the chart runs it: DefaultPreemption off (or on, with our preempt verb)."""
    config = hami.extender_config()
    if preempt_verb:
        config["extenders"][0]["preemptVerb"] = "preempt"
    else:
        config["profiles"][0]["plugins"] = {"postFilter": {"disabled": [{"name": "DefaultPreemption"}]}}
    return config


class Stack:
    """`hami scheduler` and a kube-scheduler profile that calls it; unpacks as (hami, name)."""

    def __init__(self, hami: HamiScheduler, start_scheduler: Any, kube_preemption: bool = False):
        self.hami = hami
        self.name = hami.scheduler_name
        self._start = start_scheduler
        # kube-scheduler's own preemption is off, as the chart runs it, or on as kube-scheduler's
        # default profile has it (without our preempt verb).
        self.kube = start_scheduler(hami.extender_config() if kube_preemption else chart_config(hami))

    def __iter__(self) -> Iterator[Any]:
        return iter((self.hami, self.name))

    def restart_kube_scheduler(self) -> None:
        self.kube.stop()
        self.kube = self._start(chart_config(self.hami))

    def second_profile(self) -> str:
        """Another kube-scheduler (its own queue) calling the same `hami scheduler`."""
        config = chart_config(self.hami)
        config["profiles"][0]["schedulerName"] = f"{self.name}-b"
        self._start(config)
        return f"{self.name}-b"


@pytest.fixture
def preempting(control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any,
               request: pytest.FixtureRequest) -> Iterator[Stack]:
    name = f"hami-pre-{namespace}"[:58]
    hami = HamiScheduler(control_plane, tmp_path / "hami", scheduler_name=name,
                         extra_args=["--preemption-hold-seconds", "30"]).start()
    try:
        yield Stack(hami, start_scheduler, kube_preemption=getattr(request, "param", False))
    finally:
        hami.stop()


def pinned(name: str, scheduler: str, memory: int, uuid: str, priority_class: str | None = None,
           cores: int | None = None, grace: int = 0, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A one-GPU pod placed on one device (nvidia.com/use-gpuuuid)."""
    pod = gpu_pod(name, scheduler, memory=memory, cores=cores)
    pod["metadata"]["annotations"] = {keys.USE_GPUUUID: uuid}
    pod["metadata"]["labels"] = labels or {}
    pod["spec"]["terminationGracePeriodSeconds"] = grace
    if priority_class:
        pod["spec"]["priorityClassName"] = priority_class
    return pod


def asking(name: str, scheduler: str, memory: int | None, priority_class: str | None, gpus: int = 1,
           cores: int | None = None) -> dict[str, Any]:
    pod = gpu_pod(name, scheduler, memory=memory, cores=cores, gpus=gpus)
    if priority_class:
        pod["spec"]["priorityClassName"] = priority_class
    return pod


def fill(cp: ControlPlane, namespace: str, pods: list[dict[str, Any]]) -> None:
    for pod in pods:
        create_pod(cp, namespace, pod)
    names = {p["metadata"]["name"] for p in pods}
    wait_for(lambda: all(p["spec"].get("nodeName") for p in pods_in(cp, namespace)
                         if p["metadata"]["name"] in names) and len(names) <= len(pods_in(cp, namespace)),
             timeout=90, message="the low-priority pods bound")


def run(cp: ControlPlane, namespace: str, name: str) -> None:
    """Mark a pod Running and Ready, as its kubelet would (disruption budgets guard only those)."""
    cp.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status",
           {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
           content_type="application/merge-patch+json")


def pod_named(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}"))
    except ApiCallError as exc:
        if exc.status == 404:
            return None
        raise


def names(cp: ControlPlane, namespace: str) -> set[str]:
    return {p["metadata"]["name"] for p in pods_in(cp, namespace)}


def events(cp: ControlPlane, namespace: str, pod: str, reason: str | None = None) -> list[dict[str, Any]]:
    found = cp.api("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name={pod}")["items"]
    return [e for e in found if reason is None or e["reason"] == reason]


def wait_event(cp: ControlPlane, namespace: str, pod: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(lambda: (events(cp, namespace, pod, reason) or [None])[0], timeout=timeout,
                                     message=f"a {reason} Event on {pod}")
    return found


def devices_of(pod: dict[str, Any]) -> list[str]:
    allocation = pod_allocation_from_annotations(pod["metadata"].get("annotations") or {}) or ()
    return [d.uuid for c in allocation for d in c]


def wait_bound_pod(cp: ControlPlane, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (lambda p: p if p is not None and p["spec"].get("nodeName") else None)(pod_named(cp, namespace, name)),
        timeout=timeout, message=f"pod {name} bound")
    return found


@pytest.mark.parametrize("preempting", [False, True], ids=["chart-profile", "default-profile"], indirect=True)
def test_the_right_victims_and_only_they_are_evicted(control_plane: ControlPlane, namespace: str, preempting: Any,
                                                     add_node: Any, priority: Any) -> None:
    hami, scheduler = preempting
    low, mid, high = priority(10), priority(20), priority(1000)
    a, b = f"{namespace}-a", f"{namespace}-b"
    for node in (a, b):
        add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    # Every GPU is full. Freeing 12000 MiB takes, at the lowest priority (10), one pod on b's
    # first GPU (b0-x, 12000) — on a's first GPU a single priority-10 pod frees only 8000.
    layout = [
        ("a0-x", a, 0, 8000, low), ("a0-y", a, 0, 8000, mid), ("a0-z", a, 0, 8000, mid),
        ("a1-x", a, 1, 12000, mid), ("a1-y", a, 1, 12000, mid),
        ("b0-x", b, 0, 12000, low), ("b0-y", b, 0, 6000, low), ("b0-z", b, 0, 6000, mid),
        ("b1-x", b, 1, 24000, mid),
    ]
    fill(control_plane, namespace, [pinned(n, scheduler, mem, f"GPU-{node}-{gpu}", cls)
                                    for n, node, gpu, mem, cls in layout])
    before = names(control_plane, namespace)
    create_pod(control_plane, namespace, asking("urgent", scheduler, 12000, high))
    placed = wait_bound_pod(control_plane, namespace, "urgent")
    # Exactly one pod was evicted: the one the rules pick.
    assert before - names(control_plane, namespace) == {"b0-x"}, hami.log_tail()
    assert placed["spec"]["nodeName"] == b
    assert devices_of(placed) == [f"GPU-{b}-0"]
    annotations = placed["metadata"]["annotations"]
    assert not any(k in annotations for k in (keys.PREEMPTION_NODE, keys.PREEMPTION_DEVICES)), \
        (annotations, hami.log_tail())
    preempting_event = wait_event(control_plane, namespace, "urgent", "Preempting")
    assert f"{namespace}/b0-x" in preempting_event["message"] and b in preempting_event["message"]
    victim_event = wait_event(control_plane, namespace, "b0-x", "Preempted")
    assert f"{namespace}/urgent" in victim_event["message"] and "priority 1000 > 10" in victim_event["message"]
    # Nothing else moved.
    for pod in pods_in(control_plane, namespace):
        if pod["metadata"]["name"] != "urgent":
            assert pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp")


def test_a_disruption_budget_that_forbids_it_blocks_it(control_plane: ControlPlane, namespace: str,
                                                        preempting: Any, add_node: Any, priority: Any) -> None:
    hami, scheduler = preempting
    low, high = priority(10), priority(1000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    fill(control_plane, namespace, [pinned(f"guarded-{i}", scheduler, 12000, f"GPU-{node}-0", low,
                                           labels={"app": "guarded"}) for i in range(2)])
    for i in range(2):
        run(control_plane, namespace, f"guarded-{i}")
    pdb = control_plane.api("POST", f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guard"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}})
    create_pod(control_plane, namespace, asking("urgent", scheduler, 12000, high))
    event = wait_event(control_plane, namespace, "urgent", "NotPreempting")
    assert "PodDisruptionBudget" in event["message"] and f"{namespace}/guard" in event["message"]
    time.sleep(3)  # kube-scheduler retries meanwhile; still nothing may be evicted
    assert names(control_plane, namespace) == {"guarded-0", "guarded-1", "urgent"}
    assert not pod_named(control_plane, namespace, "urgent")["spec"].get("nodeName")  # type: ignore[index]

    # The disruption controller (played here) now allows one disruption: exactly one pod goes.
    status = {"observedGeneration": pdb["metadata"].get("generation", 1), "disruptionsAllowed": 1,
              "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 2}
    control_plane.api("PUT", f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/guard/status",
                      {**pdb, "status": status})
    # A pod event makes kube-scheduler try the pod again.
    create_pod(control_plane, namespace, asking("nudge", scheduler, None, None, gpus=0))
    wait_bound_pod(control_plane, namespace, "urgent", timeout=120)
    assert len({"guarded-0", "guarded-1"} & names(control_plane, namespace)) == 1, hami.log_tail()


def test_a_pod_that_cannot_fit_even_after_eviction_evicts_nothing(control_plane: ControlPlane, namespace: str,
                                                                   preempting: Any, add_node: Any,
                                                                   priority: Any) -> None:
    hami, scheduler = preempting
    low, high, top = priority(10), priority(1000), priority(5000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    # 16000 MiB belong to a pod of higher priority than the preemptor: 8000 at most can be freed.
    fill(control_plane, namespace, [pinned("low", scheduler, 8000, f"GPU-{node}-0", low),
                                    pinned("top", scheduler, 16000, f"GPU-{node}-0", top)])
    create_pod(control_plane, namespace, asking("urgent", scheduler, 12000, high))
    event = wait_event(control_plane, namespace, "urgent", "NotPreempting")
    assert "would not let this pod fit" in event["message"] and node in event["message"]
    time.sleep(3)
    assert names(control_plane, namespace) == {"low", "top", "urgent"}, hami.log_tail()
    assert not events(control_plane, namespace, "low", "Preempted")


def test_two_preemptors_at_once_evict_only_what_they_need(control_plane: ControlPlane, namespace: str,
                                                          preempting: Any, add_node: Any, priority: Any) -> None:
    hami, scheduler = preempting
    low, high = priority(10), priority(1000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
    fill(control_plane, namespace, [pinned(f"low-{g}-{i}", scheduler, 12000, f"GPU-{node}-{g}", low)
                                    for g in range(2) for i in range(2)])
    for name in ("urgent-1", "urgent-2"):
        create_pod(control_plane, namespace, asking(name, scheduler, 12000, high))
    first = wait_bound_pod(control_plane, namespace, "urgent-1")
    second = wait_bound_pod(control_plane, namespace, "urgent-2")
    left = {n for n in names(control_plane, namespace) if n.startswith("low-")}
    assert len(left) == 2, (left, hami.log_tail())  # two of four: one each, never twice as many
    assert devices_of(first) != [] and devices_of(second) != []
    time.sleep(3)
    assert {n for n in names(control_plane, namespace) if n.startswith("low-")} == left


def test_held_devices_wait_for_the_preemptor_and_nothing_preempts_twice(
        control_plane: ControlPlane, namespace: str, preempting: Stack, add_node: Any, priority: Any) -> None:
    hami, scheduler = preempting
    other = preempting.second_profile()
    low, high = priority(10), priority(1000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    # Victims that take 30 s to stop (no kubelet here: they stay Terminating until deleted).
    fill(control_plane, namespace, [pinned(f"low-{i}", scheduler, 12000, f"GPU-{node}-0", low, grace=30)
                                    for i in range(2)])
    create_pod(control_plane, namespace, asking("urgent", scheduler, 12000, high))
    wait_event(control_plane, namespace, "urgent", "Preempting")
    terminating = wait_for(lambda: [p["metadata"]["name"] for p in pods_in(control_plane, namespace)
                                    if p["metadata"].get("deletionTimestamp")] or None, timeout=30,
                           message="a victim terminating")
    assert len(terminating) == 1
    held = pod_named(control_plane, namespace, "urgent")
    assert held is not None and held["metadata"]["annotations"][keys.PREEMPTION_NODE] == node
    time.sleep(5)  # kube-scheduler retries the preemptor meanwhile: no second eviction
    assert [p["metadata"]["name"] for p in pods_in(control_plane, namespace)
            if p["metadata"].get("deletionTimestamp")] == terminating
    assert len([n for n in names(control_plane, namespace) if n.startswith("low-")]) == 2
    assert_held_against_others(control_plane, namespace, preempting, other, terminating[0])
    # The preemptor's scheduler comes back: it gets the held devices.
    preempting.restart_kube_scheduler()
    placed = wait_bound_pod(control_plane, namespace, "urgent")
    assert devices_of(placed) == [f"GPU-{node}-0"]
    assert len(events(control_plane, namespace, "urgent", "Preempting")) == 1


def assert_held_against_others(cp: ControlPlane, namespace: str, stack: Stack, other: str, victim: str) -> None:
    """With the preemptor's kube-scheduler stopped (so the test, not the queue order, decides who
    comes first), the victim stops and a pod of lower priority, scheduled by another
    kube-scheduler, would fit in the freed share: the hold keeps it out."""
    stack.kube.stop()
    cp.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{victim}",
           {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    wait_for(lambda: pod_named(cp, namespace, victim) is None, timeout=30, message="the victim gone")
    create_pod(cp, namespace, asking("latecomer", other, 12000, None))
    message = wait_for(lambda: next((e["message"] for e in events(cp, namespace, "latecomer", "FilteringFailed")),
                                    None), timeout=60, message="the latecomer refused")
    assert "CardInsufficientMemory" in message, message
    latecomer = pod_named(cp, namespace, "latecomer")
    assert latecomer is not None and not latecomer["spec"].get("nodeName"), stack.hami.log_tail()


def test_the_hold_is_released_when_the_preemptor_goes_away(control_plane: ControlPlane, namespace: str,
                                                           preempting: Any, add_node: Any, priority: Any) -> None:
    hami, scheduler = preempting
    low, high = priority(10), priority(1000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    fill(control_plane, namespace, [pinned(f"low-{i}", scheduler, 12000, f"GPU-{node}-0", low, grace=30)
                                    for i in range(2)])
    create_pod(control_plane, namespace, asking("urgent", scheduler, 12000, high))
    wait_event(control_plane, namespace, "urgent", "Preempting")
    victim = wait_for(lambda: next((p["metadata"]["name"] for p in pods_in(control_plane, namespace)
                                    if p["metadata"].get("deletionTimestamp")), None), timeout=30,
                      message="a victim terminating")
    create_pod(control_plane, namespace, asking("latecomer", scheduler, 12000, low))
    assert held_devices(hami, namespace, "urgent") == 1
    control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/urgent",
                      {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    # The scheduler lets go of the hold as soon as it sees the deletion.
    wait_for(lambda: held_devices(hami, namespace, "urgent") == 0, timeout=30, message="the hold released")
    control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{victim}",
                      {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    placed = wait_bound_pod(control_plane, namespace, "latecomer", timeout=60)
    assert devices_of(placed) == [f"GPU-{node}-0"], hami.log_tail()


def held_devices(hami: HamiScheduler, namespace: str, pod: str) -> int:
    """hami_preemption_held_devices of the pod, from the scheduler's /metrics (0 when absent)."""
    status, body = hami.get("/metrics")
    assert status == 200
    prefix = f'hami_preemption_held_devices{{namespace="{namespace}",'
    for line in body.decode().splitlines():
        if line.startswith(prefix) and f'pod="{pod}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_never_and_a_vanished_priority_class_evict_nothing(control_plane: ControlPlane, namespace: str,
                                                            preempting: Any, add_node: Any, priority: Any) -> None:
    hami, scheduler = preempting
    low = priority(10)
    never = priority(1000, preemption_policy="Never")
    doomed = priority(2000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    fill(control_plane, namespace, [pinned(f"low-{i}", scheduler, 12000, f"GPU-{node}-0", low) for i in range(2)])
    create_pod(control_plane, namespace, asking("patient", scheduler, 12000, never))
    assert "preemptionPolicy is Never" in wait_event(control_plane, namespace, "patient", "NotPreempting")["message"]
    # Admitted with the class's priority (2000), held back by a scheduling gate until the class
    # is deleted.
    pod = asking("orphan", scheduler, 12000, doomed)
    pod["spec"]["schedulingGates"] = [{"name": "example.com/wait"}]
    create_pod(control_plane, namespace, pod)
    control_plane.api("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{doomed}")
    control_plane.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/orphan", {"spec": {"schedulingGates": None}},
                      content_type="application/merge-patch+json")
    event = wait_event(control_plane, namespace, "orphan", "NotPreempting")
    assert f"PriorityClass {doomed} no longer exists" in event["message"]
    time.sleep(3)
    assert names(control_plane, namespace) == {"low-0", "low-1", "patient", "orphan"}, hami.log_tail()
    assert hami.answers("/healthz")


def test_kube_schedulers_own_preemption_gets_the_device_victims_it_misses(
        control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any, add_node: Any,
        priority: Any) -> None:
    """DefaultPreemption on, with our preempt verb: kube-scheduler picks victims for CPU, which
    free no GPU memory; /preempt adds the fewest device victims and keeps the node."""
    name = f"hami-verb-{namespace}"[:60]
    hami = HamiScheduler(control_plane, tmp_path / "hami", scheduler_name=name).start()
    try:
        start_scheduler(chart_config(hami, preempt_verb=True))
        low, lowest, high = priority(10), priority(5), priority(1000)
        node = f"{namespace}-a"
        add_node(node, capacity={"cpu": "4"}, annotations=gpu_node_annotations(node, gpus=2, memory=24000))
        gpu_pods = [pinned(f"g{g}-{i}", name, 12000, f"GPU-{node}-{g}", low) for g in range(2) for i in range(2)]
        cpu_hog = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cpu-hog"},
                   "spec": {"schedulerName": name, "priorityClassName": lowest, "terminationGracePeriodSeconds": 0,
                            "containers": [{"name": "main", "image": "example.invalid/busy:1",
                                            "resources": {"requests": {"cpu": "4"}}}]}}
        fill(control_plane, namespace, [*gpu_pods, cpu_hog])
        urgent = asking("urgent", name, 12000, high)
        urgent["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "1"}
        create_pod(control_plane, namespace, urgent)
        placed = wait_bound_pod(control_plane, namespace, "urgent", timeout=120)
        gone = {p["metadata"]["name"] for p in gpu_pods} | {"cpu-hog"}
        gone -= names(control_plane, namespace)
        # kube-scheduler's victim for CPU, and one GPU pod (not two, not four) for the memory.
        assert "cpu-hog" in gone and len(gone) == 2, (gone, hami.log_tail())
        gpu_victim = next(iter(gone - {"cpu-hog"}))
        assert devices_of(placed) == [f"GPU-{node}-{gpu_victim[1]}"]
    finally:
        hami.stop()


def test_a_hold_survives_a_restart(control_plane: ControlPlane, namespace: str, preempting: Stack, add_node: Any,
                                   priority: Any) -> None:
    hami, scheduler = preempting
    other = preempting.second_profile()
    low, high = priority(10), priority(1000)
    node = f"{namespace}-a"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1, memory=24000))
    fill(control_plane, namespace, [pinned(f"low-{i}", scheduler, 12000, f"GPU-{node}-0", low, grace=30)
                                    for i in range(2)])
    create_pod(control_plane, namespace, asking("urgent", scheduler, 12000, high))
    wait_event(control_plane, namespace, "urgent", "Preempting")
    victim = wait_for(lambda: next((p["metadata"]["name"] for p in pods_in(control_plane, namespace)
                                    if p["metadata"].get("deletionTimestamp")), None), timeout=30,
                      message="a victim terminating")
    hami.kill()
    hami.start()  # the hold is read back from the pod's annotations
    assert_held_against_others(control_plane, namespace, preempting, other, victim)
    preempting.restart_kube_scheduler()
    placed = wait_bound_pod(control_plane, namespace, "urgent")
    assert devices_of(placed) == [f"GPU-{node}-0"]
    assert len(events(control_plane, namespace, "urgent", "Preempting")) == 1  # no second preemption
