"""MetaX GPU and sGPU: HAMi's pkg/device/metax rules, with the cases of its device and sdevice tests."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from hami.annotations.selectors import Policy
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model import ContainerDevice, ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.cache import ClusterCache
from hami.scheduler.engine import Decision, PodContext, PolicyDefaults, commit, fit_pod_on_node
from hami.scheduler.state import ClusterState
from hami.vendors.base import PodDecisionInput
from hami.vendors.metax import encode_sgpu_devices, prefer_metalink
from hami.webhook.mutate import mutate

from .vendor_scenarios import (
    VENDORS,
    admitted,
    cluster,
    ctr,
    decision_annotations,
    fit,
    hami_schedule,
    marks_of,
    node_obj,
    place,
    pod_obj,
    registered,
    restarted,
    set_marks,
    usage_of,
    uuids,
    vendor_set,
    with_usage,
)

GPU, SGPU = VENDORS["Metax-GPU"], VENDORS["Metax-SGPU"]
GPU_COUNT = "metax-tech.com/gpu"
COUNT, MEM, CORES = "metax-tech.com/sgpu", "metax-tech.com/vmemory", "metax-tech.com/vcore"
APP, QOS, TOPO = "metax-tech.com/sgpu-app-class", "metax-tech.com/sgpu-qos-policy", "metax-tech.com/sgpu-topology-aware"
NODE_DEVICES = "metax-tech.com/node-gpu-devices"


# ---- Metax-GPU -------------------------------------------------------------------------------


def gpu_node(name: str, gpus: int, **annotations: str) -> dict[str, Any]:
    return node_obj(name, annotations=annotations, capacity={GPU_COUNT: str(gpus)})


def test_gpu_registration_from_capacity_as_hami_test() -> None:
    [node] = registered(VENDORS, gpu_node("test", 1))
    [device] = node.devices
    assert (device.id, device.index, device.count, device.devmem, device.devcore, device.type) == \
        ("test-metax-0", 0, 1, 65536, 100, "Metax-GPU")
    assert registered(VENDORS, gpu_node("test", 0)) == []


def test_gpu_webhook_and_request() -> None:
    assert GPU.admit(ctr(limits={GPU_COUNT: "1"}), {}) is True
    assert GPU.admit(ctr(requests={GPU_COUNT: "1"}), {}) is False
    assert GPU.admit(ctr(limits={GPU_COUNT: "0"}), {}) is False
    assert GPU.ask(ctr(requests={GPU_COUNT: "2"})) == ContainerRequest(nums=2, memreq=0, mem_percentage=100,
                                                                     coresreq=100, vendor="Metax-GPU")
    assert GPU.ask(ctr(limits={})) is None


def whole(uuid: str, index: int, mem: int = 1280, count: int = 100, health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=100, type="Metax-GPU", index=index, health=health,
                      vendor="Metax-GPU")


def gpu_ask(nums: int = 1, mem: int = 512, pct: int = 0, cores: int = 50) -> ContainerRequest:
    return ContainerRequest(nums=nums, memreq=mem, mem_percentage=pct, coresreq=cores, vendor="Metax-GPU")


@pytest.mark.parametrize(("devices", "usage", "request_", "annotations", "want", "reason"), [
    pytest.param([whole("dev-0", 0, 128), whole("dev-1", 1, 128)], {}, gpu_ask(mem=64), {}, ["dev-1"], "",
                 id="fit success"),
    pytest.param([whole("dev-0", 0, 128)], {}, gpu_ask(), {}, None, "1/1 CardInsufficientMemory",
                 id="memory not enough"),
    pytest.param([whole("dev-0", 0, 1024)], {"dev-0": (0, 0, 100)}, gpu_ask(), {}, None, "1/1 CardInsufficientCore",
                 id="core not enough"),
    pytest.param([whole("dev-0", 0)], {"dev-0": (100, 0, 0)}, gpu_ask(), {}, None, "1/1 CardTimeSlicingExhausted",
                 id="card overused"),
    pytest.param([whole("dev-0", 0)], {}, gpu_ask(cores=120), {}, ["dev-0"], "", id="core limit can't exceed 100"),
    pytest.param([whole("dev-0", 0)], {"dev-0": (20, 0, 0)}, gpu_ask(cores=100), {}, None,
                 "1/1 ExclusiveDeviceAllocateConflict", id="card exclusively"),
    pytest.param([whole("dev-0", 0)], {"dev-0": (20, 0, 100)}, gpu_ask(cores=0), {}, None,
                 "1/1 CardComputeUnitsExhausted", id="compute units exhausted"),
    pytest.param([whole("dev-0", 0)], {"dev-0": (20, 0, 10)}, gpu_ask(mem=0, pct=10, cores=20), {}, ["dev-0"], "",
                 id="memory percentage"),
    pytest.param([whole("dev-0", 0, 128)], {"dev-0": (1, 0, 0)}, gpu_ask(mem=64),
                 {"hami.io/gpu-scheduler-policy": "mutex"}, None, "1/1 ExclusiveDeviceAllocateConflict",
                 id="mutex policy rejects used device"),
    pytest.param([whole("dev-0", 0, health=False)], {}, gpu_ask(), {}, None, "1/1 CardNotHealth",
                 id="card not healthy"),
    # HAMi has no UUID filter for whole MetaX GPUs: another vendor's annotation changes nothing.
    pytest.param([whole("dev-0", 0)], {}, gpu_ask(), {"metax-tech.com/use-gpuuuid": "other"}, ["dev-0"], "",
                 id="no uuid filter"),
])
def test_gpu_fit_as_hami(devices: list[DeviceInfo], usage: dict, request_: ContainerRequest, annotations: dict,
                         want: list[str] | None, reason: str) -> None:
    decision = fit(VENDORS, devices, request_, usage, annotations)
    if want is None:
        assert decision.node is None and decision.reasons == {"n": reason}
    else:
        assert uuids(decision) == [want]


def test_gpu_pod_with_two_containers_cannot_split_over_gpus() -> None:
    # HAMi's customFilterRule: a later container may only use the device the pod already has,
    # and a whole GPU runs one task, so a second container never fits.
    state = cluster(VENDORS, gpu_node("a", 2))
    decision = place(state, VENDORS, pod_obj("p", ctr("x", limits={GPU_COUNT: "1"}), ctr("y", limits={GPU_COUNT: "1"})))
    assert decision.node is None
    assert decision.reasons == {"a": "1/2 CardTimeSlicingExhausted, 1/2 CardNotFoundCustomFilterRule"}


def gpu_context(policy: Policy) -> PodContext:
    return PodContext.of(PodRequest(key="t/p", containers=()), PolicyDefaults(node_policy=policy))


@pytest.mark.parametrize(("policy", "annotation", "taken", "want"), [
    (Policy.BINPACK, {"metax-tech.com/gpu.topology.losses": '{"1":100,"2":200}'}, 2, 1800.0),
    (Policy.SPREAD, {"metax-tech.com/gpu.topology.scores": '{"1":100,"2":200}'}, 1, 1900.0),
    (Policy.BINPACK, {"metax-tech.com/gpu.topology.scores": '{"1":100}'}, 1, 0.0),  # the other policy's table
    (Policy.BINPACK, {"metax-tech.com/gpu.topology.losses": '{"1":100}'}, 2, 2000.0),  # no entry: loss 0
    (Policy.BINPACK, {"metax-tech.com/gpu.topology.losses": "not json"}, 1, 2000.0),
])
def test_gpu_score_node_as_hami(policy: Policy, annotation: dict[str, str], taken: int, want: float) -> None:
    state = cluster(VENDORS, gpu_node("a", 2, **annotation))
    allocation = [[ContainerDevice(f"a-metax-{i}", "Metax-GPU", 65536, 100) for i in range(taken)]]
    assert GPU.score_node(gpu_context(policy), state, 0, allocation) == want


def test_gpu_topology_tables_choose_the_node() -> None:
    losses = {"a": '{"1":0,"2":500}', "b": '{"1":0,"2":100}'}
    scores = {"a": '{"1":0,"2":300}', "b": '{"1":0,"2":50}'}
    nodes = [gpu_node(n, 4, **{"metax-tech.com/gpu.topology.losses": losses[n],
                               "metax-tech.com/gpu.topology.scores": scores[n]}) for n in ("a", "b")]
    pod = pod_obj("p", ctr(limits={GPU_COUNT: "2"}))
    # binpack: the node losing least topology (2000 - 100 beats 2000 - 500)
    assert place(cluster(VENDORS, *nodes), VENDORS, pod).node == "b"
    # spread takes the lowest total, so the node with the higher topology score (2000 - 300)
    assert place(cluster(VENDORS, *nodes), VENDORS, pod, node_policy=Policy.SPREAD).node == "a"


def test_gpu_decision_and_restart() -> None:
    nodes = [gpu_node("a", 2)]
    state = cluster(VENDORS, *nodes)
    pod = pod_obj("p", ctr(limits={GPU_COUNT: "1"}))
    decision = place(state, VENDORS, pod)
    assert decision_annotations(VENDORS, state, pod, decision) == {
        "hami.io/metax-gpu-devices-to-allocate": "a-metax-1,Metax-GPU,65536,100:;",
        "hami.io/metax-gpu-devices-allocated": "a-metax-1,Metax-GPU,65536,100:;",
    }
    assert usage_of(restarted(VENDORS, nodes, [(pod, decision)])) == usage_of(state)


# ---- Metax-SGPU: registration ---------------------------------------------------------------


def sgpu(uuid: str, index: int = 0, count: int = 100, mem: int = 65536, cores: int = 100, health: bool = True,
         qos: str = "", zone: int = 0, numa: int = 0) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=cores, type="Metax-SGPU", index=index, numa=numa,
                      health=health, vendor="Metax-SGPU", custom={"QosPolicy": qos, "Model": "C500", "LinkZone": zone})


def sgpu_node(name: str, *devices: DeviceInfo) -> dict[str, Any]:
    return node_obj(name, annotations={NODE_DEVICES: encode_sgpu_devices(devices)})


def test_sgpu_registration_round_trip() -> None:
    devices = (sgpu("GPU-1", 0, qos="best-effort", zone=1, numa=1), sgpu("GPU-2", 1, health=False, zone=1))
    [node] = registered(VENDORS, sgpu_node("n", *devices))
    assert node.devices == devices


def test_sgpu_registration_of_metax_json() -> None:
    text = json.dumps([{"uuid": "GPU-a", "bdf": "0000:3b:00.0", "model": "C500", "totalDevCount": 16,
                        "totalCompute": 100, "totalVRam": 65536, "availableDevCount": 16, "availableCompute": 100,
                        "availableVRam": 65536, "numa": 1, "healthy": True, "qosPolicy": "fixed-share",
                        "linkZone": 2},
                       {"uuid": "GPU-b", "totalDevCount": 16, "totalCompute": 100, "totalVRam": 65536}])
    [node] = registered(VENDORS, node_obj("n", annotations={NODE_DEVICES: text}))
    a, b = node.devices
    assert (a.id, a.index, a.count, a.devcore, a.devmem, a.numa, a.health) == ("GPU-a", 0, 16, 100, 65536, 1, True)
    assert a.custom == {"QosPolicy": "fixed-share", "Model": "C500", "LinkZone": 2}
    assert (b.index, b.health, b.custom["LinkZone"]) == (1, False, 0)  # omitted "healthy" is false (omitempty)


@pytest.mark.parametrize(("value", "message"), [
    ("{not json", "invalid JSON"),
    ('{"uuid":"a"}', "not a JSON list"),
    ('[{"uuid":"a","totalVRam":"64G"}]', "'totalVRam' must be a 32-bit integer"),
    ('[{"totalVRam":1}]', "has no 'uuid'"),
])
def test_sgpu_malformed_registration_is_a_warning_not_a_crash(value: str, message: str) -> None:
    devices, warnings = VENDORS.registered_node(node_obj("n", annotations={NODE_DEVICES: value}))
    assert devices is None
    assert len(warnings) == 1 and message in warnings[0] and NODE_DEVICES in warnings[0]


def test_sgpu_empty_list_offers_nothing() -> None:
    assert registered(VENDORS, node_obj("n", annotations={NODE_DEVICES: "[]"})) == []


# ---- Metax-SGPU: webhook (HAMi's TestMutateAdmission) -------------------------------------


@pytest.mark.parametrize(("limits", "annotations", "found", "error", "after"), [
    ({}, {QOS: "best-effort"}, False, "", {QOS: "best-effort"}),
    ({COUNT: "1"}, {QOS: "best-effortx"}, True,
     "metax-tech.com/sgpu-qos-policy must be set one of [best-effort, fixed-share, burst-share]", None),
    ({COUNT: "1"}, {}, True, "", {QOS: "best-effort"}),
    ({COUNT: "1"}, None, True, "", {QOS: "best-effort"}),
    ({COUNT: "1"}, {QOS: "burst-share"}, True, "", {QOS: "burst-share"}),
    ({COUNT: "2"}, {APP: "online"}, True, "app-class pod must request single device", None),
    ({COUNT: "1"}, {APP: "oNLine"}, True, "metax-tech.com/sgpu-app-class must be set one of [online, offline]", None),
    ({COUNT: "1"}, {APP: "offline", QOS: "best-effortx"}, True,
     "metax-tech.com/sgpu-qos-policy must be set one of [best-effort, fixed-share, burst-share]", None),
    ({COUNT: "1"}, {APP: "online", QOS: "best-effortx"}, True, "", {APP: "online", QOS: "best-effortx"}),
    ({COUNT: "1"}, {APP: "offline"}, True, "", {APP: "offline", QOS: "best-effort"}),
    ({COUNT: "0"}, {APP: "online"}, False, "", {APP: "online"}),  # a count of 0 asks for nothing
])
def test_sgpu_webhook_as_hami(limits: dict[str, str], annotations: dict[str, str] | None, found: bool, error: str,
                              after: dict[str, str] | None) -> None:
    pod = pod_obj("p", ctr(limits=limits), annotations=annotations)
    container = pod["spec"]["containers"][0]
    if error:
        with pytest.raises(HamiError) as raised:
            SGPU.admit(container, pod)
        assert str(raised.value) == error
        return
    assert SGPU.admit(container, pod) is found
    assert pod["metadata"]["annotations"] == after


# ---- Metax-SGPU: requests (HAMi's TestGenerateResourceRequests) ---------------------------


@pytest.mark.parametrize(("limits", "want"), [
    ({COUNT: "1"}, (1, 0, 100, 100)),
    ({COUNT: "2"}, (2, 0, 100, 100)),
    ({COUNT: "1", CORES: "30"}, (1, 0, 100, 30)),
    ({COUNT: "1", MEM: "16"}, (1, 16 * 1024, 0, 100)),  # a bare number is GiB
    ({COUNT: "1", CORES: "60", MEM: "16"}, (1, 16 * 1024, 0, 60)),
    ({COUNT: "1", CORES: "60", MEM: "1024Mi"}, (1, 1024, 0, 60)),  # with a unit: bytes
    ({COUNT: "1", CORES: "60", MEM: "16Gi"}, (1, 16 * 1024, 0, 60)),
])
def test_sgpu_request_as_hami(limits: dict[str, str], want: tuple[int, int, int, int]) -> None:
    ask = SGPU.ask(ctr(limits=limits))
    assert ask is not None and (ask.nums, ask.memreq, ask.mem_percentage, ask.coresreq) == want


def test_sgpu_request_reads_limits_only() -> None:
    assert SGPU.ask(ctr(requests={COUNT: "1"})) is None


@pytest.mark.parametrize("limits", [
    {COUNT: "1", MEM: "2100001"},  # GiB over HAMi's 32-bit MiB
    {COUNT: "2200000000"},
    {COUNT: "1", CORES: "2200000000"},
])
def test_sgpu_out_of_range_requests_are_errors(limits: dict[str, str]) -> None:
    with pytest.raises(HamiError):
        SGPU.ask(ctr(limits=limits))


# ---- Metax-SGPU: fit (HAMi's TestMetaxSDevices_Fit) ---------------------------------------


def sask(nums: int = 1, mem: int = 512, pct: int = 0, cores: int = 50) -> ContainerRequest:
    return ContainerRequest(nums=nums, memreq=mem, mem_percentage=pct, coresreq=cores, vendor="Metax-SGPU")


@pytest.mark.parametrize(("devices", "usage", "marks", "request_", "annotations", "want", "reason"), [
    pytest.param([sgpu("dev-0", 0, mem=128), sgpu("dev-1", 1, mem=128)], {}, {}, sask(mem=64), {}, ["dev-1"], "",
                 id="fit success"),
    pytest.param([sgpu("dev-0", 0, mem=128)], {}, {}, sask(), {}, None, "1/1 CardInsufficientMemory",
                 id="memory not enough"),
    pytest.param([sgpu("dev-0", 0, mem=1024)], {"dev-0": (0, 0, 100)}, {}, sask(), {}, None,
                 "1/1 CardInsufficientCore", id="core not enough"),
    pytest.param([sgpu("dev-0", 0, mem=128)], {"dev-0": (1, 64, 10)}, {}, sask(), {APP: "online"}, None,
                 "1/1 CardAppClassMismatch", id="online task, app class unfit"),
    pytest.param([sgpu("dev-0", 0, mem=128)], {"dev-0": (1, 64, 10)}, {"dev-0": {"online": 1}}, sask(), {}, None,
                 "1/1 CardAppClassMismatch", id="normal task, app class unfit"),
    pytest.param([sgpu("dev-0", 0, mem=128, health=False)], {}, {}, sask(), {}, None, "1/1 CardUnhealthy",
                 id="device unhealthy"),
    pytest.param([sgpu("dev-0", 0, mem=1280)], {"dev-0": (100, 0, 0)}, {}, sask(), {}, None,
                 "1/1 CardTimeSlicingExhausted", id="card overused"),
    pytest.param([sgpu("dev-0", 0, mem=1280)], {}, {}, sask(cores=120), {}, None, "1/1 CardInsufficientCore",
                 id="cores over 100 are not clamped for sGPU"),
    pytest.param([sgpu("dev-0", 0, mem=1280)], {"dev-0": (20, 0, 0)}, {}, sask(cores=100), {}, None,
                 "1/1 ExclusiveDeviceAllocateConflict", id="card exclusively"),
    pytest.param([sgpu("dev-1", 0, mem=1280)], {}, {}, sask(), {"metax-tech.com/use-gpuuuid": "dev-0"}, None,
                 "1/1 CardUuidMismatch", id="use uuid mismatch"),
    pytest.param([sgpu("dev-0", 0, mem=1280)], {}, {}, sask(), {"metax-tech.com/nouse-gpuuuid": "dev-0"}, None,
                 "1/1 CardUuidMismatch", id="nouse uuid match"),
    pytest.param([sgpu("dev-0", 0, mem=1280)], {"dev-0": (20, 0, 100)}, {}, sask(cores=0), {}, None,
                 "1/1 CardComputeUnitsExhausted", id="compute units exhausted"),
    pytest.param([sgpu("dev-0", 0, mem=1280), sgpu("dev-1", 1, mem=1280)], {"dev-1": (100, 0, 0)}, {},
                 sask(nums=2, cores=20), {}, None,
                 "1/2 CardTimeSlicingExhausted, 1/2 AllocatedCardsInsufficientRequest", id="insufficient request"),
    pytest.param([sgpu("dev-0", 0, mem=1280)], {"dev-0": (20, 0, 10)}, {}, sask(mem=0, pct=10, cores=20), {},
                 ["dev-0"], "", id="memory percentage"),
    pytest.param([sgpu("dev-0", 0, mem=128)], {"dev-0": (1, 0, 0)}, {}, sask(mem=64),
                 {"hami.io/gpu-scheduler-policy": "mutex"}, None, "1/1 ExclusiveDeviceAllocateConflict",
                 id="mutex policy rejects used device"),
])
def test_sgpu_fit_as_hami(devices: list[DeviceInfo], usage: dict, marks: dict, request_: ContainerRequest,
                          annotations: dict, want: list[str] | None, reason: str) -> None:
    decision = fit(VENDORS, devices, request_, usage, annotations, marks)
    if want is None:
        assert decision.node is None and decision.reasons == {"n": reason}
    else:
        assert uuids(decision) == [want]


@pytest.mark.parametrize(("device_classes", "pod_class", "fits"), [
    ({}, "", True),  # idle device fits anything
    ({"online": 1}, "", False),  # normal task unfit online device
    ({"offline": 1}, "", False),  # normal task unfit offline device
    ({"qos=best-effort": 1}, "", True),  # normal task fit normal device
    ({"qos=best-effort": 1}, "online", False),  # online task unfit normal device
    ({"online": 1, "offline": 1}, "online", True),  # online task fit online/offline device
    ({"offline": 1}, "online", True),
    ({"online": 1}, "offline", False),  # offline task unfit online device
    ({"offline": 1}, "offline", True),
])
def test_sgpu_app_classes_as_hamis_check_app_class(device_classes: dict[str, int], pod_class: str,
                                                   fits: bool) -> None:
    usage = {"dev-0": (1, 0, 10)} if device_classes else {}
    annotations = {APP: pod_class, QOS: "best-effort"} if pod_class else {QOS: "best-effort"}
    decision = fit(VENDORS, [sgpu("dev-0")], sask(mem=64, cores=10), usage, annotations, {"dev-0": device_classes})
    assert (decision.node is not None) is fits
    if not fits:
        assert decision.reasons == {"n": "1/1 CardAppClassMismatch"}


@pytest.mark.parametrize(("used", "marks", "registered_qos", "pod_qos", "cores", "fits"), [
    (0, {}, "fixed-share", "best-effort", 10, True),  # an unused device takes any QoS
    (1, {"qos=best-effort": 1}, "", "fixed-share", 10, False),  # its pods expect best-effort
    (1, {"qos=best-effort": 1}, "fixed-share", "best-effort", 10, True),  # the pods' QoS wins over a stale report
    (1, {}, "fixed-share", "best-effort", 10, False),  # pods that said nothing: the reported QoS
    (1, {}, "fixed-share", "best-effort", 100, False),  # exclusive skips QoS, then meets the pod already there
    (1, {}, "", "best-effort", 10, True),  # no QoS reported: any
    (1, {"qos=": 1}, "fixed-share", "burst-share", 10, True),  # a whole-device pod expects none
    (1, {"qos=best-effort": 1, "qos=fixed-share": 1}, "burst-share", "burst-share", 10, True),  # pods disagree
])
def test_sgpu_qos_comes_from_the_pods_on_the_device(used: int, marks: dict[str, int], registered_qos: str,
                                                    pod_qos: str, cores: int, fits: bool) -> None:
    usage = {"dev-0": (used, 0, 10 * used)}
    decision = fit(VENDORS, [sgpu("dev-0", qos=registered_qos)], sask(mem=64, cores=cores), usage, {QOS: pod_qos},
                   {"dev-0": marks})
    assert (decision.node is not None) is fits
    if not fits:
        reason = "CardInsufficientCore" if cores == 100 else "CardQosPolicyMismatch"
        assert decision.reasons == {"n": f"1/1 {reason}"}


# ---- Metax-SGPU: scenarios through the state --------------------------------------------------


def test_a_device_keeps_one_qos_while_its_pods_run_and_after_a_restart() -> None:
    nodes = [sgpu_node("a", sgpu("GPU-1"))]
    state = cluster(VENDORS, *nodes)
    first = pod_obj("first", ctr(limits={COUNT: "1", CORES: "20", MEM: "8"}))  # the webhook writes best-effort
    decision = place(state, VENDORS, first)
    assert decision.node == "a"
    fixed = pod_obj("fixed", ctr(limits={COUNT: "1", CORES: "20", MEM: "8"}), annotations={QOS: "fixed-share"})
    same = pod_obj("same", ctr(limits={COUNT: "1", CORES: "20", MEM: "8"}), annotations={QOS: "best-effort"})
    after_restart = restarted(VENDORS, nodes, [(first, decision)])
    refused = place(after_restart, VENDORS, fixed)
    assert refused.node is None and refused.reasons == {"a": "1/1 CardQosPolicyMismatch"}
    assert place(after_restart, VENDORS, same).node == "a"
    assert place(state, VENDORS, fixed).node is None
    state.remove_pod("t/first")
    assert place(state, VENDORS, fixed).node == "a"  # the device emptied: any QoS again


def test_online_pods_take_no_cores_and_keep_normal_pods_away() -> None:
    state = cluster(VENDORS, sgpu_node("a", sgpu("GPU-1", 0), sgpu("GPU-2", 1)))
    online = place(state, VENDORS, pod_obj("on", ctr(limits={COUNT: "1", CORES: "50", MEM: "8"}),
                                           annotations={APP: "online"}))
    assert online.allocation[0][0].usedcores == 0
    taken = uuids(online)[0][0]
    normal = place(state, VENDORS, pod_obj("normal", ctr(limits={COUNT: "2", CORES: "10", MEM: "8"})))
    assert normal.node is None and normal.reasons == {"a": "1/2 CardAppClassMismatch, 1/2 "
                                                           "AllocatedCardsInsufficientRequest"}
    offline = place(state, VENDORS, pod_obj("off", ctr(limits={COUNT: "1", CORES: "10", MEM: "8"}),
                                            annotations={APP: "offline"}))
    assert uuids(offline)[0] != [taken]  # an offline pod never joins a device with online pods


def test_online_pod_prefers_devices_with_fewer_online_pods_as_hami() -> None:
    # HAMi's TestPrioritizeOnlineDevices, "prioritize online&offline device"
    classes = {"GPU-1": {"online": 3}, "GPU-2": {"online": 1, "offline": 1}, "GPU-3": {"online": 2, "offline": 1},
               "GPU-4": {"offline": 1}, "GPU-5": {"offline": 2}}
    devices = [sgpu(u, i) for i, u in enumerate(classes)]
    usage = {u: (sum(c.values()), 0, 0) for u, c in classes.items()}
    decision = fit(VENDORS, devices, sask(mem=64, cores=10), usage, {APP: "online"}, classes)
    assert uuids(decision) == [["GPU-2"]]


@pytest.mark.parametrize(("classes", "want"), [
    ({"GPU-1": {}, "GPU-2": {"online": 1}, "GPU-6": {"offline": 1}}, "GPU-1"),  # idle first
    ({"GPU-1": {"online": 1}, "GPU-2": {"online": 2}, "GPU-4": {"offline": 2}}, "GPU-1"),
    ({"GPU-1": {"offline": 1}, "GPU-2": {"offline": 2}}, "GPU-1"),  # only offline: fewest first
])
def test_online_preference_cases(classes: dict[str, dict[str, int]], want: str) -> None:
    devices = [sgpu(u, 9 - i) for i, u in enumerate(classes)]  # higher index first: the walk's own order
    usage = {u: (sum(c.values()), 0, 0) for u, c in classes.items() if c}
    decision = fit(VENDORS, devices, sask(mem=64, cores=10), usage, {APP: "online"}, classes)
    assert uuids(decision) == [[want]]


@pytest.mark.parametrize(("zones", "wanted", "want"), [
    ([1, 1, 2], 1, [2]),  # require one: the smallest zone that holds it
    ([1, 1, 2, 2, 2], 2, [0, 1]),
    ([1, 1, 2, 2, 2, 2], 4, [2, 3, 4, 5]),  # best: within one MetaLink
    ([1, 1, 2, 2, 2], 4, [0, 1, 2, 3]),  # general: across zones, smallest first
    ([0, 0, 0], 2, [0, 1]),  # no MetaLink
    ([0, 0, 1, 1], 2, [2, 3]),
    ([0, 0, 1, 1, 1], 4, [2, 3, 4, 0]),  # bad: linked devices first, then the others
])
def test_prefer_metalink_as_hamis_prioritize_exclusive_devices(zones: list[int], wanted: int,
                                                               want: list[int]) -> None:
    assert prefer_metalink(zones, wanted) == want


def test_whole_sgpus_come_from_one_metalink_zone() -> None:
    devices = [sgpu(f"GPU-{i}", i, zone=1 if i < 2 else 2) for i in range(5)]
    state = cluster(VENDORS, sgpu_node("a", *devices))
    decision = place(state, VENDORS, pod_obj("p", ctr(limits={COUNT: "2"})))
    assert sorted(uuids(decision)[0]) == ["GPU-0", "GPU-1"]  # zone 1 holds exactly two


def sgpu_context(annotations: dict[str, str]) -> PodContext:
    return PodContext.of(PodRequest(key="t/p", containers=(), annotations=annotations), PolicyDefaults())


def exclusive_state(previous: dict[str, tuple[int, int]]) -> ClusterState:
    """A node of sGPUs with (zone, used) each, as HAMi's TestScoreExclusiveDevices `previous`."""
    devices = tuple(sgpu(uuid, i, zone=zone) for i, (uuid, (zone, _)) in enumerate(previous.items()))
    state = ClusterState([NodeDevices("n", devices)], VENDORS)
    return with_usage(state, {u: (used, 0, 0) for u, (_, used) in previous.items() if used})


