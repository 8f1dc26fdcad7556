"""Huawei Ascend NPUs: config, registration, webhook, requests, fit, topology, score, annotations.

Cases marked "HAMi:" are ported from HAMi v2.10's pkg/device/ascend tests with the answers
those tests assert (device_test.go, device_910c_pairing_test.go).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.annotations.node_register import encode_node_devices
from hami.annotations.selectors import NODE_POLICIES, Policy
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model import PodRequest
from hami.scheduler.engine import (
    Decision,
    PodContext,
    PolicyDefaults,
    commit,
    fit_pod_on_node,
    hami_node_scores,
    schedule,
)
from hami.scheduler.state import ClusterState
from hami.vendors.ascend import Ascend
from hami.vendors.registry import VendorSet, default_vendors
from hami.webhook.mutate import admit_pod, mutate

NOW_NS = 1_700_000_000_123_456_789
B3 = "Ascend910B3"


def vendor_set(vnpus: Any = None) -> VendorSet:
    return default_vendors() if vnpus is None else VendorSet.from_config(HamiConfig(sections={"vnpus": vnpus}))


def npu(i: int, group: int | None = None, **kw: Any) -> dict[str, Any]:
    device = {"id": f"npu-{i}", "index": i, "count": 4, "devmem": 65536, "devcore": 20, "type": B3,
              "health": True}
    if group is not None:
        device["custominfo"] = {"NetworkID": group}
    return {**device, **kw}


def eight(chip: str = B3, **kw: Any) -> list[dict[str, Any]]:
    """An 8-NPU server as the device plugin registers it: NPUs 0-3 in group 0, 4-7 in group 1."""
    return [npu(i, 0 if i < 4 else 1, type=chip, **kw) for i in range(8)]


def node_obj(name: str, devices: list[dict[str, Any]], chip: str = B3, **annotations: str) -> dict[str, Any]:
    devices = [{**d, "id": f"{name}-{d['id']}"} for d in devices]
    return {"metadata": {"name": name, "annotations": {f"hami.io/node-register-{chip}": json.dumps(devices),
                                                       **annotations}}}


def pod_obj(limits: dict[str, Any], annotations: dict[str, str] | None = None, name: str = "p",
            requests: dict[str, Any] | None = None, containers: int = 1) -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": dict(limits)}
    if requests is not None:
        resources["requests"] = dict(requests)
    return {"metadata": {"name": name, "namespace": "t", "annotations": dict(annotations or {})},
            "spec": {"containers": [{"name": f"c{i}", "resources": json.loads(json.dumps(resources))}
                                    for i in range(containers)]}}


def cluster(*nodes: dict[str, Any], vendors: VendorSet | None = None) -> ClusterState:
    vendors = vendors or vendor_set()
    registered = []
    for obj in nodes:
        node, warnings = vendors.registered_node(obj)
        assert not warnings and node is not None
        registered.append(node)
    return ClusterState(registered, vendors)


def request(pod: dict[str, Any], vendors: VendorSet | None = None) -> PodRequest:
    vendors = vendors or vendor_set()
    admitted, _ = admit_pod(pod, vendors)
    return vendors.pod_request(admitted)


def place(state: ClusterState, pod: dict[str, Any], **policies: Any) -> Decision:
    req = request(pod, state.vendors)
    decision = schedule(state, req, PolicyDefaults(**policies), with_scores=True)
    commit(state, req, decision)
    return decision


def picked(decision: Decision) -> list[str]:
    return [d.uuid.split("-", 1)[1] for c in decision.allocation for d in c]


def asks(chip: str = B3, count: int = 1, memory: int | None = None, core: int | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {f"huawei.com/{chip}": count}
    if memory is not None:
        limits[f"huawei.com/{chip}-memory"] = memory
    if core is not None:
        limits[f"huawei.com/{chip}-core"] = core
    return limits


HAMI_CORE = {"huawei.com/vnpu-mode": "hami-core"}

# ---- config -----------------------------------------------------------------------------


def test_chart_defaults_give_seven_chips_with_sorted_templates() -> None:
    vendors = vendor_set()
    chips = {v.name: v for v in vendors if isinstance(v, Ascend)}
    assert sorted(chips) == ["Ascend310P", "Ascend910A", "Ascend910B2", "Ascend910B3", "Ascend910B4",
                             "Ascend910B4-1", "Ascend910C"]
    b4_1 = chips["Ascend910B4-1"]
    assert b4_1.resources.count == "huawei.com/Ascend910B4-1"
    assert b4_1.resources.cores == "huawei.com/Ascend910B4-1-core"
    assert b4_1.keys.register == "hami.io/node-register-Ascend910B4-1"
    assert b4_1.keys.handshake == "hami.io/node-handshake-Ascend910B4-1"
    assert b4_1.keys.to_allocate == "hami.io/Ascend910B4-1-devices-to-allocate"
    assert b4_1.keys.uuid_pairs == (("hami.io/use-Ascend910B4-1-uuid", "hami.io/no-use-Ascend910B4-1-uuid"),)
    assert chips["Ascend310P"].chip.memory_capacity == 24576
    assert chips["Ascend910C"].chip.super_pod and chips["Ascend910C"].resources.memory_factor == 1
    assert [t.name for t in chips["Ascend910A"].chip.templates] == ["vir02", "vir04", "vir08", "vir16"]
    assert "huawei.com/Ascend910C-memory" in vendors.managed_resources()


def test_config_section_replaces_the_chips_and_sorts_templates() -> None:
    vendors = vendor_set({
        "hamiVnpuCore": "true",
        "configs": [{
            "commonWord": "Ascend910X", "chipName": "910X", "resourceName": "huawei.com/Ascend910X",
            "resourceMemoryName": "huawei.com/Ascend910X-memory", "memoryAllocatable": 1000,
            "memoryCapacity": 1200, "memoryFactor": 4, "overwriteEnv": True,
            "templates": [{"name": "big", "memory": 800}, {"name": "small", "memory": 200}],
        }],
    })
    (ascend,) = [v for v in vendors if isinstance(v, Ascend)]
    assert ascend.name == "Ascend910X" and ascend.hami_core_nodes
    assert [t.name for t in ascend.chip.templates] == ["small", "big"]
    assert ascend.resources.cores is None and ascend.resources.memory_factor == 4


@pytest.mark.parametrize("vnpus, message", [
    ([], "config: 'vnpus' must be a mapping"),
    ({"configs": {"a": 1}}, "config: vnpus.configs must be a list"),
    ({"configs": [{"commonWord": "A"}]}, "config: vnpus.configs[0].resourceName is required"),
    ({"configs": [{"commonWord": "A", "resourceName": "x/A", "resourceMemoryName": "x/A-memory",
                   "memoryAllocatable": "lots", "memoryCapacity": 1}]},
     "config: vnpus.configs[0].memoryAllocatable must be a whole number of at least 1, got 'lots'"),
    ({"configs": [{"commonWord": "A", "resourceName": "x/A", "resourceMemoryName": "x/A-memory",
                   "memoryAllocatable": 1, "memoryCapacity": 1, "templates": [{"name": "t"}]}]},
     "config: vnpus.configs[0].templates[0].memory is required"),
    ({"hamiVnpuCore": "yes"}, "config: vnpus.hamiVnpuCore must be true or false"),
])
def test_bad_config_is_a_clear_error(vnpus: Any, message: str) -> None:
    with pytest.raises(HamiError) as exc:
        vendor_set(vnpus)
    assert str(exc.value).startswith(message)


# ---- registration -----------------------------------------------------------------------


def test_registration_reads_network_groups_and_the_node_mode() -> None:
    vendors = vendor_set()
    node, warnings = vendors.registered_node(node_obj("n", eight(), **{"hami-vnpu-core": "true"}))
    assert not warnings and node is not None
    assert [d.custom["NetworkID"] for d in node.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {d.vendor for d in node.devices} == {B3} and {d.mode for d in node.devices} == {"hami-core"}
    plain, _ = vendors.registered_node(node_obj("n", eight()))
    assert plain is not None and {d.mode for d in plain.devices} == {"template"}
    # vnpus.hamiVnpuCore is the default; the node's annotation wins.
    on = vendor_set({"hamiVnpuCore": True})
    assert {d.mode for d in on.registered_node(node_obj("n", eight()))[0].devices} == {"hami-core"}  # type: ignore[union-attr]
    off = on.registered_node(node_obj("n", eight(), **{"hami-vnpu-core": "false"}))[0]
    assert off is not None and {d.mode for d in off.devices} == {"template"}


def test_registration_round_trips_through_our_encoding() -> None:
    vendors = vendor_set()
    node, _ = vendors.registered_node(node_obj("n", eight()))
    assert node is not None
    again, _ = vendors.registered_node({"metadata": {"name": "n", "annotations": {
        f"hami.io/node-register-{B3}": encode_node_devices(node.devices)}}})
    assert again is not None and again.devices == node.devices
    assert [d.custom for d in again.devices] == [d.custom for d in node.devices]


def test_each_chip_reads_only_its_own_registration() -> None:
    # HAMi selects devices by a substring of their type: a 910B4 ask would also see 910B4-1 NPUs.
    obj = node_obj("n", [npu(0, 0, type="Ascend910B4")], chip="Ascend910B4")
    obj["metadata"]["annotations"]["hami.io/node-register-Ascend910B4-1"] = json.dumps(
        [npu(1, 0, id="other", type="Ascend910B4-1")])
    state = cluster(obj)
    assert sorted(d.vendor for d in state.devices) == ["Ascend910B4", "Ascend910B4-1"]
    decision = place(state, pod_obj(asks("Ascend910B4-1", 1, 65536)))
    assert [d.uuid for c in decision.allocation for d in c] == ["other"]
    decision = place(state, pod_obj(asks("Ascend910B4-1", 1, 65536), name="q"))
    assert decision.node is None and decision.reasons == {"n": "1/1 CardInsufficientMemory"}


@pytest.mark.parametrize("value, problem", [("[{\"id\": 3}]", "missing 'id'"),
                                            ("[{\"id\": \"a\", \"custominfo\": 3}]", "'custominfo' must be")])
def test_malformed_registration_is_a_warning(value: str, problem: str) -> None:
    node, warnings = vendor_set().registered_node(
        {"metadata": {"name": "n", "annotations": {f"hami.io/node-register-{B3}": value}}})
    assert node is None
    assert len(warnings) == 1 and f"malformed hami.io/node-register-{B3} annotation" in warnings[0]
    assert problem in warnings[0]


# ---- webhook ----------------------------------------------------------------------------


def admitted_container(limits: dict[str, Any], annotations: dict[str, str] | None = None,
                       vendors: VendorSet | None = None, **kw: Any) -> tuple[dict[str, Any], bool]:
    pod, found = admit_pod(pod_obj(limits, annotations, **kw), vendors or vendor_set())
    return pod["spec"]["containers"][0], found


def test_webhook_rounds_memory_up_to_a_template_in_limits_and_requests() -> None:
    # HAMi: Test_MutateAdmission_NilRequests (910A, no requests block).
    container, found = admitted_container(asks("Ascend910A", 1, 8000))
    assert found
    assert container["resources"]["limits"]["huawei.com/Ascend910A-memory"] == "8738"
    assert container["resources"]["requests"]["huawei.com/Ascend910A-memory"] == "8738"
    container, _ = admitted_container(asks("Ascend910A", 1))
    assert container["resources"]["requests"]["huawei.com/Ascend910A-memory"] == "32768"


def test_webhook_memory_beyond_templates_takes_the_whole_npu() -> None:
    # HAMi: "resourcememoryname not within the template scope, but smaller than MemoryCapacity".
    container, _ = admitted_container(asks("Ascend910A", 1, 20000),
                                      requests={"huawei.com/Ascend910A-memory": 20000})
    assert container["resources"]["limits"]["huawei.com/Ascend910A-memory"] == "32768"
    assert container["resources"]["requests"]["huawei.com/Ascend910A-memory"] == "32768"
    # 310P: beyond the largest template but within capacity (24576) -> memoryAllocatable 21527.
    container, _ = admitted_container(asks("Ascend310P", 1, 22000))
    assert container["resources"]["limits"]["huawei.com/Ascend310P-memory"] == "21527"


@pytest.mark.parametrize("limits, annotations, message", [
    (asks("Ascend910A", 2, 40000), None, "huawei.com/Ascend910A-memory 40000 is invalid"),
    (asks("Ascend910A", 2, 8738), None, "vNPU not supported for multiple devices"),
    (asks("Ascend910C", 3), None, "Ascend910C device request must be 1 or 2*n, got 3"),
    (asks(B3, 1, 8738, core=10), None, "huawei.com/Ascend910B3-core is only supported in hami-core (soft split) mode"),
    (asks(B3, 1, 8738, core=25), {"huawei.com/vnpu-mode": "other"},
     "huawei.com/Ascend910B3-core is only supported in hami-core (soft split) mode"),
])
def test_webhook_denials_carry_hamis_text(limits: dict[str, Any], annotations: dict[str, str] | None,
                                          message: str) -> None:
    verdict = mutate(pod_obj(limits, annotations), vendor_set())
    assert not verdict.allowed and verdict.message == message


def test_webhook_allows_whole_npus_for_multiple_devices_and_core_zero() -> None:
    assert mutate(pod_obj(asks("Ascend910A", 2, 32768)), vendor_set()).allowed
    assert mutate(pod_obj(asks(B3, 1, 8738, core=0)), vendor_set()).allowed
    assert mutate(pod_obj(asks(B3, 2, 15360, core=10), HAMI_CORE), vendor_set()).allowed


def test_a_count_of_zero_asks_for_nothing() -> None:
    # HAMi routes the pod and writes the whole NPU's memory; hami leaves it alone, as every vendor.
    assert mutate(pod_obj(asks(B3, 0, 8000)), vendor_set()).patch == []
    assert not vendor_set().pod_request(pod_obj(asks(B3, 0))).wants_devices


def test_webhook_910c_superpod_asks_a_whole_card() -> None:
    # HAMi: Test_MutateAdmission910C.
    container, _ = admitted_container(asks("Ascend910C", 1), requests={"huawei.com/Ascend910C": 1})
    assert container["resources"]["limits"]["huawei.com/Ascend910C"] == "2"
    assert container["resources"]["requests"]["huawei.com/Ascend910C"] == "2"
    container, _ = admitted_container(asks("Ascend910C", 4))
    assert container["resources"]["limits"]["huawei.com/Ascend910C"] == 4
    assert "huawei.com/Ascend910C" not in container["resources"]["requests"]


def test_webhook_910c_without_superpod_keeps_odd_counts() -> None:
    # HAMi: Test_MutateAdmission910C_VNPUSplit.
    vendors = vendor_set({"configs": [{
        "commonWord": "Ascend910C", "resourceName": "huawei.com/Ascend910C",
        "resourceMemoryName": "huawei.com/Ascend910C-memory", "memoryAllocatable": 65536,
        "memoryCapacity": 65536, "templates": [{"name": "vir05_1c_16g", "memory": 16384},
                                               {"name": "vir10_3c_32g", "memory": 32768}]}]})
    container, _ = admitted_container(asks("Ascend910C", 1, 16384), vendors=vendors)
    assert container["resources"]["limits"]["huawei.com/Ascend910C"] == 1
    assert container["resources"]["limits"]["huawei.com/Ascend910C-memory"] == "16384"
    container, _ = admitted_container(asks("Ascend910C", 3), vendors=vendors)
    assert container["resources"]["limits"]["huawei.com/Ascend910C"] == 3


def test_webhook_hami_core_keeps_memory_and_cores_as_asked() -> None:
    # HAMi: Test_MutateAdmission_VNPUCoreMode.
    container, _ = admitted_container(asks(B3, 1, 15360, core=20), HAMI_CORE)
    assert container["resources"]["limits"]["huawei.com/Ascend910B3-memory"] == "15360"
    assert container["resources"]["limits"]["huawei.com/Ascend910B3-core"] == 20
    container, _ = admitted_container(asks(B3, 1, 15360))
    assert container["resources"]["limits"]["huawei.com/Ascend910B3-memory"] == "16384"


def test_webhook_runtime_class_and_overwrite_env() -> None:
    chip = {"commonWord": "Ascend910A", "resourceName": "huawei.com/Ascend910A",
            "resourceMemoryName": "huawei.com/Ascend910A-memory", "memoryAllocatable": 32768,
            "memoryCapacity": 32768, "runtimeClassName": "ascend", "overwriteEnv": "true"}
    other = {**chip, "commonWord": "Ascend310P", "resourceName": "huawei.com/Ascend310P",
             "resourceMemoryName": "huawei.com/Ascend310P-memory"}
    vendors = vendor_set({"configs": [chip, other]})
    pod = pod_obj(asks("Ascend910A", 1))
    pod["spec"]["containers"].append({"name": "sidecar", "resources": {}})
    admitted, found = admit_pod(pod, vendors)
    assert found and admitted["spec"]["runtimeClassName"] == "ascend"
    npu_container, sidecar = admitted["spec"]["containers"]
    assert "env" not in npu_container  # it asks an Ascend chip: its devices stay visible
    assert sidecar["env"] == [{"name": "ASCEND_VISIBLE_DEVICES", "value": ""}]
    pod["spec"]["runtimeClassName"] = "mine"
    assert admit_pod(pod, vendors)[0]["spec"]["runtimeClassName"] == "mine"
    verdict = mutate(pod_obj(asks("Ascend910A", 1)), vendors)
    assert {"op": "add", "path": "/spec/runtimeClassName", "value": "ascend"} in verdict.patch
    assert {"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"} in verdict.patch


# ---- requests ---------------------------------------------------------------------------


def ask_of(limits: dict[str, Any], vendors: VendorSet | None = None) -> Any:
    (container,) = (vendors or vendor_set()).pod_request(pod_obj(limits)).containers
    return container


def test_requests_memory_times_factor_and_whole_npu_without_memory() -> None:
    # HAMi: Test_GenerateResourceRequests, Test_GenerateResourceRequestsFactor.
    ask = ask_of(asks("Ascend910A", 2, 8738))
    assert (ask.nums, ask.memreq, ask.coresreq, ask.vendor) == (2, 8738, 0, "Ascend910A")
    whole = ask_of(asks("Ascend910A", 2))
    assert (whole.memreq, whole.mem_percentage) == (0, 100)
    chip = {"commonWord": "Ascend910A", "resourceName": "huawei.com/Ascend910A",
            "resourceMemoryName": "huawei.com/Ascend910A-memory", "memoryAllocatable": 32768,
            "memoryCapacity": 32768}
    for factor, memreq in ((10, 1280), (100, 12800), (0, 128)):
        vendors = vendor_set({"configs": [{**chip, "memoryFactor": factor}]})
        assert ask_of(asks("Ascend910A", 1, 128), vendors).memreq == memreq
    cores = ask_of(asks(B3, 1, 15360, core=10))
    assert (cores.memreq, cores.coresreq) == (15360, 10)


@pytest.mark.parametrize("limits, message", [
    (asks(B3, 1, "16Gi", core=10), "Ascend memory is counted in MB, not bytes"),
    (asks(B3, 1, "-100"), "is negative"),
    (asks(B3, 1, "-1m"), "is negative"),
    ({"huawei.com/Ascend910B3": 2200000000}, "larger than HAMi's limit"),
    (asks(B3, 1, core=-1), "is negative"),
    (asks(B3, 1, core=2200000000), "larger than HAMi's limit"),
])
def test_out_of_range_requests_are_errors(limits: dict[str, Any], message: str) -> None:
    # HAMi: Test_GenerateResourceRequests_OutOfRangeValues (HAMi drops the ask; we say why).
    with pytest.raises(HamiError) as exc:
        vendor_set().pod_request(pod_obj(limits))
    assert message in str(exc.value)


def test_memory_factor_overflow_is_an_error() -> None:
    chip = {"commonWord": "Ascend910A", "resourceName": "huawei.com/Ascend910A",
            "resourceMemoryName": "huawei.com/Ascend910A-memory", "memoryAllocatable": 32768,
            "memoryCapacity": 32768, "memoryFactor": 10}
    with pytest.raises(HamiError, match="memoryFactor 10"):
        vendor_set({"configs": [chip]}).pod_request(pod_obj(asks("Ascend910A", 1, 300000000)))


# ---- fit --------------------------------------------------------------------------------


def one_npu_node(**kw: Any) -> dict[str, Any]:
    annotations = kw.pop("annotations", {})
    return node_obj("n", [npu(0, **kw)], **annotations)


@pytest.mark.parametrize("device, limits, annotations, reason", [
    ({"devmem": 128}, asks(B3, 1, 512), {}, "1/1 CardInsufficientMemory"),
    ({}, asks(B3, 1, 16384), {"hami.io/use-Ascend910B3-uuid": "n-npu-9"}, "1/1 CardUuidMismatch"),
    ({}, asks(B3, 1, 16384), {"hami.io/no-use-Ascend910B3-uuid": "n-npu-0"}, "1/1 CardUuidMismatch"),
    ({"health": False}, asks(B3, 1, 16384), {}, "1/1 CardNotHealth"),
    ({"count": 0}, asks(B3, 1, 16384), {}, "1/1 CardTimeSlicingExhausted"),
    ({}, asks(B3, 1, 15360, core=20), HAMI_CORE, "1/1 ModeNotFit"),
    ({}, asks(B3, 1), HAMI_CORE, "1/1 ModeNotFit"),
])
def test_fit_reasons(device: dict[str, Any], limits: dict[str, Any], annotations: dict[str, str],
                     reason: str) -> None:
    # HAMi: TestDevices_Fit (the fit-fail rows).
    state = cluster(one_npu_node(**device))
    decision = place(state, pod_obj(limits, annotations))
    assert decision.node is None and decision.reasons == {"n": reason}


def test_fit_counts_each_npu_once_and_reports_the_rest() -> None:
    # HAMi: "partial allocation AllocatedCardsInsufficientRequest for multiple cards".
    state = cluster(node_obj("n", [npu(0, health=False), npu(1), npu(2)]))
    decision = place(state, pod_obj(asks(B3, 3, 65536)))
    assert decision.reasons == {"n": "1/3 CardNotHealth, 2/3 AllocatedCardsInsufficientRequest"}
    assert place(state, pod_obj(asks(B3, 4, 65536))).reasons == {"n": "3/3 NodeInsufficientDevice"}


def test_hami_core_pods_need_hami_core_nodes_and_count_cores_in_percent() -> None:
    # HAMi: the ModeNotFit rows and "effective Totalcore 100" in hami-core mode.
    state = cluster(node_obj("soft", [npu(0, devcore=20)], **{"hami-vnpu-core": "true"}),
                    node_obj("hard", [npu(0, devcore=20)]))
    first = place(state, pod_obj(asks(B3, 1, 15360, core=50), HAMI_CORE, name="a"))
    assert first.node == "soft" and first.reasons == {"hard": "1/1 ModeNotFit"}
    assert [(d.usedmem, d.usedcores) for d in first.allocation[0]] == [(15360, 50)]
    second = place(state, pod_obj(asks(B3, 1, 15360, core=60), HAMI_CORE, name="b"))
    assert second.reasons == {"soft": "1/1 CardInsufficientCore", "hard": "1/1 ModeNotFit"}
    # A pod without the annotation follows the node: template mode fits on both.
    assert place(state, pod_obj(asks(B3, 1, 16384), name="c")).node is not None


def test_exclusive_and_mutex() -> None:
    state = cluster(node_obj("n", [npu(0, devcore=100)], **{"hami-vnpu-core": "true"}))
    place(state, pod_obj(asks(B3, 1, 1024), HAMI_CORE, name="a"))
    whole = place(state, pod_obj(asks(B3, 1, 1024, core=100), HAMI_CORE, name="b"))
    assert whole.reasons == {"n": "1/1 ExclusiveDeviceAllocateConflict"}
    mutex = place(state, pod_obj(asks(B3, 1, 1024), {"hami.io/gpu-scheduler-policy": "mutex"}, name="c"))
    assert mutex.reasons == {"n": "1/1 ExclusiveDeviceAllocateConflict"}


# ---- topology ---------------------------------------------------------------------------


def test_multi_npu_asks_take_the_largest_network_group_first() -> None:
    state = cluster(node_obj("n", eight()))
    # Fill NPUs 0 and 4, 5: group 0 keeps 3 free, group 1 keeps 2.
    for name, index in (("a", 0), ("b", 4), ("c", 5)):
        place(state, pod_obj(asks(B3, 1, 65536), {"hami.io/use-Ascend910B3-uuid": f"n-npu-{index}"}, name=name))
    three = place(state, pod_obj(asks(B3, 3, 65536), name="three"))
    assert sorted(picked(three)) == ["npu-1", "npu-2", "npu-3"] and three.score is not None
    state.remove_pod("t/three")
    four = place(state, pod_obj(asks(B3, 4, 65536), name="four"))
    assert sorted(picked(four)[:3]) == ["npu-1", "npu-2", "npu-3"] and picked(four)[3] in ("npu-6", "npu-7")


def test_hamis_network_id_table_row() -> None:
    # HAMi: "fit success. schedule by NetworkID": NPUs in groups 0, 1, 1; two NPUs -> group 1.
    state = cluster(node_obj("n", [npu(0, 0, devmem=128), npu(1, 1, devmem=128), npu(2, 1, devmem=128)]))
    req = PodRequest(key="t/p", containers=(ask_of(asks(B3, 2, 64)),))  # as HAMi's test: no webhook
    assert picked(schedule(state, req)) == ["npu-2", "npu-1"]


def test_without_network_groups_the_first_fitting_npus_are_taken() -> None:
    state = cluster(node_obj("n", [npu(i) for i in range(8)]))
    assert picked(place(state, pod_obj(asks(B3, 3, 65536)))) == ["npu-7", "npu-6", "npu-5"]
    before = base_score(state, "n")
    assert place(state, pod_obj(asks(B3, 1, 65536), name="q")).score == before  # no topology score


def c910(*indices: int, group: int | None = 0) -> dict[str, Any]:
    return node_obj("n", [npu(i, group, type="Ascend910C") for i in indices], chip="Ascend910C")


@pytest.mark.parametrize("indices, group, nums, expected", [
    ((0, 1, 2, 4, 6), 0, 4, None),  # HAMi: TestAscend910C_FitPartialAllocationBug
    ((0, 2), 0, 2, None),  # HAMi: TestAscend910C_FitExactCountBypassBug
    ((0, 1), 0, 2, ["npu-1", "npu-0"]),  # HAMi: TestAscend910C_FitFullPairSucceeds
    ((0, 2), None, 2, None),  # HAMi: TestAscend910C_FitWithoutNetworkID_ValidatesPairing
    ((0, 1), None, 2, ["npu-1", "npu-0"]),
    ((0, 2, 4, 6), None, 4, None),  # HAMi: TestComputeBestCombination910C_NoFullPairsReturnsEmpty
    ((0, 1, 2), 0, 2, ["npu-1", "npu-0"]),  # HAMi: TestDevices_Fit_910C
    ((0, 1, 2, 3), 0, 3, None),  # whole cards only: three NPUs cannot be given
])
def test_910c_takes_whole_cards(indices: tuple[int, ...], group: int | None, nums: int,
                                expected: list[str] | None) -> None:
    state = cluster(c910(*indices, group=group))
    req = PodRequest(key="t/p", containers=(ask_of(asks("Ascend910C", nums)),))
    decision = schedule(state, req)
    if expected is None:
        assert decision.node is None and "AllocatedCardsInsufficientRequest" in decision.reasons["n"]
    else:
        assert picked(decision) == expected


def test_910c_reason_is_the_same_walked_or_vectorised() -> None:
    state = cluster(c910(0, 1, 2, 4, 6))
    one = PodRequest(key="t/p", containers=(ask_of(asks("Ascend910C", 4)),))
    # A second container asking devices makes the engine walk the node instead.
    two = PodRequest(key="t/q", containers=(ask_of(asks("Ascend910C", 4)), ask_of(asks("Ascend910C", 2))))
    assert schedule(state, one).reasons == {"n": "5/5 AllocatedCardsInsufficientRequest"}
    assert schedule(state, two).reasons == {"n": "5/5 AllocatedCardsInsufficientRequest"}


# ---- node score -------------------------------------------------------------------------


def two_servers() -> ClusterState:
    """Two servers with 4 NPUs busy each: on `a` the free NPUs share a group, on `b` they do not."""
    state = cluster(node_obj("a", eight()), node_obj("b", eight()))
    for node, busy in (("a", (4, 5, 6, 7)), ("b", (2, 3, 6, 7))):
        for i in busy:
            place(state, pod_obj(asks(B3, 1, 65536), {"hami.io/use-Ascend910B3-uuid": f"{node}-npu-{i}"},
                                 name=f"{node}{i}"))
    return state


@pytest.mark.parametrize("policy", list(NODE_POLICIES))
def test_node_score_prefers_one_network_group_under_either_policy(policy: Policy) -> None:
    # HAMi adds the raw score under spread too, which then prefers the split placement.
    state = two_servers()
    decision = place(state, pod_obj(asks(B3, 4, 65536)), node_policy=policy)
    assert decision.node == "a"
    assert decision.scores["a"] - decision.scores["b"] == (10 - 5 if policy is Policy.BINPACK else -(10 - 5))


def test_310p_has_no_topology_score() -> None:
    devices = [npu(i, 0, type="Ascend310P", devmem=21527) for i in range(2)]
    state = cluster(node_obj("n", devices, chip="Ascend310P"))
    assert place(state, pod_obj(asks("Ascend310P", 2, 21527))).score == pytest.approx(0.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(0, 7), max_size=6), min_size=1, max_size=4), st.integers(1, 5),
       st.sampled_from(list(Policy)))
def test_vectorised_score_equals_the_walk(busy: list[list[int]], nums: int, policy: Policy) -> None:
    """The engine scores Ascend nodes without placing the pod on each; the answer must be the
    one placing it and calling score_node gives."""
    state = cluster(*(node_obj(f"n{k}", eight()) for k in range(len(busy))))
    for k, indices in enumerate(busy):
        for i in set(indices):
            place(state, pod_obj(asks(B3, 1, 65536), {"hami.io/use-Ascend910B3-uuid": f"n{k}-npu-{i}"},
                                 name=f"n{k}-{i}"))
    req = request(pod_obj(asks(B3, nums, 65536), name="x"))
    defaults = PolicyDefaults(node_policy=policy)
    ctx = PodContext.of(req, defaults)
    for name, total in schedule(state, req, defaults, with_scores=True).scores.items():
        node = state.node_pos[name]
        allocation, _ = fit_pod_on_node(state, node, ctx, ctx.static_codes(state))
        assert allocation is not None
        walked = np.float32(state.vendors[B3].score_node(ctx, state, node, allocation))
        assert np.float32(total) == base_score(state, name) + walked, (name, total, walked)


def base_score(state: ClusterState, name: str) -> np.float32:
    return np.float32(hami_node_scores(state, np.asarray([state.node_pos[name]]))[0])


# ---- annotations and restart ------------------------------------------------------------


def decide(state: ClusterState, pod: dict[str, Any]) -> tuple[Decision, dict[str, str]]:
    req = request(pod, state.vendors)
    decision = schedule(state, req)
    assert decision.node is not None, decision.reasons
    commit(state, req, decision)
    node = state.nodes[state.node_pos[decision.node]]
    return decision, state.vendors.decision_annotations(node, req, decision.allocation, NOW_NS)


def test_decision_annotations_template_mode() -> None:
    # HAMi: Test_PatchAnnotations (910A, 8738 -> vir08).
    state = cluster(node_obj("n", [npu(0, 0, type="Ascend910A", devmem=32768)], chip="Ascend910A"))
    decision, annotations = decide(state, pod_obj(asks("Ascend910A", 1, 8000)))
    assert annotations == {
        "hami.io/Ascend910A-devices-to-allocate": "n-npu-0,Ascend910A,8738,0:;",
        "hami.io/Ascend910A-devices-allocated": "n-npu-0,Ascend910A,8738,0:;",
        "predicate-time": "1700000000",
        "huawei.com/Ascend910A": '[{"UUID":"n-npu-0","temp":"vir08","memory":8738}]',
    }


def test_decision_annotations_whole_npu_and_hami_core() -> None:
    state = cluster(node_obj("n", [npu(0, 0), npu(1, 0)], **{"hami-vnpu-core": "true"}))
    _, whole = decide(state, pod_obj(asks(B3, 1, 65536), name="a"))
    assert whole["huawei.com/Ascend910B3"] == '[{"UUID":"n-npu-1","memory":65536}]'
    # HAMi: Test_PatchAnnotations_VNPUCoreMode: memory and cores, no template.
    _, soft = decide(state, pod_obj(asks(B3, 1, 8192, core=5), HAMI_CORE, name="b"))
    assert soft["huawei.com/Ascend910B3"] == '[{"UUID":"n-npu-0","memory":8192,"core":5}]'
    assert set(state.vendors.decision_keys()) >= {"predicate-time", "huawei.com/Ascend910B3",
                                                  "hami.io/Ascend910B3-devices-to-allocate"}


def test_restart_rebuilds_usage_from_the_annotations() -> None:
    state = cluster(node_obj("n", eight()), node_obj("m", eight()))
    written = []
    for k, limits in enumerate([asks(B3, 2, 65536), asks(B3, 1, 8000), asks(B3, 1, 30000)]):
        decision, annotations = decide(state, pod_obj(limits, name=f"p{k}"))
        written.append((decision.node, annotations))
    fresh = cluster(node_obj("n", eight()), node_obj("m", eight()))
    for k, (node, annotations) in enumerate(written):
        allocation = fresh.vendors.allocation_from_annotations(annotations)
        assert allocation is not None
        assert not fresh.add_pod(f"t/p{k}", str(node), allocation)
    for name in ("used", "usedmem", "usedcores"):
        assert np.array_equal(getattr(fresh, name), getattr(state, name)), name


# ---- hami schedule ----------------------------------------------------------------------


SNAPSHOT = """
apiVersion: v1
kind: Node
metadata:
  name: b3
  annotations:
    hami.io/node-register-Ascend910B3: '{b3}'
