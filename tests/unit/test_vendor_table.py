"""The data-row vendors (Hygon DCU, Iluvatar, Biren, Enflame GCU) and vendors side by side."""

from __future__ import annotations

import json

from hami.annotations.node_register import decode_node_devices
from hami.config import HamiConfig
from hami.scheduler.engine import schedule
from hami.vendors.base import LockKind
from hami.vendors.registry import VendorSet
from hami.webhook.mutate import mutate
from tests.unit.vendor_helpers import (
    VENDORS,
    csv_devices,
    ctr,
    json_devices,
    node_obj,
    place,
    pod_obj,
    registered,
    request,
    state_of,
)

DCU_REGISTER = "hami.io/node-dcu-register"


def dcu_node(name: str, n: int = 2, mem: int = 16384) -> dict[str, object]:
    return node_obj(name, {DCU_REGISTER: csv_devices(f"DCU-{name}", n, 4, mem, 100, "DCU-Z100")})


def test_dcu_registration_from_the_colon_form() -> None:
    node = registered(dcu_node("d1"))
    assert [(d.id, d.count, d.devmem, d.type, d.vendor) for d in node.devices] == [
        ("DCU-d1-0", 4, 16384, "DCU-Z100", "DCU"), ("DCU-d1-1", 4, 16384, "DCU-Z100", "DCU")]
    # HAMi's own encoder writes 7 fields; both forms read the same devices.
    short = "DCU-x,4,16384,100,DCU-Z100,0,true:"
    assert [d.id for d in decode_node_devices(short)] == ["DCU-x"]


def test_dcu_defaults_to_exclusive_cores_and_memory_units() -> None:
    ask = request(pod_obj("p", ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000}))).containers[0]
    assert (ask.vendor, ask.nums, ask.memreq, ask.coresreq) == ("DCU", 1, 2000, 100)
    state = state_of(dcu_node("d1", n=1))
    assert place(state, pod_obj("a", ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000}))).node == "d1"
    second = place(state, pod_obj("b", ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000})))
    assert second.node is None and second.reasons == {"d1": "1/1 CardInsufficientCore"}
    shared = place(state, pod_obj("c", ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000,
                                              "hygon.com/dcucores": 0})))
    assert shared.node is None and shared.reasons == {"d1": "1/1 CardComputeUnitsExhausted"}


def test_dcu_type_filter_annotations() -> None:
    state = state_of(dcu_node("d1"), node_obj("d2", {DCU_REGISTER: csv_devices("DCU-k", 1, 4, 16384, 100, "DCU-K100")}))
    asks = ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcucores": 10, "hygon.com/dcumem": 100})
    decision = place(state, pod_obj("p", asks, annotations={"hygon.com/use-dcutype": "k100"}))
    assert decision.node == "d2"
    assert decision.reasons == {"d1": "2/2 CardTypeMismatch"}
    # NVIDIA's type annotation does not filter DCUs.
    assert place(state, pod_obj("q", asks, annotations={"nvidia.com/use-gputype": "A100"})).node is not None


