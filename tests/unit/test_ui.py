"""The UI's pure parts: the store fed as the informers feed it, the page rows, why-pending answers,
live fragmentation, report.json reading and pasted pod specs. Expected figures are worked out by hand
in the comments; the HTTP, access and browser side is tested on the real control plane
(tests/integration/test_ui.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.annotations.pod_devices import encode_pod_devices
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model import ContainerDevice, DeviceInfo
from hami.scheduler.engine import PolicyDefaults, schedule
from hami.ui import fragmentation, simreport, views, whynot
from hami.ui.app import parse_pod
from hami.ui.store import UiStore

A100, T4 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-Tesla-T4"
DEFAULTS = PolicyDefaults()


def node(name: str, *devices: DeviceInfo) -> dict[str, Any]:
    annotations = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)} if devices else {}
    return {"metadata": {"name": name, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def gpu(uuid: str, dtype: str, memory: int, index: int = 0, health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=10, devmem=memory, devcore=100, type=dtype, index=index, health=health)


def pod(key: str, memory: int, cores: int, gpus: int = 1, on: tuple[str, str] | None = None,
        annotations: dict[str, str] | None = None) -> dict[str, Any]:
    namespace, name = key.split("/")
    notes = dict(annotations or {})
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": {
        "nvidia.com/gpu": gpus, "nvidia.com/gpumem": memory, "nvidia.com/gpucores": cores}}}]}
    if on is not None:
        node_name, uuid = on
        notes[keys.VGPU_NODE] = node_name
        notes[keys.DEVICES_ALLOCATED] = encode_pod_devices(((ContainerDevice(uuid, "NVIDIA", memory, cores),),))
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": namespace, "annotations": notes}, "spec": spec,
            "status": {"phase": "Pending" if on is None else "Running"}}


@pytest.fixture
def store() -> UiStore:
    """n1: two A100 (ns1/p1 holds 60000 MiB 50 % of a, ns2/p2 70000 MiB 100 % of b); n2: two T4, d
    unhealthy (ns2/p3 holds 10000 MiB 20 % of c); n3: no devices; ns1/w waits for 30000 MiB of an A100."""
    s = UiStore(HamiConfig())
    s.replace_nodes([
        node("n1", gpu("GPU-a", A100, 81920, 0), gpu("GPU-b", A100, 81920, 1)),
        node("n2", gpu("GPU-c", T4, 15360, 0), gpu("GPU-d", T4, 15360, 1, health=False)),
        node("n3"),
    ])
    s.replace_pods([
        pod("ns1/p1", 60000, 50, on=("n1", "GPU-a")),
        pod("ns2/p2", 70000, 100, on=("n1", "GPU-b")),
        pod("ns2/p3", 10000, 20, on=("n2", "GPU-c")),
        pod("ns1/w", 30000, 10, annotations={keys.USE_GPUTYPE: "A100"}),
        {"metadata": {"name": "cpu", "namespace": "ns1"}, "spec": {"containers": [{"name": "c"}]}},
    ])
    return s


def test_store_keeps_device_pods_and_knows_unregistered_nodes(store: UiStore) -> None:
    with store.reading() as view:
        assert view.state.names == ["n1", "n2"]
        assert view.unregistered == ["n3"]
        assert sorted(view.pods) == ["ns1/p1", "ns1/w", "ns2/p2", "ns2/p3"]  # not the CPU-only pod
        assert view.pods["ns1/w"].pending and not view.pods["ns1/p1"].pending
    before = store.version
    store.delete_pod(pod("ns2/p3", 10000, 20, on=("n2", "GPU-c")))
    assert store.version > before
    with store.reading() as view:
        assert "ns2/p3" not in view.pods and "ns2/p3" not in view.holdings
        assert int(view.state.usedmem.sum()) == 130000


def test_overview_sums_per_vendor_and_type(store: UiStore) -> None:
    with store.reading() as view:
        rows = {r.type: r for r in views.overview(view)}
    a100, t4 = rows[A100], rows[T4]
    assert (a100.vendor, a100.nodes, a100.devices) == ("NVIDIA", 1, 2)
    assert (a100.memory, a100.memory_used, a100.cores_used, a100.slots_used) == (163840, 130000, 150, 2)
    assert (a100.free_devices, a100.unhealthy) == (0, 0)
    assert (t4.memory_used, t4.free_devices, t4.unhealthy) == (10000, 1, 1)


def test_devices_show_only_the_pods_the_viewer_may_see(store: UiStore) -> None:
    with store.reading() as view:
        (n1,) = views.node_rows(view, lambda ns: ns == "ns1", ["n1"])
    a, b = n1.devices
    assert [h.pod for h in a.holders] == ["ns1/p1"] and a.hidden_pods == 0
    assert b.holders == [views.Holder("", 70000, 100, 1)] and b.hidden_pods == 1  # ns2/p2, unnamed
    assert b.exclusive and b.sharing == "exclusive"
    assert (b.memory_used, b.cores_used, b.slots_used) == (70000, 100, 1)


def test_pod_rows_filter_by_access_and_show_requests(store: UiStore) -> None:
    with store.reading() as view:
        rows = views.pod_rows(view, lambda ns: ns == "ns1", views.pod_keys(view, lambda ns: ns == "ns1"))
        assert views.pod_keys(view, lambda ns: True, node="n1") == ["ns1/p1", "ns2/p2"]
        assert views.pod_keys(view, lambda ns: True, pending_only=True) == ["ns1/w"]
    assert [r.info.key for r in rows] == ["ns1/p1", "ns1/w"]
    p1, w = rows
    assert p1.allocated == [("c", "GPU-a", A100, 60000, 50)] and p1.decided_node == "n1"
    assert w.asks == [views.Ask("c", "NVIDIA", 1, "30000 MiB", 10)] and w.allocated == []


def test_reason_groups() -> None:
    reasons = {"a": "2/2 CardInsufficientMemory", "b": "1/2 CardNotHealth, 1/2 CardTypeMismatch",
               "c": "2/2 CardInsufficientMemory", "d": "node unregistered"}
    assert whynot.reason_names(reasons["b"]) == ("CardNotHealth", "CardTypeMismatch")
    assert whynot.group_reasons(reasons) == [
        whynot.ReasonGroup("CardInsufficientMemory", ("a", "c")),
        whynot.ReasonGroup("CardNotHealth + CardTypeMismatch", ("b",)),
        whynot.ReasonGroup("node unregistered", ("d",)),
    ]


def explain(store: UiStore, key: str) -> whynot.Explanation:
    with store.reading() as view:
        request = view.pods[key].request
        unregistered = view.unregistered
    assert request is not None
    with store.what_if(without=key) as (state, allocations):
        return whynot.explain(state, request, DEFAULTS, unregistered, allocations)


def test_why_pending_reasons_and_the_smallest_changes(store: UiStore) -> None:
    x = explain(store, "ns1/w")
    assert x.decision.node is None
    assert x.decision.reasons == {"n1": "2/2 CardInsufficientMemory", "n2": "1/2 CardNotHealth, 1/2 CardTypeMismatch",
                                  "n3": "node unregistered"}
    assert [(s.kind, s.node, s.pod) for s in x.suggestions] == [
        ("memory", "n1", None),  # GPU-a has 21920 MiB free: 73 % of 30000 = 21900 fits, 74 % = 22200 does not
        ("pod-ends", "n1", "ns1/p1"),  # the smaller of the two pods on n1 first
        ("pod-ends", "n1", "ns2/p2"),
    ]
    assert x.suggestions[0].text == "Ask less device memory — c: 21900 MiB instead of 30000 MiB"
    # No change to cores, devices or selectors helps: a T4 has 5360 MiB free, and cores are not short.
    assert x.questions > 0


def test_why_pending_suggestions_hold_when_asked_again(store: UiStore) -> None:
    """The memory suggestion is the largest ask that fits: 1 % more does not."""
    with store.reading() as view:
        request = view.pods["ns1/w"].request
        state = view.state
        assert request is not None

        def with_memory(mib: int) -> str | None:
            changed = dataclasses.replace(request, containers=tuple(
                dataclasses.replace(c, memreq=mib) for c in request.containers))
            return schedule(state, changed, DEFAULTS).node

        assert with_memory(21900) == "n1"
        assert with_memory(22200) is None


def test_what_if_questions_leave_the_state_as_they_found_it(store: UiStore) -> None:
    def usage() -> tuple[list[int], list[int], list[int], list[str]]:
        with store.reading() as view:
            s = view.state
            return s.used.tolist(), s.usedmem.tolist(), s.usedcores.tolist(), sorted(s.pods)

    before = usage()
    explain(store, "ns1/w")
    explain(store, "ns1/p1")  # a placed pod: its own devices left out while asking, counted again after
    assert usage() == before


def test_dropping_a_selector_is_suggested_when_another_type_fits() -> None:
    s = UiStore(HamiConfig())
    s.replace_nodes([node("a", gpu("GPU-a", A100, 81920)), node("t", gpu("GPU-t", T4, 15360))])
    s.replace_pods([pod("ns/x", 70000, 0, on=("a", "GPU-a")), pod("ns/w", 12000, 0,
                                                                     annotations={keys.USE_GPUTYPE: "A100"})])
    x = explain(s, "ns/w")
    selector = [sg for sg in x.suggestions if sg.kind == "selector"]
    assert [(sg.node, sg.text) for sg in selector] == [
        ("t", f"Drop the annotation {keys.USE_GPUTYPE}: A100 (it would get {T4})")]


def test_fewer_devices_is_suggested_when_one_fits() -> None:
    s = UiStore(HamiConfig())
    s.replace_nodes([node("a", gpu("GPU-a", A100, 81920, 0), gpu("GPU-b", A100, 81920, 1)),
                     node("b", gpu("GPU-c", A100, 81920))])
    s.replace_pods([pod("ns/w", 1000, 10, gpus=3)])
    x = explain(s, "ns/w")
    assert [(sg.kind, sg.text, sg.node) for sg in x.suggestions] == [
        ("devices", "Ask for at most 2 devices per container instead of 3", "a")]


def test_fragmentation_by_the_simulators_definition(store: UiStore) -> None:
    """Worked by hand. Free shares (min of free compute and memory, per mille): GPU-a 267, GPU-b 0
    (no compute left), GPU-c 348 (5360/15360 MiB), GPU-d 0 (unhealthy). Classes, one pod each:
    p1 (50 %, 60000 MiB), p2 (whole), p3 (20 %, 10000 MiB), w (10 %, 30000 MiB, A100 only).
    On n1 (81920 MiB) they need 740, 1000, 200, 370 (shares rounded up to whole percents): only p3
    fits, so F = 3 × 267 / 4 = 200.25. On n2 (15360 MiB) they need 1000, 1000, 660, (not allowed):
    none fits, F = 348."""
    with store.reading() as view:
        requests = [p.request for p in view.pods.values() if p.request is not None]
        result = fragmentation.by_type(view.state, requests, DEFAULTS)
    assert result[("NVIDIA", A100)] == pytest.approx((0.20025, 0.267))
    assert result[("NVIDIA", T4)] == pytest.approx((0.348, 0.348))
    with store.reading() as view:
        assert fragmentation.by_type(view.state, [], DEFAULTS) == {}  # no workload: nothing is unusable


REPORT: dict[str, Any] = {
    "trace": "t", "input": "trace t", "seeds": 2, "until": 1.1,
    "policies": {
        "fgd": {"allocation_ratio": {"0.9": 0.9, "1.0": 0.94, "1.1": 0.95},
                "allocation_ratio_std": {"0.9": 0.0, "1.0": 0.01, "1.1": 0.01},
                "unallocated_gpu_share": {"1.0": 0.06}, "fragmentation_share": {"1.0": 0.05},
                "curve": {"arrived": [0.5, 1.0], "allocation_ratio": [0.5, 0.94], "min": [0.5, 0.93],
                          "max": [0.5, 0.95]}},
        "random": {"allocation_ratio": {"0.9": 0.85, "1.0": 0.86, "1.1": 0.87},
                   "curve": {"arrived": [0.5, 1.0], "allocation_ratio": [0.5, 0.86]}},
    },
    "replay": {"fgd": {"tasks": 10, "waited": 1, "never_placed": 0,
                       "queueing_delay_s": {"mean": 3.0, "p50": 1.0, "p95": 9.0, "max": 9.0},
                       "mean_allocation_ratio": 0.3, "peak_allocation_ratio": 0.5,
                       "series": {"time_s": [0, 10], "allocation_ratio": [0.1, 0.5]}}},
}


def test_report_json_is_read_into_tables_and_curves() -> None:
    report = simreport.parse(json.dumps(REPORT))
    assert [r.policy for r in report.fill] == ["fgd", "random"]
    assert report.fill[0].allocation["1.0"] == 0.94 and report.fill[0].unallocated == 0.06
    assert report.fill[1].unallocated is None
    assert report.fill_chart["data"] == [[0.5, 1.0], [0.5, 0.94], [0.5, 0.86]]
    assert report.replay[0].delay_p95 == 9.0 and report.replay_chart["series"] == ["fgd"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: "not json", "not JSON"),
    (lambda r: {"seeds": 1}, "'policies' is missing"),
    (lambda r: {**r, "policies": {}, "replay": {}}, "no policies"),
    (lambda r: r["policies"]["fgd"]["curve"].update(arrived=[0.5]) or r, "differ in length"),
    (lambda r: r["policies"]["fgd"]["allocation_ratio"].update({"1.0": "high"}) or r, "is not a number"),
    (lambda r: r["policies"]["random"]["curve"].update(arrived=[0.4, 1.0]) or r, "grid differs"),
])
def test_a_bad_report_is_refused_with_one_sentence(change: Any, message: str) -> None:
    data = change(copy.deepcopy(REPORT))
    with pytest.raises(HamiError, match=message):
        simreport.parse(data if isinstance(data, str) else json.dumps(data))


def test_pasted_specs_become_pods() -> None:
    deployment = """
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  template:
    metadata: {annotations: {nvidia.com/use-gputype: A100}}
    spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1}}}]}
