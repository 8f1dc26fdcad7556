"""Enflame DRS slices: HAMi's pkg/device/enflame/device.go rules, with the cases of its device_test.go."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.errors import HamiError
from hami.model import ContainerDevice, ContainerRequest, DeviceInfo
from hami.vendors.base import LockKind, PodDecisionInput
from hami.vendors.enflame import DIRECT, SPEC, encode_drs_capacity, parse_profile

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
    request,
    restarted,
    usage_of,
    uuids,
)

DRS = VENDORS["Enflame"]
COUNT, MEM, CORE = "enflame.com/drs-gcu", "enflame.com/gcu-memory", "enflame.com/gcu-core"
CAPACITY = "enflame.com/gcu-drs-capacity"
PROFILES = {"1g.6gb": "0", "3g.20gb": "1", "6g.40gb": "2"}


def drs_node(name: str, *capacities: Any, profiles: dict[str, str] | None = None) -> dict[str, Any]:
    spec = {"devices": [{"index": str(i), "minor": str(i), "capacity": c} for i, c in enumerate(capacities)],
            "profiles": PROFILES if profiles is None else profiles}
    return node_obj(name, annotations={CAPACITY: json.dumps(spec)})


# ---- registration ------------------------------------------------------------------------------


def test_registration_as_hami_test() -> None:
    [node] = registered(VENDORS, node_obj("node-a", annotations={
        CAPACITY: '{"devices":[{"index":"0","minor":"0","capacity":6}],'
                  '"profiles":{"1g.6gb":"0","3g.20gb":"1","6g.40gb":"2"}}'}))
    [device] = node.devices
    assert (device.id, device.type, device.devmem, device.count, device.devcore, device.index) == \
        ("node-a-enflame-drs-0", "Enflame", 40960, 6, 100, 0)
    assert device.custom == {"minor": "0", "index": "0", "profiles": PROFILES, "maxSlice": 6}


def test_registration_index_minor_and_capacity_forms() -> None:
    spec = {"devices": [{"index": "3", "capacity": "6"}, {"index": "x", "minor": " 7 ", "capacity": 4.0}],
            "profiles": {"2g.16gb": "5", "bogus": "9"}}
    [node] = registered(VENDORS, node_obj("n", annotations={CAPACITY: json.dumps(spec)}))
    a, b = node.devices
    assert (a.id, a.index, a.custom["minor"], a.count) == ("n-enflame-drs-3", 3, "3", 6)  # no minor: the index
    assert (b.id, b.index, b.custom["minor"], b.count) == ("n-enflame-drs-1", 1, "7", 4)  # bad index: position
    assert a.devmem == 16 * 1024 and a.custom["maxSlice"] == 2


def test_registration_round_trip() -> None:
    [node] = registered(VENDORS, drs_node("n", 6, "4", 2))
    again = node_obj("n", annotations={CAPACITY: encode_drs_capacity(node.devices)})
    assert registered(VENDORS, again)[0].devices == node.devices
    assert [d.count for d in node.devices] == [6, 4, 2]


@pytest.mark.parametrize(("spec", "message"), [
    ({"devices": [{"index": "0", "capacity": 6}], "profiles": {"big": "0"}}, "no valid DRS profile"),
    ({"devices": [{"index": "0", "capacity": 0}], "profiles": PROFILES}, "invalid slice capacity"),
    ({"devices": [{"index": "0", "capacity": True}], "profiles": PROFILES}, "invalid slice capacity"),
    ({"devices": [{"index": 0, "capacity": 6}], "profiles": PROFILES}, "must be strings"),
    ({"devices": [{"index": "0", "capacity": 6}], "profiles": {"1g.6gb": 0}}, "profile IDs must be strings"),
    ([], "not a JSON object"),
])
def test_malformed_capacity_is_a_warning(spec: Any, message: str) -> None:
    devices, warnings = VENDORS.registered_node(node_obj("n", annotations={CAPACITY: json.dumps(spec)}))
    assert devices is None and len(warnings) == 1 and message in warnings[0]


@pytest.mark.parametrize(("name", "want"), [
    ("3g.20gb", (3, 20)), (" 6G.40GB ", (6, 40)), ("1g", (0, 0)), ("xg.6gb", (0, 0)), ("2g.lots", (2, 0)),
])
def test_profile_names(name: str, want: tuple[int, int]) -> None:
    assert parse_profile(name) == want


def test_no_lock_and_the_chart_resources() -> None:
    assert DRS.lock is LockKind.NONE
    assert DRS.managed_resources() == (COUNT, MEM, CORE)


# ---- webhook -------------------------------------------------------------------------------------


def test_webhook_copies_slices_into_limits_and_requests() -> None:
    container = ctr(limits={COUNT: "3"})
    assert DRS.admit(container, {}) is True
    assert container["resources"] == {"limits": {COUNT: "3"}, "requests": {COUNT: "3"}}
    container = ctr(requests={COUNT: "2"})
    assert DRS.admit(container, {}) is True
    assert container["resources"] == {"limits": {COUNT: "2"}, "requests": {COUNT: "2"}}


def test_webhook_memory_and_core_api_as_hami() -> None:
    container = ctr(limits={MEM: "20480", CORE: "50"})
    assert DRS.admit(container, {}) is True
    assert container["resources"]["requests"] == {MEM: "20480", CORE: "50"}
    assert DRS.admit(ctr(limits={"cpu": "1"}), {}) is False


def test_a_slice_count_of_0_asks_for_nothing() -> None:
    # HAMi's webhook denies it; a count of 0 leaves the pod alone here, for every vendor.
    container = ctr(limits={COUNT: "0", MEM: "8"})
    assert DRS.admit(container, {}) is False and DRS.ask(container) is None


@pytest.mark.parametrize(("limits", "message"), [
    ({MEM: "0", CORE: "50"}, "enflame.com/gcu-memory must be greater than 0"),
    ({MEM: "8", CORE: "0"}, r"enflame.com/gcu-core must be in range \(0,100\]"),
    ({CORE: "101"}, r"enflame.com/gcu-core must be in range \(0,100\]"),
])
def test_webhook_denials(limits: dict[str, str], message: str) -> None:
    with pytest.raises(HamiError, match=message):
        DRS.admit(ctr(limits=limits), {})


# ---- requests ----------------------------------------------------------------------------------


def test_request_by_slices_and_by_spec_as_hami() -> None:
    assert DRS.ask(ctr(limits={COUNT: "3"})) == ContainerRequest(nums=1, memreq=3, mem_percentage=0, coresreq=0,
                                                                 vendor="Enflame", variant=DIRECT)
    spec = DRS.ask(ctr(limits={MEM: "20480", CORE: "40"}))
    assert spec is not None and (spec.nums, spec.memreq, spec.coresreq, spec.variant) == (1, 20480, 40, SPEC)
    assert DRS.ask(ctr(limits={"cpu": "1"})) is None


# ---- profile choice and fit (HAMi's TestFit_*) -------------------------------------------------


def gcu(uuid: str = "node-a-enflame-drs-0", count: int = 6, profiles: dict[str, str] | None = None,
        health: bool = True, **custom: Any) -> DeviceInfo:
    info = {"minor": "0", "index": "0", "profiles": PROFILES if profiles is None else profiles, **custom}
    return DeviceInfo(id=uuid, count=count, devmem=40960, devcore=100, type="Enflame", health=health,
                      vendor="Enflame", custom=info)


def direct(slices: int) -> ContainerRequest:
    return ContainerRequest(nums=1, memreq=slices, mem_percentage=0, vendor="Enflame", variant=DIRECT)


def spec(memory: int = 0, core: int = 0) -> ContainerRequest:
    return ContainerRequest(nums=1, memreq=memory, coresreq=core, vendor="Enflame", variant=SPEC)


@pytest.mark.parametrize(("ask", "want"), [
    (direct(3), ("3g.20gb", 20480, 50)),
    (spec(20480, 40), ("3g.20gb", 20480, 50)),  # MiB (over twice the largest profile's GB) -> 20 GB
    (spec(8), ("3g.20gb", 20480, 50)),  # GB
    (spec(core=60), ("6g.40gb", 40960, 100)),
    (spec(core=17), ("1g.6gb", 6144, 17)),  # 1 of 6 slices is ceil(16.7) %
    (spec(100), ("1g.6gb", 6144, 17)),  # 100 > 2 × 40: taken as MiB, 1 GB (HAMi's rule)
    (spec(), ("1g.6gb", 6144, 17)),
])
def test_profile_choice_as_hami(ask: ContainerRequest, want: tuple[str, int, int]) -> None:
    decision = fit(VENDORS, [gcu()], ask)
    [[placed]] = decision.allocation
    assert (placed.usedmem, placed.usedcores) == want[1:]


@pytest.mark.parametrize(("devices", "ask", "annotations", "reason"), [
    ([gcu(profiles={"1g.6gb": "0"})], direct(3), {}, "1/1 ModeNotFit"),
    ([gcu(profiles={"1g.6gb": "0"}, maxSlice=6)], spec(core=50), {}, "1/1 ModeNotFit"),  # 17 % only
    ([gcu(health=False)], direct(3), {}, "1/1 CardNotHealth"),
    ([gcu(profiles={"4294967299g.4294967299gb": "0"})], spec(3), {}, "1/1 ModeNotFit"),
    ([gcu(profiles={"4294967299g.20gb": "0"})], spec(3), {}, "1/1 ModeNotFit"),
    ([gcu(profiles={"2g.4294967299gb": "0"})], spec(3), {}, "1/1 ModeNotFit"),
    ([gcu(profiles={"2147483647g.20gb": "0"}, maxSlice="1")], spec(3), {}, "1/1 ModeNotFit"),
    ([gcu()], direct(3), {"enflame.com/use-gpuuuid": "other"}, "1/1 CardUuidMismatch"),
])
def test_fit_failures_as_hami(devices: list[DeviceInfo], ask: ContainerRequest, annotations: dict[str, str],
                              reason: str) -> None:
    decision = fit(VENDORS, devices, ask, annotations=annotations)
    assert decision.node is None and decision.reasons == {"n": reason}


def test_mutex_rejects_used_device_as_hami() -> None:
    decision = fit(VENDORS, [gcu(count=2)], direct(3), {"node-a-enflame-drs-0": (1, 0, 0)},
                   {"hami.io/gpu-scheduler-policy": "mutex"})
    assert decision.reasons == {"n": "1/1 ExclusiveDeviceAllocateConflict"}


def test_slices_fill_a_gcu() -> None:
    state = cluster(VENDORS, drs_node("a", 6))
    for name in ("x", "y"):
        assert place(state, VENDORS, pod_obj(name, ctr(limits={COUNT: "3"}))).node == "a"
    assert usage_of(state)["a-enflame-drs-0"] == (6, 40960, 100)  # two 3-slice profiles use all six slices
    third = place(state, VENDORS, pod_obj("z", ctr(limits={COUNT: "1"})))
    assert third.reasons == {"a": "1/1 CardTimeSlicingExhausted"}


def test_one_slice_profiles_run_out_of_compute_first_as_in_hami() -> None:
    state = cluster(VENDORS, drs_node("a", 6))
    placed = [place(state, VENDORS, pod_obj(f"p{i}", ctr(limits={COUNT: "1"}))).node for i in range(6)]
    assert placed == ["a"] * 5 + [None]  # 17 % each: five take 85 %, a sixth does not fit


def test_binpack_between_gcus_and_nodes() -> None:
    state = cluster(VENDORS, drs_node("a", 6, 6), drs_node("b", 6))
    first = place(state, VENDORS, pod_obj("p1", ctr(limits={COUNT: "1"})))
    second = place(state, VENDORS, pod_obj("p2", ctr(limits={COUNT: "1"})))
    assert first.node == second.node == "a"  # binpack nodes
    assert uuids(first) != uuids(second)  # spread GPUs (the default): the idle GCU


# ---- annotations (HAMi's TestPatchAnnotations_DRSFields) and restart ----------------------------


def test_decision_annotations_as_hami() -> None:
    devices = {"node-a-enflame-drs-0": gcu()}
    written = DRS.decision_annotations(PodDecisionInput(
        node="node-a", allocation=((ContainerDevice("node-a-enflame-drs-0", "Enflame", 20480, 50),),),
        devices=devices, annotations={}, container_names=("pod-gcu-example1",), now_ns=42))
    assert written == {
        "hami.io/enflame-vgpu-devices-allocated": "node-a-enflame-drs-0,Enflame,20480,50:;",
        "enflame.com/gcu-assigned": "false",
        "enflame.com/gcu-assigned-time": "42",
        "enflame.com/gcu-assigned-index": "0",
        "enflame.com/gcu-assigned-id": "0",
        "enflame.com/gcu-assigned-minor": "0",
        "enflame.com/gcu-request-size": "3",
        "assigned-containers": '{"pod-gcu-example1":{"allocated":false,"request":3,"profileID":"1",'
                               '"profileName":"3g.20gb"}}',
    }
    assert set(written) <= set(VENDORS.decision_keys())


def test_decision_annotations_per_container() -> None:
    state = cluster(VENDORS, drs_node("a", 6, 6))
    pod = pod_obj("p", ctr("zeta", limits={COUNT: "6"}), ctr("idle"), ctr("alpha", limits={MEM: "6", CORE: "10"}))
    decision = place(state, VENDORS, pod)
    assert decision.node == "a"
    written = decision_annotations(VENDORS, state, pod, decision)
    assert json.loads(written["assigned-containers"]) == {
        "alpha": {"allocated": False, "request": 1, "profileID": "0", "profileName": "1g.6gb"},
        "zeta": {"allocated": False, "request": 6, "profileID": "2", "profileName": "6g.40gb"},
    }
    assert list(json.loads(written["assigned-containers"])) == ["alpha", "zeta"]  # Go sorts map keys
    first_gcu = uuids(decision)[0][0].rsplit("-", 1)[1]
    assert written["enflame.com/gcu-assigned-index"] == first_gcu  # from the first container with a device
    assert written["enflame.com/gcu-request-size"] == "6"
    assert "hami.io/enflame-vgpu-devices-to-allocate" not in written


def test_restart_counts_each_pods_slices_not_one() -> None:
    # HAMi rebuilds usage from the -allocated string, which has no slice count, and then counts
    # each pod as one slice: a full GCU looks like it has room. We read the slices from the profile.
    nodes = [drs_node("a", 6)]
    state = cluster(VENDORS, *nodes)
    pods = [pod_obj(f"p{i}", ctr(limits={COUNT: "3"})) for i in range(2)]
    placed = [(p, place(state, VENDORS, p)) for p in pods]
    after = restarted(VENDORS, nodes, placed)
    assert usage_of(after) == usage_of(state) == {"a-enflame-drs-0": (6, 40960, 100)}
    assert place(after, VENDORS, pod_obj("late", ctr(limits={COUNT: "1"}))).node is None


def test_hami_schedule_snapshot_with_drs_and_whole_gcus(tmp_path: object) -> None:
    running = pod_obj("running", ctr(limits={COUNT: "6"}))
    running["metadata"]["annotations"] = {
        "hami.io/vgpu-node": "a", "hami.io/enflame-vgpu-devices-allocated": "a-enflame-drs-0,Enflame,40960,100:;"}
    objects = [drs_node("a", 6, 6), node_obj("w", capacity={"enflame.com/gcu": "2"}), running,
               pod_obj("slice", ctr(limits={MEM: "16", CORE: "30"})),
               pod_obj("whole", ctr(limits={"enflame.com/gcu": "1"}))]
    decisions = hami_schedule(tmp_path, objects)
    assert decisions["t/slice"]["containers"] == [
        [{"uuid": "a-enflame-drs-1", "type": "Enflame", "memory": 20480, "cores": 50}]]
    assert decisions["t/whole"]["node"] == "w"
    assert decisions["t/whole"]["containers"][0][0]["type"] == "GCU"


def test_pending_pod_gets_the_webhooks_copies_first() -> None:
    req = request(VENDORS, pod_obj("p", ctr(requests={COUNT: "2"})))
    [container] = req.containers
    assert (container.vendor, container.memreq, container.variant) == ("Enflame", 2, DIRECT)