@pytest.mark.parametrize(("allocated", "previous", "want"), [
    (["GPU-4"], {"GPU-1": (1, 1), "GPU-2": (1, 1), "GPU-3": (1, 1), "GPU-4": (1, 0)}, 0),
    (["GPU-4"], {"GPU-1": (1, 0), "GPU-2": (1, 0), "GPU-3": (1, 0), "GPU-4": (1, 0)}, -30),
    (["GPU-3", "GPU-4"], {"GPU-1": (1, 0), "GPU-2": (1, 0), "GPU-3": (1, 0), "GPU-4": (1, 0)}, 60),
    (["GPU-4", "GPU-5"], {"GPU-1": (1, 1), "GPU-2": (1, 1), "GPU-3": (1, 1), "GPU-4": (1, 0), "GPU-5": (2, 0),
                          "GPU-6": (2, 1), "GPU-7": (2, 1), "GPU-8": (2, 1)}, 0),
    (["GPU-1", "GPU-2", "GPU-3", "GPU-4"], {"GPU-1": (1, 0), "GPU-2": (1, 0), "GPU-3": (1, 0), "GPU-4": (1, 0),
                                            "GPU-5": (2, 0)}, 600),
    (["GPU-3", "GPU-4", "GPU-5", "GPU-6"], {"GPU-2": (1, 0), "GPU-3": (1, 0), "GPU-4": (1, 0), "GPU-5": (2, 0),
                                            "GPU-6": (2, 0)}, 180),
    ([f"GPU-{i}" for i in range(1, 9)], {f"GPU-{i}": (1 if i < 5 else 2, 0) for i in range(1, 9)}, 1200),
])
def test_sgpu_exclusive_score_as_hamis_score_exclusive_devices(allocated: list[str], previous: dict,
                                                               want: int) -> None:
    state = exclusive_state(previous)
    allocation = [[ContainerDevice(u, "Metax-SGPU", 65536, 100) for u in allocated]]
    assert SGPU.score_node(sgpu_context({TOPO: "true"}), state, 0, allocation) == want
    assert SGPU.score_node(sgpu_context({TOPO: "false"}), state, 0, allocation) == 0  # the pod turned it off
    # off by default (the chart's sgpuTopologyAware: false); the config turns it on for every pod
    assert SGPU.score_node(sgpu_context({}), state, 0, allocation) == 0
    configured = vendor_set(metax={"sgpuTopologyAware": "true"})["Metax-SGPU"]
    assert configured.score_node(sgpu_context({}), state, 0, allocation) == want


