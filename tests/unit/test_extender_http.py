"""The extender over real HTTP (uvicorn on loopback): wire types, errors, health, metrics.

Binding needs the Kubernetes API and is covered by the integration tests.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.annotations.pod_devices import decision_annotations
from hami.config import HamiConfig
from hami.model import DeviceInfo
from hami.scheduler.app import build_app
from hami.scheduler.cache import ClusterCache, pod_id
from hami.scheduler.engine import PolicyDefaults
from hami.scheduler.extender import Extender
from hami.scheduler.metrics import SchedulerCollector
from hami.serve import serve
from hami.webhook.mutate import WebhookOptions
from tests.cluster import free_port


def node(name: str, *devices: DeviceInfo) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}}}


def gpu(uuid: str, mem: int = 16000, index: int = 0) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=10, devmem=mem, devcore=100, type="NVIDIA-A10", index=index)


def pod(name: str, mem: int, cores: int = 10) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "t", "uid": f"uid-{name}"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "resources": {
                        "limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem, "nvidia.com/gpucores": cores}
                    },
                }
            ]
        },
    }



@pytest.fixture
def server() -> Iterator[tuple[str, ClusterCache]]:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes(
        [node("n1", gpu("g0"), gpu("g1", index=1)), node("n2", gpu("g2", mem=8000)), {"metadata": {"name": "cpu"}}]
    )
    extender = Extender(cache, api=None, locker=None)
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(cache))
    app = build_app(extender, registry, WebhookOptions(), ready=lambda: cache.ready)
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(app, "127.0.0.1", port, None, None, stop), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    yield url, cache
    stop.set()
    thread.join(timeout=10)


def post(url: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_filter_returns_fitting_nodes_and_reasons(server: tuple[str, ClusterCache]) -> None:
    url, cache = server
    status, result = post(url + "/filter", {"Pod": pod("a", 12000), "NodeNames": ["n1", "n2", "cpu"]})
    assert status == 200 and result["Error"] == ""
    assert result["NodeNames"] == ["n1"]
    assert result["FailedNodes"] == {"n2": "1/1 CardInsufficientMemory", "cpu": "node unregistered"}
    holding = cache.holding(cache.id_for("t", "a"))
    assert holding is not None and holding.node == "n1"  # counted at once
    # A second filter of the same pod does not count its own first decision against it.
    status, again = post(url + "/filter", {"Pod": pod("a", 12000), "NodeNames": ["n1", "n2"]})
    assert again["NodeNames"] == ["n1"]


def test_filter_accepts_full_node_objects_and_lowercase_fields(server: tuple[str, ClusterCache]) -> None:
    url, _ = server
    status, result = post(url + "/filter", {"pod": pod("b", 100), "nodes": {"items": [{"metadata": {"name": "n2"}}]}})
    assert status == 200 and result["NodeNames"] == ["n2"]


def test_unschedulable_pod_gets_every_reason(server: tuple[str, ClusterCache]) -> None:
    url, _ = server
    status, result = post(url + "/filter", {"Pod": pod("big", 20000), "NodeNames": ["n1", "n2"]})
    assert result["NodeNames"] == [] and result["FailedNodes"] == {
        "n1": "2/2 CardInsufficientMemory",
        "n2": "1/1 CardInsufficientMemory",
    }


def test_pods_without_gpus_pass_through(server: tuple[str, ClusterCache]) -> None:
    url, _ = server
    plain = {"metadata": {"name": "web", "namespace": "t"}, "spec": {"containers": [{"name": "c"}]}}
    status, result = post(url + "/filter", {"Pod": plain, "NodeNames": ["n1", "cpu"]})
    assert result == {"NodeNames": ["n1", "cpu"], "FailedNodes": {}, "Error": ""}


def test_prioritize_puts_our_choice_first(server: tuple[str, ClusterCache]) -> None:
    url, _ = server
    post(url + "/filter", {"Pod": pod("c", 1000), "NodeNames": ["n1", "n2"]})
    status, scores = post(url + "/prioritize", {"Pod": pod("c", 1000), "NodeNames": ["n1", "n2"]})
    assert status == 200
    by_host = {s["Host"]: s["Score"] for s in scores}
    best = max(by_host, key=lambda h: by_host[h])
    assert by_host[best] == 10 and all(0 <= v <= 10 for v in by_host.values())


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        ({"NodeNames": ["n1"]}, "no Pod"),
        ({"Pod": pod("x", 1), "NodeNames": "n1"}, "list of strings"),
        (
            {
                "Pod": {
                    "metadata": {"name": "x", "annotations": {"hami.io/node-scheduler-policy": "best"}},
                    "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
                },
                "NodeNames": ["n1"],
            },
            "node-scheduler-policy",
        ),
    ],
)
def test_bad_requests_get_a_clear_error(server: tuple[str, ClusterCache], body: Any, message: str) -> None:
    url, _ = server
    status, result = post(url + "/filter", body)
    assert message in result["Error"]
    assert status in (200, 400)


def test_bind_without_api_is_an_error_not_a_crash(server: tuple[str, ClusterCache]) -> None:
    url, _ = server
    status, result = post(url + "/bind", {"PodName": "a", "PodNamespace": "t", "PodUID": "u", "Node": "n1"})
    assert status == 200 and "Kubernetes API" in result["Error"]
    status, result = post(url + "/bind", {"PodName": "a"})
    assert status == 400 and "PodNamespace" in result["Error"]


def test_health_readiness_and_metrics(server: tuple[str, ClusterCache]) -> None:
    url, cache = server
    assert urllib.request.urlopen(url + "/healthz").read() == b"ok"
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(url + "/readyz")
    assert not_ready.value.code == 503
    cache.replace_pods([])
    assert urllib.request.urlopen(url + "/readyz").status == 200
    post(url + "/filter", {"Pod": pod("m", 4000, cores=25), "NodeNames": ["n1", "n2"]})
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    allocated = {s.labels["device_uuid"]: s.value for s in families["hami_gpu_memory_allocated_bytes"].samples}
    assert sorted(allocated.values()) == [0.0, 0.0, 4000 * 1024 * 1024]
    vgpu = families["hami_vgpu_memory_allocated_bytes"].samples
    assert [(s.labels["pod"], s.labels["container_index"], s.value) for s in vgpu] == [("m", "0", 4000 * 1024 * 1024)]
    assert {s.labels["node"] for s in families["hami_node_gpu_memory_allocated_ratio"].samples} == {"n1", "n2"}


def test_webhook_route(server: tuple[str, ClusterCache]) -> None:
    url, _ = server
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u1", "object": pod("w", 100)},
    }
    status, result = post(url + "/webhook", review)
    assert status == 200 and result["response"]["uid"] == "u1" and result["response"]["allowed"] is True
    status, result = post(url + "/webhook", {"request": {}})
    assert status == 400 and "request.uid" in result["message"] and result["kind"] == "Status"


def test_unbound_decisions_expire_and_bound_ones_do_not() -> None:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1", gpu("g0"))])
    annotations = {keys.VGPU_NODE: "n1", keys.VGPU_TIME: "1000", keys.DEVICES_ALLOCATED: "g0,NVIDIA,4000,10:;"}
    pending = {**pod("p", 4000), "metadata": {"name": "p", "namespace": "t", "annotations": annotations}}
    bound = {"metadata": {"name": "b", "namespace": "t", "annotations": annotations},
             "spec": {**pod("b", 4000)["spec"], "nodeName": "n1"}}
    cache.replace_pods([pending, bound])
    assert int(cache.state().usedmem[0]) == 8000
    assert cache.expire_unbound(now=1200, ttl=300) == []
    assert cache.expire_unbound(now=1400, ttl=300) == ["t/p"]
    assert int(cache.state().usedmem[0]) == 4000
    cache.upsert_pod({"metadata": bound["metadata"], "spec": bound["spec"], "status": {"phase": "Succeeded"}})
    assert int(cache.state().usedmem[0]) == 0


def test_an_older_copy_from_the_watch_does_not_free_an_assumed_decision() -> None:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1", gpu("g0", mem=8000))])
    first = pod("first", 6000)
    cache.replace_pods([first])
    decision = cache.decide(first, None, PolicyDefaults())
    cache.assume(pod_id(first), decision, 0, "uid-first", now=1000)
    assert int(cache.state().usedmem[0]) == 6000

    # The watch brings a copy written before our decision (kube-scheduler's late status update):
    # the devices stay counted, so the next pod cannot be given the same memory.
    stale = {**first, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}}
    cache.upsert_pod(stale)
    assert int(cache.state().usedmem[0]) == 6000
    assert cache.decide(pod("second", 6000), None, PolicyDefaults()).node is None

    # Once the watch shows our decision, the pod's own annotations rule again: removing them
    # (a failed bind undone by another replica, say) frees the devices.
    annotations = dict(decision_annotations("n1", decision.allocation, datetime.now(UTC)))
    cache.upsert_pod({**first, "metadata": {**first["metadata"], "annotations": annotations}})
    holding = cache.holding(pod_id(first))
    assert holding is not None and not holding.assumed
    cache.upsert_pod(stale)
    assert cache.holding(pod_id(first)) is None
    assert int(cache.state().usedmem[0]) == 0


def test_webhook_route_mutates_every_vendor(server: tuple[str, ClusterCache]) -> None:
    """The webhook mutates with the scheduler's vendors, not only NVIDIA (Iluvatar: cores 100 per device)."""
    url, _ = server
    chip = "BI-V150"
    limits = {f"iluvatar.ai/{chip}-vgpu": 2, f"iluvatar.ai/{chip}.vMem": 8}
    obj = {"metadata": {"name": "i", "namespace": "t"},
           "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}
    status, result = post(url + "/webhook", {"request": {"uid": "u2", "object": obj}})
    assert status == 200 and result["response"]["allowed"] is True
    patch = json.loads(base64.b64decode(result["response"]["patch"]))
    containers = next(op["value"] for op in patch if op["path"] == "/spec/containers")
    assert containers[0]["resources"]["limits"][f"iluvatar.ai/{chip}.vCore"] == 200
