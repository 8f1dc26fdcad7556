"""Cambricon MLU: HAMi's pkg/device/cambricon rules, with the cases of its device_test.go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hami.errors import HamiError
from hami.model import ContainerDevice, ContainerRequest, DeviceInfo
from hami.vendors.base import LockKind, PodDecisionInput
from hami.vendors.cambricon import LOCK_KEY
from hami.vendors.ownlock import decode_lock, encode_lock, lock_error, lock_is_free

from .vendor_scenarios import (
    VENDORS,
    admitted,
    cluster,
    ctr,
    decision_annotations,
    fit,
    hami_schedule,
    node_obj,
    place,
    pod_obj,
    registered,
    request,
    restarted,
    usage_of,
    uuids,
)

MLU = VENDORS["MLU"]
COUNT, MEM, CORES = "cambricon.com/vmlu", "cambricon.com/mlu.smlu.vmemory", "cambricon.com/mlu.smlu.vcore"


def mlu_node(name: str, cores: int, memory: int) -> dict:
    return node_obj(name, capacity={CORES: str(cores), MEM: str(memory), COUNT: str(cores)})


# ---- registration from capacity ----------------------------------------------------------------


def test_one_card_from_capacity_as_hami_test() -> None:
    [node] = registered(VENDORS, node_obj("test", capacity={CORES: "1", MEM: "1"}))
    assert node.devices == (DeviceInfo(id="test-cambricon-mlu-0", count=100, devmem=25600, devcore=100, type="MLU",
                                       index=0, vendor="MLU"),)


def test_cards_are_vcore_over_100_rounded_up_and_share_the_memory() -> None:
    [node] = registered(VENDORS, mlu_node("n", cores=250, memory=60))
    assert [d.id for d in node.devices] == ["n-cambricon-mlu-0", "n-cambricon-mlu-1", "n-cambricon-mlu-2"]
    # 60 units × 256 MiB × 100 / 250 vcore: each card's part of the node's memory
    assert {d.devmem for d in node.devices} == {60 * 256 * 100 // 250}
    assert [d.index for d in node.devices] == [0, 1, 2]


@pytest.mark.parametrize("capacity", [{}, {CORES: "0", MEM: "8"}, {CORES: "1.5", MEM: "8"}])
def test_no_cards_without_whole_vcore_capacity(capacity: dict) -> None:
    assert registered(VENDORS, node_obj("n", capacity=capacity)) == []


# ---- webhook and requests ------------------------------------------------------------------


def test_webhook_routes_on_the_count_in_limits_only() -> None:
    assert MLU.admit(ctr(limits={COUNT: "1"}), {}) is True
    assert MLU.admit(ctr(limits={COUNT: "0"}), {}) is False  # a count of 0 asks for nothing
    assert MLU.admit(ctr(requests={COUNT: "1"}), {}) is False
    assert MLU.admit(ctr(limits={MEM: "4"}), {}) is False


def test_request_in_256_mib_units_with_cores() -> None:
    ask = MLU.ask(ctr(limits={COUNT: "1", MEM: "4", CORES: "30"}))
    assert ask == ContainerRequest(nums=1, memreq=1024, mem_percentage=101, coresreq=30, vendor="MLU")


def test_request_without_cores_is_a_whole_card_and_without_memory_all_of_it() -> None:
    ask = MLU.ask(ctr(limits={COUNT: "2"}))
    assert ask is not None
    assert (ask.nums, ask.memreq, ask.mem_percentage, ask.coresreq) == (2, 0, 100, 100)


def test_request_read_from_requests_when_limits_lack_it() -> None:
    ask = MLU.ask(ctr(requests={COUNT: "1", MEM: "2", CORES: "10"}))
    assert ask is not None and (ask.memreq, ask.coresreq) == (512, 10)


@pytest.mark.parametrize("memory", ["16Gi", "16.5"])
def test_memory_overflowing_int32_or_not_whole_is_an_error(memory: str) -> None:
    # HAMi drops such a request silently (the pod then asks for nothing); we say why.
    with pytest.raises(HamiError, match=MEM):
        MLU.ask(ctr(limits={COUNT: "1", MEM: memory}))


def test_managed_resources_are_the_count_only_as_hamis_chart() -> None:
    assert MLU.managed_resources() == (COUNT,)


# ---- fit: HAMi's TestDevices_Fit table -------------------------------------------------------


def mlu(uuid: str, index: int, mem: int = 1280, count: int = 100, health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=100, type="MLU", index=index, health=health,
                      vendor="MLU")


def ask(nums: int = 1, mem: int = 512, pct: int = 101, cores: int = 50) -> ContainerRequest:
    return ContainerRequest(nums=nums, memreq=mem, mem_percentage=pct, coresreq=cores, vendor="MLU")


@pytest.mark.parametrize(("devices", "usage", "request_", "annotations", "want", "reason"), [
    pytest.param([mlu("dev-0", 0, 128), mlu("dev-1", 1, 128)], {}, ask(mem=64), {}, ["dev-1"], "",
                 id="fit success: the later of two idle cards"),
    pytest.param([mlu("dev-0", 0, 128)], {}, ask(), {}, None, "1/1 CardInsufficientMemory", id="memory not enough"),
    pytest.param([mlu("dev-0", 0, 1024)], {"dev-0": (0, 0, 100)}, ask(), {}, None, "1/1 CardInsufficientCore",
                 id="core not enough"),
    pytest.param([mlu("dev-1", 0)], {}, ask(nums=2), {"cambricon.com/use-gpuuuid": "dev-0"}, None,
                 "1/1 NodeInsufficientDevice", id="two asked of one card (HAMi checks the count first)"),
    pytest.param([mlu("dev-1", 0)], {}, ask(), {"cambricon.com/use-gpuuuid": "dev-0"}, None, "1/1 CardUuidMismatch",
                 id="use uuid mismatch"),
    pytest.param([mlu("dev-0", 0)], {}, ask(), {"cambricon.com/nouse-gpuuuid": "dev-0"}, None,
                 "1/1 CardUuidMismatch", id="nouse uuid match"),
    pytest.param([mlu("dev-0", 0)], {"dev-0": (100, 0, 0)}, ask(), {}, None, "1/1 CardTimeSlicingExhausted",
                 id="card overused"),
    pytest.param([mlu("dev-0", 0)], {}, ask(cores=120), {}, ["dev-0"], "", id="cores over 100 count as 100"),
    pytest.param([mlu("dev-0", 0)], {"dev-0": (20, 0, 0)}, ask(cores=100), {}, None,
                 "1/1 ExclusiveDeviceAllocateConflict", id="card exclusively"),
    pytest.param([mlu("dev-0", 0)], {"dev-0": (20, 0, 100)}, ask(cores=0), {}, None,
                 "1/1 CardComputeUnitsExhausted", id="compute units exhausted"),
    pytest.param([mlu("dev-0", 0)], {"dev-0": (20, 0, 10)}, ask(mem=0, pct=10, cores=20), {}, ["dev-0"], "",
                 id="memory percentage"),
    pytest.param([mlu("dev-0", 0, 128)], {"dev-0": (1, 0, 0)}, ask(mem=64), {"hami.io/gpu-scheduler-policy": "mutex"},
                 None, "1/1 ExclusiveDeviceAllocateConflict", id="mutex policy rejects used device"),
    pytest.param([mlu("dev-0", 0), mlu("dev-1", 1), mlu("dev-2", 2)], {"dev-2": (100, 0, 0)}, ask(nums=3, cores=20),
                 {}, None, "1/3 CardTimeSlicingExhausted, 2/3 AllocatedCardsInsufficientRequest",
                 id="partial allocation"),
    pytest.param([mlu("dev-0", 0, 128, health=False)], {}, ask(mem=64), {}, None, "1/1 CardNotHealth",
                 id="card not healthy"),
])
def test_fit_as_hami(devices: list[DeviceInfo], usage: dict, request_: ContainerRequest, annotations: dict,
                     want: list[str] | None, reason: str) -> None:
    decision = fit(VENDORS, devices, request_, usage, annotations)
    if want is None:
        assert decision.node is None
        assert decision.reasons == {"n": reason}
    else:
        assert uuids(decision) == [want]
        placed = decision.allocation[0][0]
        assert placed.usedcores == min(request_.coresreq, 100)


def test_memory_percentage_takes_that_share_of_the_card() -> None:
    decision = fit(VENDORS, [mlu("dev-0", 0, 1280)], ask(mem=0, pct=10, cores=20))
    assert decision.allocation[0][0] == ContainerDevice("dev-0", "MLU", 128, 20)


# ---- scenarios on registered nodes -------------------------------------------------------------


def test_binpack_fills_a_card_then_exclusive_pods_need_an_idle_one() -> None:
    nodes = [mlu_node("a", cores=200, memory=128)]  # two cards of 16384 MiB
    state = cluster(VENDORS, *nodes)
    small = pod_obj("small", ctr(limits={COUNT: "1", MEM: "8", CORES: "30"}))
    whole = pod_obj("whole", ctr(limits={COUNT: "1"}))
    again = pod_obj("again", ctr(limits={COUNT: "1"}))
    first = place(state, VENDORS, small)
    assert first.allocation[0][0].usedmem == 2048
    second = place(state, VENDORS, whole)  # cores default to 100: the other, idle card
    assert uuids(second) != uuids(first) and second.allocation[0][0].usedcores == 100
    third = place(state, VENDORS, again)
    assert third.node is None
    # A whole card also asks all its memory, which both cards lack: the memory check comes first.
    assert third.reasons == {"a": "2/2 CardInsufficientMemory"}


def test_decision_annotations_bytes_as_hami() -> None:
    nodes = [mlu_node("a", cores=100, memory=4000)]
    state = cluster(VENDORS, *nodes)
    pod = pod_obj("p", ctr("init-none"), ctr("main", limits={COUNT: "1", MEM: "1000", CORES: "1"}))
    decision = place(state, VENDORS, pod)
    written = decision_annotations(VENDORS, state, pod, decision)
    assert written == {
        "CAMBRICON_DSMLU_ASSIGNED": "false",
        "CAMBRICON_DSMLU_PROFILE": "0_1_1000",
        "hami.io/cambricon-mlu-devices-to-allocate": ";a-cambricon-mlu-0,MLU,256000,1:;",
        "hami.io/cambricon-mlu-devices-allocated": ";a-cambricon-mlu-0,MLU,256000,1:;",
    }
    assert set(written) <= set(VENDORS.decision_keys())


def test_profile_names_the_device_index_of_the_first_container_with_a_device() -> None:
    devices = {"u1": mlu("u1", 1)}
    allocation = ((), (ContainerDevice("u1", "MLU", 512, 25),), (ContainerDevice("u1", "MLU", 256, 10),))
    written = MLU.decision_annotations(PodDecisionInput(node="n", allocation=allocation, devices=devices,
                                                        annotations={}, container_names=("a", "b", "c"), now_ns=0))
    assert written["CAMBRICON_DSMLU_PROFILE"] == "1_25_2"


def test_restart_rebuilds_usage_from_the_allocated_annotation() -> None:
    nodes = [mlu_node("a", cores=200, memory=128), mlu_node("b", cores=100, memory=64)]
    state = cluster(VENDORS, *nodes)
    pods = [pod_obj(f"p{i}", ctr(limits={COUNT: "1", MEM: "4", CORES: "25"})) for i in range(3)]
    placed = [(p, place(state, VENDORS, p)) for p in pods]
    assert usage_of(restarted(VENDORS, nodes, placed)) == usage_of(state)


def test_webhook_leaves_the_pod_as_it_is() -> None:
    pod = pod_obj("p", ctr(limits={COUNT: "1"}))
    assert admitted(VENDORS, pod) == pod
    assert request(VENDORS, pod).vendors == ("MLU",)


# ---- the dsmlu node lock -------------------------------------------------------------------


NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_vendor_takes_its_own_lock() -> None:
    assert (MLU.lock, MLU.lock_key) == (LockKind.OWN, LOCK_KEY) == (LockKind.OWN, "cambricon.com/dsmlu.lock")


def test_lock_value_round_trip_as_go_rfc3339() -> None:
    assert encode_lock(NOW) == "2025-06-01T12:00:00Z"
    assert decode_lock(encode_lock(NOW)) == NOW
    # Go formats time.Now() in the scheduler's zone: an offset, not Z.
    assert decode_lock("2025-06-01T20:00:00+08:00") == NOW
    assert decode_lock("2025-06-01T12:00:00.5Z") == NOW + timedelta(milliseconds=500)


@pytest.mark.parametrize("value", ["", "yesterday", "2025-06-01 12:00:00", "2025-06-01T12:00:00", "1717243200"])
def test_values_that_are_not_rfc3339_times(value: str) -> None:
    assert decode_lock(value) is None


@pytest.mark.parametrize(("value", "free"), [
    (None, True),
    (encode_lock(NOW - timedelta(minutes=1)), False),
    (encode_lock(NOW - timedelta(minutes=2)), False),  # HAMi: expired only when older than 2 minutes
    (encode_lock(NOW - timedelta(minutes=2, seconds=1)), True),
    (encode_lock(NOW + timedelta(minutes=5)), False),  # a clock ahead of ours holds it
    ("not a time", True),  # HAMi would refuse the node forever; we take the lock over
])
def test_lock_expiry(value: str | None, free: bool) -> None:
    assert lock_is_free(value, NOW) is free


def test_lock_error_text_as_hami() -> None:
    assert lock_error("node-1") == "node node-1 has been locked within 2 minutes"


def test_hami_schedule_snapshot(tmp_path: object) -> None:
    running = pod_obj("running", ctr(limits={COUNT: "1", MEM: "4", CORES: "50"}))
    running["metadata"]["annotations"] = {
        "hami.io/vgpu-node": "b",
        "hami.io/cambricon-mlu-devices-allocated": "b-cambricon-mlu-0,MLU,1024,50:;",
    }
    objects = [
        mlu_node("a", cores=200, memory=128), mlu_node("b", cores=100, memory=64), running,
        pod_obj("half", ctr(limits={COUNT: "1", MEM: "8", CORES: "50"})),
        pod_obj("two-whole", ctr(limits={COUNT: "2"})),
    ]
    decisions = hami_schedule(tmp_path, objects)
    # Binpack: b already runs a pod and has room for another half card.
    assert decisions["t/half"]["node"] == "b"
    assert decisions["t/half"]["containers"] == [
        [{"uuid": "b-cambricon-mlu-0", "type": "MLU", "memory": 2048, "cores": 50}]]
    assert decisions["t/two-whole"]["node"] == "a"
    assert [d["memory"] for d in decisions["t/two-whole"]["containers"][0]] == [16384, 16384]
    assert decisions["t/two-whole"]["reasons"] == {"b": "1/1 NodeInsufficientDevice"}