def test_sgpu_exclusive_score_needs_a_whole_device() -> None:
    state = exclusive_state({"GPU-1": (1, 0), "GPU-2": (1, 0)})
    shared = [[ContainerDevice("GPU-1", "Metax-SGPU", 1024, 99)], [ContainerDevice("GPU-2", "Metax-SGPU", 1024, 100)]]
    assert SGPU.score_node(sgpu_context({TOPO: "true"}), state, 0, shared[:1]) == 0
    assert SGPU.score_node(sgpu_context({TOPO: "true"}), state, 0, shared) == 10 * 0 - (10 - 0 - 0)


@pytest.mark.parametrize(("classes", "want"), [
    ({}, 0), ({"online": 2}, -40), ({"offline": 2}, -200), ({"offline": 2, "online": 2}, -44),
])
def test_sgpu_online_score_as_hamis_score_online_devices(classes: dict[str, int], want: int) -> None:
    state = ClusterState([NodeDevices("n", (sgpu("GPU-123"),))], VENDORS)
    set_marks(state, "GPU-123", classes)
    allocation = [[ContainerDevice("GPU-123", "Metax-SGPU", 1024, 0)]]
    assert SGPU.score_node(sgpu_context({APP: "online"}), state, 0, allocation) == want


def test_sgpu_node_score_is_policy_neutral_times_ten_thousand() -> None:
    devices = [sgpu(f"GPU-{i}", i, zone=1) for i in range(4)]
    state = cluster(VENDORS, sgpu_node("a", *devices))
    pod = pod_obj("p", ctr(limits={COUNT: "2"}), annotations={TOPO: "true"})
    binpack = place(state, VENDORS, pod)
    state = cluster(VENDORS, sgpu_node("a", *devices))
    spread = place(state, VENDORS, pod, node_policy=Policy.SPREAD)
    # 10 × 10 (the pair) - (60 - 10 - 10) = 60 (HAMi's scoreExclusiveDevices: four idle devices in
    # one zone, two taken), weighted +10000 under binpack and -10000 under spread
    assert binpack.score == 60 * 10000 and spread.score == -60 * 10000