---
apiVersion: v1
kind: Node
metadata:
  name: p310
  annotations:
    hami.io/node-register-Ascend310P: '{p310}'
---
apiVersion: v1
kind: Pod
metadata: {{name: small, namespace: ai}}
spec:
  containers:
  - name: c
    resources: {{limits: {{huawei.com/Ascend910B3: 1, huawei.com/Ascend910B3-memory: 3000}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: pair, namespace: ai}}
spec:
  containers:
  - name: c
    resources: {{limits: {{huawei.com/Ascend910B3: 4}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: infer, namespace: ai}}
spec:
  containers:
  - name: c
    resources: {{limits: {{huawei.com/Ascend310P: 1, huawei.com/Ascend310P-memory: 5000}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: denied, namespace: ai}}
spec:
  containers:
  - name: c
    resources: {{limits: {{huawei.com/Ascend910B3: 2, huawei.com/Ascend910B3-memory: 3000}}}}
"""


def test_hami_schedule_snapshot(tmp_path: Path) -> None:
    b3 = json.dumps([{**d, "id": f"b3-{d['id']}"} for d in eight()])
    p310 = json.dumps([npu(i, type="Ascend310P", devmem=21527, count=7, id=f"p-{i}") for i in range(2)])
    path = tmp_path / "snap.yaml"
    path.write_text(SNAPSHOT.format(b3=b3, p310=p310))
    result = subprocess.run([sys.executable, "-m", "hami", "schedule", "--snapshot", str(path), "-o", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pod ai/denied: the webhook would deny it (vNPU not supported for multiple devices)" in result.stderr
    decisions = {d["pod"]: d for d in json.loads(result.stdout)["decisions"]}
    assert list(decisions) == ["ai/small", "ai/pair", "ai/infer"]
    small = decisions["ai/small"]
    assert small["node"] == "b3"
    assert small["containers"] == [[{"uuid": "b3-npu-7", "type": B3, "memory": 16384, "cores": 0}]]
    assert small["reasons"] == {"p310": "0/0 NodeInsufficientDevice"}
    pair = decisions["ai/pair"]
    # Group 0 (NPUs 0-3) is whole; group 1 has NPU 7 partly used.
    assert sorted(d["uuid"] for d in pair["containers"][0]) == ["b3-npu-0", "b3-npu-1", "b3-npu-2", "b3-npu-3"]
    assert all(d["memory"] == 65536 for d in pair["containers"][0])
    infer = decisions["ai/infer"]
    assert infer["node"] == "p310" and infer["containers"][0][0]["memory"] == 6144


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([B3, "Ascend910C"]), st.integers(1, 4),
                          st.sampled_from([None, 8000, 16384, 30000, 65536])), min_size=1, max_size=12))
def test_random_pods_never_overcommit_and_910c_gets_whole_cards(pods: list[tuple[str, int, int | None]]) -> None:
    state = cluster(node_obj("b3", eight()), node_obj("c", [npu(i, 0, type="Ascend910C") for i in range(8)],
                                                    chip="Ascend910C"))
    for k, (chip, nums, memory) in enumerate(pods):
        pod = pod_obj(asks(chip, nums, memory), name=f"p{k}")
        if not mutate(pod, state.vendors).allowed:  # e.g. a vNPU on several NPUs
            continue
        decision = place(state, pod)
        for container in decision.allocation:
            assert len({d.uuid for d in container}) == len(container)
            if chip == "Ascend910C":
                cards = sorted(int(d.uuid.rsplit("-", 1)[1]) // 2 for d in container)
                assert len(container) == 1 or cards == sorted(c for c in set(cards) for _ in range(2))
    assert (state.used <= state.count).all()
    assert (state.usedmem <= state.totalmem).all()