def test_dcu_decision_annotations_use_its_keys() -> None:
    state = state_of(dcu_node("d1", n=1))
    req = request(pod_obj("p", ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcumem": 1000})))
    decision = schedule(state, req)
    annotations = VENDORS.decision_annotations(state.nodes[0], req, decision.allocation, 0)
    assert annotations == {"hami.io/dcu-devices-to-allocate": "DCU-d1-0,DCU,1000,100:;",
                           "hami.io/dcu-devices-allocated": "DCU-d1-0,DCU,1000,100:;"}
    assert VENDORS.allocation_from_annotations(annotations) == decision.allocation


def test_iluvatar_memory_units_and_webhook() -> None:
    chip = "BI-V150"
    obj = pod_obj("p", ctr(**{f"iluvatar.ai/{chip}-vgpu": 2, f"iluvatar.ai/{chip}.vMem": 8}))
    verdict = mutate(obj, VENDORS)
    assert verdict.allowed
    containers = next(op["value"] for op in verdict.patch if op["path"] == "/spec/containers")
    assert containers[0]["resources"]["limits"][f"iluvatar.ai/{chip}.vCore"] == 200
    assert {"name": "SOL_CONTINER_NAME", "value": "c"} in containers[0]["env"]
    ask = request(obj).containers[0]
    assert (ask.vendor, ask.nums, ask.memreq, ask.coresreq) == (chip, 2, 8 * 256, 0)


def test_biren_shares_whole_devices_up_to_the_task_count() -> None:
    node = node_obj("b1", {"hami.io/node-biren-register": json_devices("BR", 1, count=2, devmem=65536, devcore=7,
                                                                       type="Biren-110")})
    assert registered(node).devices[0].devcore == 100  # HAMi forces it ("only for calscore use")
    state = state_of(node)
    asks = ctr(**{"birentech.com/gpu": 1})
    assert place(state, pod_obj("a", asks)).node == "b1"
    assert place(state, pod_obj("b", asks)).node == "b1"  # no memory check: the second task fits
    third = place(state, pod_obj("c", asks))
    assert third.reasons == {"b1": "1/1 CardTimeSlicingExhausted"}


def test_enflame_gcu_devices_come_from_capacity_and_are_exclusive() -> None:
    state = state_of(node_obj("e1", capacity={"enflame.com/gcu": "2"}))
    assert [d.id for d in state.nodes[0].devices] == ["e1-GCU-0", "e1-GCU-1"]
    asks = ctr(**{"enflame.com/gcu": 1})
    assert place(state, pod_obj("a", asks)).node == "e1"
    assert place(state, pod_obj("b", asks)).node == "e1"
    third = place(state, pod_obj("c", asks))
    assert third.reasons == {"e1": "2/2 ExclusiveDeviceAllocateConflict"}


def test_a_node_with_two_vendors_counts_each_vendors_devices_in_its_reasons() -> None:
    mixed = node_obj("m1", {
        "hami.io/node-nvidia-register": json_devices("GPU", 2, count=10, devmem=24000, devcore=100,
                                                     type="NVIDIA-A10"),
        DCU_REGISTER: csv_devices("DCU-m1", 1, 4, 16384, 100, "DCU-Z100"),
    })
    state = state_of(mixed, dcu_node("d1"))
    assert [d.vendor for d in state.nodes[0].devices] == ["DCU", "NVIDIA", "NVIDIA"]
    too_big = schedule(state, request(pod_obj("p", ctr(**{"hygon.com/dcunum": 1, "hygon.com/dcumem": 20000}))))
    assert too_big.reasons == {"m1": "1/1 CardInsufficientMemory", "d1": "2/2 CardInsufficientMemory"}
    gpus = schedule(state, request(pod_obj("g", ctr(**{"nvidia.com/gpu": 3}))))
    assert gpus.reasons == {"m1": "2/2 NodeInsufficientDevice", "d1": "0/0 NodeInsufficientDevice"}


def test_one_container_asking_two_vendors() -> None:
    mixed = node_obj("m1", {
        "hami.io/node-nvidia-register": json_devices("GPU", 1, count=10, devmem=24000, devcore=100,
                                                     type="NVIDIA-A10"),
        DCU_REGISTER: csv_devices("DCU-m1", 1, 4, 16384, 100, "DCU-Z100"),
    })
    state = state_of(mixed, dcu_node("d1"))
    obj = pod_obj("p", ctr(**{"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000, "hygon.com/dcunum": 1,
                              "hygon.com/dcumem": 1000}))
    req = request(obj)
    assert [a.vendor for a in req.containers[0].asks] == ["DCU", "NVIDIA"]
    decision = place(state, obj)
    assert decision.node == "m1"
    assert decision.reasons == {"d1": "0/0 NodeInsufficientDevice"}
    assert [(d.uuid, d.vendor) for d in decision.allocation[0]] == [("DCU-m1-0", "DCU"), ("GPU-0", "NVIDIA")]
    annotations = VENDORS.decision_annotations(state.nodes[0], req, decision.allocation, 0)
    assert annotations["hami.io/vgpu-devices-allocated"] == "GPU-0,NVIDIA,1000,0:;"
    assert annotations["hami.io/dcu-devices-allocated"] == "DCU-m1-0,DCU,1000,100:;"
    assert VENDORS.allocation_from_annotations(annotations) == decision.allocation
    # After a restart the pod holds both devices again.
    rebuilt = state_of(mixed, dcu_node("d1"))
    rebuilt.add_pod(req.key, "m1", VENDORS.allocation_from_annotations(annotations) or ())
    assert rebuilt.usedmem.tolist() == state.usedmem.tolist()


def test_a_vendor_section_in_the_config_renames_resources() -> None:
    from hami.config import parse_config

    vendors = VendorSet.from_config(parse_config({"hygon": {"resourceCountName": "example.com/dcu",
                                                            "memoryFactor": 2}}))
    ask = vendors.pod_request(pod_obj("p", ctr(**{"example.com/dcu": 1, "hygon.com/dcumem": 10}))).containers[0]
    assert (ask.vendor, ask.memreq) == ("DCU", 20)
    assert "example.com/dcu" in vendors.managed_resources()


def test_malformed_vendor_registration_is_a_warning_not_a_crash() -> None:
    bad = node_obj("x", {DCU_REGISTER: "DCU-1,four,1,1,DCU,0,true:",
                         "hami.io/node-nvidia-register": json.dumps([{"id": "GPU-1", "count": 1, "devmem": 10,
                                                                      "devcore": 100, "type": "NVIDIA-T4",
                                                                      "health": True}])})
    node, warnings = VENDORS.registered_node(bad)
    assert node is not None and [d.vendor for d in node.devices] == ["NVIDIA"]
    assert warnings and "hami.io/node-dcu-register" in warnings[0]


def test_handshake_health_follows_hami() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    dcu = VENDORS["DCU"]
    registration = csv_devices("DCU-h", 1, 4, 16384, 100, "DCU-Z100")

    def node(handshake: str | None, allocatable: str | None) -> dict[str, object]:
        annotations = {DCU_REGISTER: registration}
        if handshake is not None:
            annotations["hami.io/node-handshake-dcu"] = handshake
        obj = node_obj("h1", annotations)
        obj["status"] = {"allocatable": {} if allocatable is None else {"hygon.com/dcunum": allocatable}}
        return obj

    reported = node("Reported 2026-12-01 11:59:50.1 +0000 UTC", "4")
    assert dcu.node_health(reported, now)
    assert dcu.handshake_request(reported, now) == "Requesting_2026-12-01 12:00:00"
    recent = node("Requesting_2026-12-01 11:59:30", "0")
    assert dcu.node_health(recent, now) and dcu.handshake_request(recent, now) is None
    stale_gone = node("Requesting_2026-12-01 11:58:00", "0")
    assert not dcu.node_health(stale_gone, now)
    assert dcu.node_health(node("Requesting_2026-12-01 11:58:00", "4"), now)  # still advertised: kept
    assert dcu.node_health(node("Requesting_garbage", None), now)
    # The cache's view: the stale vendor offers nothing, and comes back once its agent reports.
    assert VENDORS.registered_node(stale_gone, now)[0] is None
    assert VENDORS.registered_node(stale_gone, now + timedelta(days=-1))[0] is not None
    assert VENDORS.registered_node(stale_gone)[0] is not None  # a snapshot is judged without a clock
    # No handshake is asked of a node that does not register the vendor (HAMi asks every node).
    assert dcu.handshake_request(node_obj("plain"), now) is None


def test_every_vendor_takes_the_node_lock_hami_takes() -> None:
    """HAMi-VENDORS §2.0: Cambricon its own, the capacity-built vendors (and Enflame's slices,
    Metax's whole GPUs) none, every other vendor HAMi's shared `hami.io/mutex.lock`."""
    locks = {vendor.name: vendor.lock for vendor in VendorSet.from_config(HamiConfig())}
    without = {"AWSNeuron", "Enflame", "GCU", "Metax-GPU", "Mthreads", "kunlun"}
    assert {name for name, lock in locks.items() if lock is LockKind.NONE} == without
    assert {name for name, lock in locks.items() if lock is LockKind.OWN} == {"MLU"}
    assert all(lock is LockKind.SHARED for name, lock in locks.items() if name not in without | {"MLU"})
    assert len(locks) == 25