def test_online_pod_node_choice_follows_the_online_score() -> None:
    busy = sgpu_node("busy", sgpu("GPU-b"))
    calm = sgpu_node("calm", sgpu("GPU-c"))
    state = cluster(VENDORS, busy, calm)
    for name in ("o1", "o2"):  # two online pods already run on the busy node's device
        pod = pod_obj(name, ctr(limits={COUNT: "1", CORES: "10", MEM: "1"}), annotations={APP: "online"})
        req = VENDORS.pod_request(admitted(VENDORS, pod))
        commit(state, req, Decision(pod=req.key, node="busy",
                                    allocation=((ContainerDevice("GPU-b", "Metax-SGPU", 1024, 0),),)))
    pod = pod_obj("new", ctr(limits={COUNT: "1", CORES: "10", MEM: "1"}), annotations={APP: "online"})
    # binpack alone would pick the busier node; the online score (-40 × 10000 there) sends it to calm
    assert place(state, VENDORS, pod).node == "calm"


# ---- Metax-SGPU: annotations and hami schedule ------------------------------------------------


def test_sgpu_decision_annotations_as_hami() -> None:
    devices = {"GPU-1": sgpu("GPU-1"), "GPU-2": sgpu("GPU-2", 1)}
    allocation = ((ContainerDevice("GPU-1", "Metax-SGPU", 1024, 30),), (),
                  (ContainerDevice("GPU-2", "Metax-SGPU", 2048, 0),))
    written = SGPU.decision_annotations(PodDecisionInput(node="n", allocation=allocation, devices=devices,
                                                         annotations={}, container_names=("a", "b", "c"), now_ns=7))
    encoded = "GPU-1,Metax-SGPU,1024,30:;;GPU-2,Metax-SGPU,2048,0:;"
    assert written == {
        "hami.io/metax-sgpu-devices-to-allocate": encoded,
        "hami.io/metax-sgpu-devices-allocated": encoded,
        "metax-tech.com/gpu-devices-allocated":
            '[[{"uuid":"GPU-1","compute":30,"vRam":1024}],[],[{"uuid":"GPU-2","vRam":2048}]]',
        "metax-tech.com/predicate-time": "7",
    }
    assert set(written) <= set(VENDORS.decision_keys())