"""
    p = parse_pod(deployment)
    assert p["metadata"] == {"annotations": {"nvidia.com/use-gputype": "A100"}, "name": "web", "namespace": "prod"}
    assert parse_pod('{"spec": {"containers": [{"name": "c"}]}}')["metadata"]["name"] == "what-if"
    for text, message in [("", "paste a pod spec"), ("kind: Service\nspec: {}", "has no pod"),
                          ("a: [", "not valid YAML"), ("kind: Pod\nspec: {containers: []}", "no containers"),
                          ("- 1", "not a mapping")]:
        with pytest.raises(HamiError, match=message):
            parse_pod(text)


def test_pages_split_into_numbered_slices() -> None:
    assert views.page(0, 1, 20) == (0, 1)
    assert views.page(45, 3, 20) == (40, 3)
    assert views.page(45, 99, 20) == (40, 3) and views.page(45, -1, 20) == (0, 3)


def test_other_vendors_need_no_code_of_their_own() -> None:
    """A Hygon DCU node registered in HAMi's colon form, next to an NVIDIA one: the rows group by
    vendor and type, and why-pending asks the engine about the DCU pod as about any other."""
    dcus = "".join(f"DCU-d1-{i},4,16384,100,DCU-Z100,0,true,{i},hami-core:" for i in range(2))
    s = UiStore(HamiConfig())
    s.replace_nodes([node("n1", gpu("GPU-a", A100, 81920)),
                     {"metadata": {"name": "d1", "annotations": {"hami.io/node-dcu-register": dcus}},
                      "status": {"allocatable": {"hygon.com/dcunum": "8"}}}])
    s.replace_pods([{"metadata": {"name": "w", "namespace": "ns"}, "spec": {"containers": [{"name": "c", "resources": {
        "limits": {"hygon.com/dcunum": 1, "hygon.com/dcumem": 20000, "hygon.com/dcucores": 10}}}]}}])
    with s.reading() as view:
        assert [(r.vendor, r.type, r.devices, r.memory) for r in views.overview(view)] == [
            ("DCU", "DCU-Z100", 2, 32768), ("NVIDIA", A100, 1, 81920)]
        assert views.nodes_per_vendor(view) == {"DCU": 1, "NVIDIA": 1}
        request = view.pods["ns/w"].request
        assert request is not None and views.asks(request) == [views.Ask("c", "DCU", 1, "20000 MiB", 10)]
    x = explain(s, "ns/w")
    assert x.decision.reasons == {"d1": "2/2 CardInsufficientMemory", "n1": "0/0 NodeInsufficientDevice"}
    # 81 % of 20000 MiB is the largest ask a 16384 MiB DCU takes.
    assert [(sg.kind, sg.text, sg.node) for sg in x.suggestions] == [
        ("memory", "Ask less device memory — c: 16200 MiB instead of 20000 MiB", "d1")]
