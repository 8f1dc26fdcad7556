"""AMD: HAMi's pkg/device/amd rules, with the cases of its device_test.go."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.annotations.node_register import encode_node_devices
from hami.errors import HamiError
from hami.model import ContainerRequest, DeviceInfo
from hami.vendors.base import LockKind

from .vendor_scenarios import (
    VENDORS,
    cluster,
    ctr,
    decision_annotations,
    fit,
    hami_schedule,
    node_obj,
    place,
    pod_obj,
    registered,
    restarted,
    run_hami_schedule,
    usage_of,
    uuids,
    vendor_set,
)

AMD = VENDORS["AMD"]
COUNT, MEM, CORES = "amd.com/gpu", "amd.com/gpumem", "amd.com/gpucores"
REGISTER = "hami.io/node-amd-register"
# HAMi's tests configure other names; the chart's are above.
TEST_VENDORS = vendor_set(amd={"resourceCountName": "amd.com/gpu", "resourceMemoryName": "amd.com/gpu-mem",
                               "resourceCoreName": "amd.com/gpu-core-pct"})
TEST_AMD = TEST_VENDORS["AMD"]


def mi300(uuid: str, index: int, mem: int = 196608, cus: int = 304, count: int = 4,
          dtype: str = "AMD_Instinct_MI300X", health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=cus, type=dtype, index=index, health=health,
                      vendor="AMD", custom={"pciBDF": f"0000:{index:02x}:00.0"})


def amd_node(name: str, *devices: DeviceInfo, gpus: int | None = None) -> dict[str, Any]:
    capacity = {COUNT: str(len(devices) * 4 if gpus is None else gpus)}
    return node_obj(name, annotations={REGISTER: encode_node_devices(devices)}, capacity=capacity)


# ---- registration ---------------------------------------------------------------------------------


def test_registration_as_hami_test() -> None:
    text = '[{"id":"GPU-0","index":0,"count":1,"devmem":8192,"devcore":100,"type":"amd","numa":0,"health":true}]'
    [node] = registered(VENDORS, node_obj("node-1", annotations={REGISTER: text}, capacity={COUNT: "1"}))
    [device] = node.devices
    assert (device.id, device.type, device.vendor, device.devcore) == ("GPU-0", "amd", "AMD", 100)


def test_registration_round_trip_keeps_cu_counts_and_custominfo() -> None:
    devices = (mi300("uuid-a", 0), mi300("uuid-b", 1, cus=110, dtype="amd-gpu"))
    [node] = registered(VENDORS, amd_node("n", *devices))
    assert node.devices == devices


def test_plugins_own_json_with_devicevendor() -> None:
    text = json.dumps([{"id": "uuid-a", "index": 2, "count": 4, "devmem": 65536, "devcore": 104,
                        "type": "AMD_Instinct_MI210", "numa": 1, "health": True, "devicevendor": "amd",
                        "custominfo": {"pciBDF": "0000:c1:00.0"}}])
    [node] = registered(VENDORS, node_obj("n", annotations={REGISTER: text}, capacity={COUNT: "4"}))
    assert node.devices[0] == DeviceInfo(id="uuid-a", count=4, devmem=65536, devcore=104, type="AMD_Instinct_MI210",
                                         numa=1, index=2, vendor="AMD", custom={"pciBDF": "0000:c1:00.0"})


@pytest.mark.parametrize("capacity", [{}, {COUNT: "0"}, {COUNT: "x"}])
def test_no_gpus_while_the_node_advertises_none(capacity: dict[str, str]) -> None:
    # HAMi's CheckHealth: unhealthy without amd.com/gpu capacity, and it drops the node's AMD devices.
    text = encode_node_devices([mi300("uuid-a", 0)])
    assert registered(VENDORS, node_obj("n", annotations={REGISTER: text}, capacity=capacity)) == []


def test_capacity_changes_are_node_inputs() -> None:
    text = encode_node_devices([mi300("uuid-a", 0)])
    up = node_obj("n", annotations={REGISTER: text}, capacity={COUNT: "4"})
    down = node_obj("n", annotations={REGISTER: text}, capacity={COUNT: "0"})
    assert VENDORS.node_inputs(up) != VENDORS.node_inputs(down)


def test_shared_lock_and_chart_resources() -> None:
    assert AMD.lock is LockKind.SHARED
    assert AMD.managed_resources() == (COUNT, MEM, CORES)


# ---- webhook (HAMi's Test_MutateAdmission) -------------------------------------------------------


@pytest.mark.parametrize(("limits", "requests", "found"), [
    ({"amd.com/gpu": 2}, None, True),
    ({"amd.com/gpu-mem": 1024}, None, True),
    ({"amd.com/gpu-core-pct": 50}, None, True),
    ({}, {"amd.com/gpu": 1}, False),  # requests only
    ({"amd.com/gpu": 1, "amd.com/gpu-mem": 1024}, None, True),
    ({}, None, False),
    ({"amd.com/gpu": 0, "amd.com/gpu-mem": 1024}, None, False),  # a count of 0 asks for nothing
])
def test_webhook_as_hami(limits: dict[str, Any], requests: dict[str, Any] | None, found: bool) -> None:
    assert TEST_AMD.admit(ctr(limits=limits, requests=requests), {}) is found


@pytest.mark.parametrize("percent", ["0", "101", "50.5"])
def test_webhook_rejects_core_percentages_outside_1_to_100(percent: str) -> None:
    with pytest.raises(HamiError, match="must be an integer percentage between 1 and 100"):
        TEST_AMD.admit(ctr(limits={"amd.com/gpu": "1", "amd.com/gpu-core-pct": percent}), {})


# ---- requests (HAMi's Test_GenerateResourceRequests) ----------------------------------------------


def test_request_reads_limits_only() -> None:
    container = ctr(limits={"amd.com/gpu": 2, "amd.com/gpu-mem": 4096, "amd.com/gpu-core-pct": 33},
                    requests={"amd.com/gpu": 99, "amd.com/gpu-mem": 99, "amd.com/gpu-core-pct": 99})
    assert TEST_AMD.ask(container) == ContainerRequest(nums=2, memreq=4096, mem_percentage=0, coresreq=33,
                                                       vendor="AMD")
    assert TEST_AMD.ask(ctr(limits={"amd.com/gpu-mem": 4096, "amd.com/gpu-core-pct": 33})) is None
    assert TEST_AMD.ask(ctr(requests={"amd.com/gpu": 1})) is None


def test_request_defaults_an_omitted_core_limit_to_100_percent() -> None:
    ask = TEST_AMD.ask(ctr(limits={"amd.com/gpu": 1, "amd.com/gpu-mem": 4096}))
    assert ask is not None and ask.coresreq == 100


@pytest.mark.parametrize(("name", "value"), [
    ("amd.com/gpu", 2**31), ("amd.com/gpu-mem", -1), ("amd.com/gpu-mem", 2**31),
    ("amd.com/gpu-core-pct", 0), ("amd.com/gpu-core-pct", 101),
])
def test_out_of_range_requests_are_errors(name: str, value: int) -> None:
    # HAMi drops these requests (the container then asks for nothing); the webhook or we refuse them.
    limits: dict[str, Any] = {"amd.com/gpu": 1, name: value}
    with pytest.raises(HamiError):
        TEST_AMD.ask(ctr(limits=limits))


def test_zero_count_asks_nothing() -> None:
    assert TEST_AMD.ask(ctr(limits={"amd.com/gpu": 0})) is None


# ---- fit (HAMi's TestDevices_Fit) ---------------------------------------------------------------


def dev(uuid: str, index: int, count: int = 2, mem: int = 1000, cus: int = 100, dtype: str = "AMD",
        health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=cus, type=dtype, index=index, health=health,
                      vendor="AMD")


def ask(nums: int = 1, mem: int = 0, cores: int = 0) -> ContainerRequest:
    return ContainerRequest(nums=nums, memreq=mem, mem_percentage=0, coresreq=cores, vendor="AMD")


def test_two_whole_cards_take_all_memory_and_cus() -> None:
    decision = fit(VENDORS, [dev("dev-0", 0, count=2), dev("dev-1", 1, count=12)], ask(nums=2))
    assert uuids(decision) == [["dev-1", "dev-0"]]
    assert [(d.usedmem, d.usedcores) for d in decision.allocation[0]] == [(1000, 100), (1000, 100)]


@pytest.mark.parametrize(("devices", "request_", "want"), [
    ([dev("dev-0", 0, cus=10), dev("dev-1", 1, count=12)], ask(mem=500, cores=50), ("dev-1", 500, 50)),
    ([dev("dev-0", 0, cus=64)], ask(mem=100, cores=1), ("dev-0", 100, 1)),  # at least one CU
    ([dev("dev-0", 0, cus=64)], ask(mem=100, cores=101), ("dev-0", 100, 64)),  # at most all of them
    ([dev("dev-0", 0, cus=64)], ask(mem=100, cores=50), ("dev-0", 100, 32)),
])
def test_core_percentage_becomes_cus_of_the_chosen_gpu(devices: list[DeviceInfo], request_: ContainerRequest,
                                                       want: tuple[str, int, int]) -> None:
    [[placed]] = fit(VENDORS, devices, request_).allocation
    assert (placed.uuid, placed.usedmem, placed.usedcores) == want


def test_allocation_carries_the_product_type() -> None:
    decision = fit(VENDORS, [dev("dev-0", 0, dtype="AMD_Instinct_MI300X_VF")], ask(mem=100, cores=10))
    assert decision.allocation[0][0].vendor == "AMD_Instinct_MI300X_VF"


@pytest.mark.parametrize(("devices", "usage", "request_", "annotations", "reason"), [
    ([dev("dev-0", 0)], {"dev-0": (0, 900, 0)}, ask(mem=500, cores=10), {}, "1/1 CardInsufficientMemory"),
    ([dev("dev-0", 0, cus=10)], {"dev-0": (0, 0, 9)}, ask(mem=100, cores=100), {}, "1/1 CardInsufficientCore"),
    ([dev("dev-0", 0, cus=0)], {}, ask(mem=100, cores=10), {}, "1/1 CardInsufficientCore"),
    ([dev("dev-1", 0)], {}, ask(mem=100, cores=10), {"amd.com/use-gpu-uuid": "dev-0"}, "1/1 CardUuidMismatch"),
    ([dev("dev-0", 0)], {}, ask(mem=100, cores=10), {"amd.com/nouse-gpu-uuid": "dev-0"}, "1/1 CardUuidMismatch"),
    ([dev("dev-0", 0)], {"dev-0": (2, 0, 0)}, ask(mem=100, cores=10), {}, "1/1 CardTimeSlicingExhausted"),
    ([dev("dev-0", 0, health=False)], {}, ask(mem=100, cores=10), {}, "1/1 CardNotHealth"),
    ([dev("dev-0", 0)], {"dev-0": (1, 100, 10)}, ask(mem=100, cores=10), {"hami.io/gpu-scheduler-policy": "mutex"},
     "1/1 ExclusiveDeviceAllocateConflict"),
])
def test_fit_failures_as_hami(devices: list[DeviceInfo], usage: dict, request_: ContainerRequest,
                              annotations: dict[str, str], reason: str) -> None:
    decision = fit(VENDORS, devices, request_, usage, annotations)
    assert decision.node is None and decision.reasons == {"n": reason}


def test_no_exclusive_rule_a_whole_gpu_shares_its_slots_while_cus_remain() -> None:
    # AMD's loop has no "100 cores means exclusive" check: only CUs and memory limit sharing.
    decision = fit(VENDORS, [dev("dev-0", 0)], ask(mem=100, cores=100), {"dev-0": (1, 100, 0)})
    assert decision.node == "n"


# ---- type filter (HAMi's TestCheckAMDType) ----------------------------------------------------


@pytest.mark.parametrize(("annotations", "card", "allowed"), [
    ({}, "MI300X", True),
    ({"amd.com/use-gputype": "MI300"}, "MI300X", True),
    ({"amd.com/use-gputype": "MI250"}, "MI300X", False),
    ({"amd.com/nouse-gputype": "MI300"}, "MI300X", False),
    ({"amd.com/nouse-gputype": "MI250"}, "MI300X", True),
    ({"amd.com/nouse-gputype": ""}, "MI300X", True),
    ({"amd.com/use-gputype": ""}, "MI300X", True),
    ({"amd.com/nouse-gputype": "   "}, "MI300X", True),
    ({"amd.com/use-gputype": "   "}, "MI300X", True),
    ({"amd.com/nouse-gputype": "MI250,"}, "MI300X", True),
    ({"amd.com/nouse-gputype": ",MI250"}, "MI300X", True),
    ({"amd.com/nouse-gputype": " MI250 , "}, "MI250X", False),
    ({"amd.com/nouse-gputype": ", "}, "MI300X", True),
    ({"amd.com/use-gputype": "MI300,"}, "MI250X", False),
    ({"amd.com/use-gputype": "mi300"}, "AMD-MI300X", True),  # case-insensitive
    # HAMi rejects every card for a list of only commas; an empty list asks for nothing here.
    ({"amd.com/use-gputype": ", "}, "MI300X", True),
])
def test_type_filter_as_hami(annotations: dict[str, str], card: str, allowed: bool) -> None:
    decision = fit(VENDORS, [dev("dev-0", 0, dtype=card)], ask(mem=100, cores=10), annotations=annotations)
    assert (decision.node is not None) is allowed
    if not allowed:
        assert decision.reasons == {"n": "1/1 CardTypeMismatch"}


# ---- scenarios, annotations, restart, hami schedule -----------------------------------------------


def test_decision_annotations_name_the_product_type() -> None:
    nodes = [amd_node("a", mi300("uuid-a", 0), mi300("uuid-b", 1))]
    state = cluster(VENDORS, *nodes)
    pod = pod_obj("p", ctr(limits={COUNT: "1", MEM: "65536", CORES: "25"}))
    decision = place(state, VENDORS, pod)
    [[placed]] = decision.allocation
    encoded = f"{placed.uuid},AMD_Instinct_MI300X,65536,76:;"  # 25 % of 304 CUs
    assert decision_annotations(VENDORS, state, pod, decision) == {
        "hami.io/amd-devices-to-allocate": encoded, "hami.io/amd-devices-allocated": encoded}


def test_restart_rebuilds_cu_usage() -> None:
    nodes = [amd_node("a", mi300("uuid-a", 0), mi300("uuid-b", 1)), amd_node("b", mi300("uuid-c", 0, cus=110))]
    state = cluster(VENDORS, *nodes)
    pods = [pod_obj(f"p{i}", ctr(limits={COUNT: "1", MEM: "16384", CORES: str(20 + 10 * i)})) for i in range(5)]
    placed = [(p, place(state, VENDORS, p)) for p in pods]
    assert all(d.node for _, d in placed)
    assert usage_of(restarted(VENDORS, nodes, placed)) == usage_of(state)


def test_hami_schedule_snapshot(tmp_path: object) -> None:
    objects = [amd_node("a", mi300("uuid-a", 0), mi300("uuid-b", 1, dtype="AMD_Instinct_MI250X", cus=110)),
               pod_obj("mi250", ctr(limits={COUNT: "1", MEM: "1024", CORES: "50"}),
                       annotations={"amd.com/use-gputype": "MI250"}),
               pod_obj("any", ctr(limits={COUNT: "2"}))]
    decisions = hami_schedule(tmp_path, objects)
    assert decisions["t/mi250"]["containers"] == [
        [{"uuid": "uuid-b", "type": "AMD_Instinct_MI250X", "memory": 1024, "cores": 55}]]
    assert decisions["t/any"]["node"] is None
    assert decisions["t/any"]["reasons"] == {"a": "1/2 CardInsufficientMemory, 1/2 AllocatedCardsInsufficientRequest"}


def test_hami_schedule_refuses_a_bad_core_percentage_in_one_line(tmp_path: object) -> None:
    objects = [amd_node("a", mi300("uuid-a", 0)), pod_obj("bad", ctr(limits={COUNT: "1", CORES: "0"}))]
    result = run_hami_schedule(tmp_path, objects)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("hami schedule: error: pod t/bad: amd.com/gpucores must be an integer "
                                     "percentage between 1 and 100")