def test_hami_schedule_snapshot_with_both_metax_vendors(tmp_path: object) -> None:
    running = pod_obj("running", ctr(limits={COUNT: "1", CORES: "20", MEM: "8"}), annotations={QOS: "fixed-share"})
    running["metadata"]["annotations"].update({
        "hami.io/vgpu-node": "s", "hami.io/metax-sgpu-devices-allocated": "GPU-1,Metax-SGPU,8192,20:;"})
    objects = [
        gpu_node("g", 2), sgpu_node("s", sgpu("GPU-1", 0), sgpu("GPU-2", 1, health=False)), running,
        pod_obj("whole", ctr(limits={GPU_COUNT: "2"})),
        pod_obj("share", ctr(limits={COUNT: "1", CORES: "20", MEM: "8"})),  # best-effort by the webhook
    ]
    decisions = hami_schedule(tmp_path, objects)
    assert decisions["t/whole"]["node"] == "g"
    assert [d["type"] for d in decisions["t/whole"]["containers"][0]] == ["Metax-GPU", "Metax-GPU"]
    share = decisions["t/share"]
    assert share["node"] is None
    assert share["reasons"] == {"g": "0/0 NodeInsufficientDevice", "s": "1/2 CardUnhealthy, 1/2 "
                                                                         "CardQosPolicyMismatch"}


def test_marks_are_counted_per_device_and_freed_with_the_pod() -> None:
    state = cluster(VENDORS, sgpu_node("a", sgpu("GPU-1")))
    place(state, VENDORS, pod_obj("x", ctr(limits={COUNT: "1", CORES: "10", MEM: "1"}), annotations={APP: "offline"}))
    place(state, VENDORS, pod_obj("y", ctr(limits={COUNT: "1", CORES: "10", MEM: "1"}), annotations={APP: "offline"}))
    assert marks_of(state, "GPU-1") == {"offline": 2, "qos=best-effort": 2}
    state.remove_pod("t/x")
    state.remove_pod("t/y")
    assert marks_of(state, "GPU-1") == {} and int(np.sum(state.used)) == 0


def test_the_extenders_cache_keeps_pods_marks_from_the_watch_and_its_own_decisions() -> None:
    cache = ClusterCache(HamiConfig())
    cache.upsert_node(sgpu_node("a", sgpu("GPU-1"), sgpu("GPU-2", 1)))
    watched = pod_obj("watched", ctr(limits={COUNT: "1", CORES: "10", MEM: "1"}), annotations={APP: "offline"})
    watched["metadata"]["annotations"].update({
        "hami.io/vgpu-node": "a", "hami.io/metax-sgpu-devices-allocated": "GPU-1,Metax-SGPU,1024,10:;"})
    watched["spec"]["nodeName"] = "a"
    cache.upsert_pod(watched)
    assert marks_of(cache.state(), "GPU-1") == {"offline": 1, "qos=": 1}  # it named no QoS: it expects none
    mine = pod_obj("mine", ctr(limits={COUNT: "1", CORES: "10", MEM: "1"}), annotations={QOS: "fixed-share"})
    decision = cache.decide(mine, ["a"], PolicyDefaults())
    assert uuids(decision) == [["GPU-2"]]  # a normal pod never joins the offline pod's device
    cache.assume("t/mine", decision, 0, annotations=mine["metadata"]["annotations"])
    assert marks_of(cache.state(), "GPU-2") == {"qos=fixed-share": 1}
    cache.delete_pod(watched)
    assert marks_of(cache.state(), "GPU-1") == {}


def test_admission_review_patch_writes_the_default_qos() -> None:
    verdict = mutate(pod_obj("p", ctr(limits={COUNT: "1"})), VENDORS)
    ops = {op["path"]: op for op in verdict.patch}
    assert verdict.allowed and ops["/metadata/annotations"]["value"] == {QOS: "best-effort"}
    assert "/spec/containers" not in ops  # sGPU's webhook changes no container
    denied = mutate(pod_obj("p", ctr(limits={COUNT: "2"}), annotations={APP: "online"}), VENDORS)
    assert not denied.allowed and denied.message == "app-class pod must request single device"


def test_online_node_scores_at_once_equal_the_placed_scores() -> None:
    # Each node's devices carry other pods' classes; the online pod's score on a node is the one
    # of the device it would get there, computed for all nodes at once.
    classes = {
        "a": [{"online": 2}, {"online": 1, "offline": 3}],
        "b": [{"offline": 2}, {"offline": 1}],  # only offline pods: the one with fewer
        "c": [{}, {"online": 1}],  # an idle device
        "d": [{"online": 1, "offline": 1}],
    }
    nodes = [sgpu_node(n, *(sgpu(f"{n}-{i}", i) for i in range(len(c)))) for n, c in classes.items()]
    state = cluster(VENDORS, *nodes)
    for name, tallies in classes.items():
        for i, tally in enumerate(tallies):
            set_marks(state, f"{name}-{i}", tally)
            with_usage(state, {f"{name}-{i}": (sum(tally.values()), 0, 0)})
    pod = PodRequest(key="t/p", containers=(sask(mem=1024, cores=10),), names=("c",), annotations={APP: "online"})
    ctx = PodContext.of(pod, PolicyDefaults())
    everyone = np.arange(len(state.nodes), dtype=np.int64)
    at_once = SGPU.node_scores(ctx, state, everyone)
    assert at_once is not None
    static = ctx.static_codes(state)
    placed = [SGPU.score_node(ctx, state, n, fit_pod_on_node(state, n, ctx, static)[0] or ()) for n in everyone]
    assert at_once.tolist() == placed == [-20 - 2 * 3, -100, 0, -22]
