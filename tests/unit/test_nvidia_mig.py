"""Dynamic MIG in the scheduler (HAMi v2.10): profile and placement choice, reasons, mixed
nodes, the annotation written, and occupancy rebuilt from pods after a restart.

The golden cases are HAMi's own test tables (pkg/device/nvidia/mig_*_test.go and
pkg/scheduler/mig_allocation_test.go); the per-model tables use NVIDIA's MIG geometry as the
device plugin discovers it through the fake NVML backend.
"""

from __future__ import annotations

import json

import pytest

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.mig import MigAllocation, decode_mig_allocations, encode_mig_allocations
from hami.config import HamiConfig, parse_config
from hami.errors import HamiError
from hami.model import NodeDevices
from hami.model.allocation import ContainerDevice, DevicePart
from hami.model.mig import MigPlacement
from hami.scheduler.engine import PolicyDefaults, schedule
from hami.scheduler.state import ClusterState
from hami.snapshot import pod_decision
from hami.vendors import nvidia_mig as mig
from hami.vendors.registry import default_vendors
from tests.unit.engine_helpers import container, gpu, node, place, pod
from tests.unit.mig_helpers import mig_gpu, synthetic_a100

MIG = {keys.VGPU_MODE: "mig"}


def parts(decision) -> list[list[tuple[str, str, int, int]]]:
    return [[(d.uuid, d.part.profile, d.part.start, d.part.size) if d.part else (d.uuid, "", -1, -1)
             for d in c] for c in decision.allocation]


# ---- HAMi's golden tables ------------------------------------------------------------------

A100 = synthetic_a100().mig_profiles


def test_can_place_a100_geometries() -> None:  # TestCanPlaceMigProfilesA100
    assert mig.can_place(A100, [], ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"])
    assert mig.can_place(A100, [MigPlacement(4, 4)], ["2g.10gb", "1g.5gb", "1g.5gb"])
    assert not mig.can_place(A100, [MigPlacement(0, 4), MigPlacement(4, 4)], ["1g.5gb"])
    assert not mig.can_place(A100, [MigPlacement(0, 2), MigPlacement(2, 2), MigPlacement(4, 2)], ["2g.10gb"])


def test_placement_order_packs_balanced() -> None:  # TestSelectMigPlacementUsesBalancedPacking
    occupied: list[MigPlacement] = []
    by_name = {p.name: p for p in A100}
    for profile, start in (("3g.20gb", 4), ("2g.10gb", 0), ("1g.5gb", 3), ("1g.5gb", 2)):
        placement = mig.free_placement(by_name[profile], occupied)
        assert placement is not None and placement.start == start, profile
        occupied.append(placement)


def test_placed_device_records_the_profile() -> None:  # TestAddResourceUsageUsesReportedProfileAndPlacement
    state = ClusterState([node("n", synthetic_a100())])
    d = schedule(state, pod("p", container(gpu=1, mem=10000)))
    [[device]] = d.allocation
    assert (device.uuid, device.usedmem, device.usedcores) == ("GPU-a", 10240, 28)
    assert device.part == DevicePart("2g.10gb", 0, 2)


def _three_2g(state: ClusterState) -> None:
    for i in range(3):
        assert place(state, pod(f"two{i}", container(gpu=1, mem=10000))).node == "n"


def test_fourth_2g_does_not_fit_but_1g_does() -> None:  # TestCustomFilterUsesReportedPlacementCapacity
    state = ClusterState([node("n", synthetic_a100())])
    _three_2g(state)
    d = schedule(state, pod("p", container(gpu=1, mem=10000)))
    assert d.node is None and d.reasons == {"n": "1/1 CardMigTopologyInfeasible"}
    assert parts(schedule(state, pod("q", container(gpu=1, mem=5000)))) == [[("GPU-a", "1g.5gb", 6, 1)]]


def test_percentage_is_resolved_before_the_profile() -> None:  # TestFitUsesEffectivePercentageMemoryForMigPlacement
    state = ClusterState([node("n", synthetic_a100())])
    _three_2g(state)
    d = schedule(state, pod("p", container(gpu=1, pct=25, cores=0)))  # 25 % = 10240 MiB: only a 1g is left
    assert d.node is None and d.reasons["n"] == "1/1 CardMigTopologyInfeasible"


def test_two_instances_on_one_gpu_for_one_container() -> None:  # TestFitInDevicesAllowsMultipleMigPlacementsOnSingleGPU
    state = ClusterState([node("n", synthetic_a100(only_1g=True))])
    d = schedule(state, pod("p", container(gpu=2, mem=4000), annotations=MIG))
    assert parts(d) == [[("GPU-a", "1g.5gb", 6, 1), ("GPU-a", "1g.5gb", 5, 1)]]


def test_too_few_placements_on_one_gpu() -> None:  # TestFitInDevicesRejectsInsufficientMigPlacementsOnSingleGPU
    state = ClusterState([node("n", synthetic_a100(placements_1g=(6,), only_1g=True))])
    d = schedule(state, pod("p", container(gpu=2, mem=4000), annotations=MIG))
    assert d.node is None
    assert d.reasons == {"n": "1/1 CardMigTopologyInfeasible, 1/1 AllocatedCardsInsufficientRequest"}


def test_shared_gpu_keeps_the_device_count_check() -> None:  # TestFitInDevicesRetainsPhysicalCountCheckForNonMigGPU
    state = ClusterState([node("n", gpu("GPU-a", mem=40960, count=7))])
    d = schedule(state, pod("p", container(gpu=2, mem=4000), annotations={keys.VGPU_MODE: "hami-core"}))
    assert d.reasons == {"n": "1/1 NodeInsufficientDevice"}


@pytest.mark.parametrize(("mode", "repeats"), [(None, True), ("mig", True), ("hami-core,mig", True),
                                               ("hami-core", False)])
def test_mig_request_by_mode_annotation(mode: str | None, repeats: bool) -> None:  # TestIsMIGRequest
    state = ClusterState([node("n", synthetic_a100())])
    annotations = {keys.VGPU_MODE: mode} if mode else {}
    d = schedule(state, pod("p", container(gpu=2, mem=4000), annotations=annotations))
    assert (d.node == "n") is repeats


def test_allowlist_validation() -> None:  # TestValidateMigProfileAllowlist
    good = parse_config({"nvidia": {"migProfileAllowlist": [{"models": ["A100"], "profiles": ["1g.5gb", "2g.10gb"]}]}})
    assert good.nvidia.mig_profiles_for("NVIDIA A100-SXM4-40GB") == ("1g.5gb", "2g.10gb")
    for bad, message in (
        ([{"models": ["A100"]}], "'profiles' must be a non-empty list"),
        ([{"models": [], "profiles": ["1g.5gb"]}], "'models' must be a non-empty list"),
        ([{"models": ["A100"], "profiles": ["g.5gb"]}], "invalid MIG profile 'g.5gb'"),
        ([{"models": ["A100"], "profiles": ["1g5gb"]}], "invalid MIG profile"),
        ({"models": ["A100"]}, "must be a list"),
    ):
        with pytest.raises(HamiError, match=message):
            parse_config({"nvidia": {"migProfileAllowlist": bad}})


def test_allowlist_prefers_the_most_specific_model() -> None:
    config = HamiConfig()
    assert config.nvidia.mig_profiles_for("NVIDIA H200")[0] == "1g.18gb"  # HAMi's first match would be H20's
    assert config.nvidia.mig_profiles_for("NVIDIA H20")[0] == "1g.12gb"
    assert config.nvidia.mig_profiles_for("Tesla T4") == ()
    assert parse_config({"nvidia": {"migProfileAllowlist": []}}).nvidia.mig_profiles_for("NVIDIA A100-SXM4-40GB") == ()


def test_allocation_codec() -> None:  # TestEncodeDecodeMigAllocations and the decoder's rejections
    raw = encode_mig_allocations([MigAllocation(0, 0, "GPU-a", "1g.5gb", MigPlacement(6, 1))])
    assert json.loads(raw) == [{"containerIndex": 0, "deviceIndex": 0, "gpuUUID": "GPU-a", "profile": "1g.5gb",
                                "placement": {"start": 6, "size": 1}}]
    assert decode_mig_allocations(raw) == [MigAllocation(0, 0, "GPU-a", "1g.5gb", MigPlacement(6, 1))]
    zero_ids = ('[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"2g.10gb",'
                '"placement":{"start":0,"size":2},"migUUID":"MIG-a","gpuInstanceID":4,"computeInstanceID":0}]')
    [realized] = decode_mig_allocations(zero_ids)
    assert (realized.gpu_instance_id, realized.compute_instance_id, realized.realized) == (4, 0, True)
    assert decode_mig_allocations(encode_mig_allocations([realized])) == [realized]
    entry = ('{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"1g.5gb",'
             '"placement":{"start":%d,"size":1}}')
    for bad, message in (
        (f"[{entry % 6},{entry % 5}]", "duplicate MIG allocation for container 0 device 0"),
        ('[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"2g.10gb",'
         '"placement":{"start":0,"size":2},"migUUID":"MIG-a"}]', "partial runtime identity"),
        ('[{"containerIndex":-1,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"1g.5gb","placement":{"start":0,"size":1}}]',
         "incomplete"),
        ('[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"","profile":"1g.5gb","placement":{"start":0,"size":1}}]',
         "incomplete"),
        ('[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"1g.5gb","placement":{"start":0,"size":0}}]',
         "incomplete"),
        ("{", "invalid JSON"),
    ):
        with pytest.raises(AnnotationError, match=message):
            decode_mig_allocations(bad)
    assert decode_mig_allocations("") == [] and decode_mig_allocations("null") == []


# ---- per-model placement tables ------------------------------------------------------------

# (request MiB, profile, start) one after another on one GPU; (request, None, reason) where it
# does not fit. HAMi's generic checks run first: the memory and cores the instances recorded.
INFEASIBLE = "1/1 CardMigTopologyInfeasible"
Step = tuple[int, str | None, int | str]
TABLES: dict[str, list[list[Step]]] = {
    "A100-40GB": [
        # 1g from the top, 2g from the bottom: the middle stays whole longest.
        [(4000, "1g.5gb", 6), (4000, "1g.5gb", 5), (9000, "2g.10gb", 0), (9000, "2g.10gb", 2),
         (4000, "1g.5gb", 4),
         # Slice 3 is free, but five instances recorded 103 % of the cores (15+15+29+29+15).
         (4000, None, "1/1 CardInsufficientCore")],
        # Fragmentation: a 1g in the second half blocks the only free 3g range, though 3 slices are free.
        [(15000, "3g.20gb", 4), (4000, "1g.5gb", 3), (15000, None, INFEASIBLE), (9000, "2g.10gb", 0)],
        [(15000, "3g.20gb", 4), (15000, "3g.20gb", 0), (1000, None, "1/1 CardInsufficientMemory")],
        [(25000, "7g.40gb", 0), (1000, None, "1/1 CardInsufficientMemory")],
        # A whole card's 40960 MiB is more than the 7g instance holds (40192).
        [(40960, None, INFEASIBLE)],
    ],
    "A100-80GB": [
        # The 2g at 0 and the 1g at 6 leave no 4-slice range for a 3g.
        [(9000, "1g.10gb", 6), (12000, "2g.20gb", 0), (30000, None, INFEASIBLE), (9000, "1g.10gb", 5),
         (9000, "1g.10gb", 4), (9000, "1g.10gb", 3), (9000, "1g.10gb", 2),
         (9000, None, "1/1 CardInsufficientCore")],
        [(50000, "7g.79gb", 0), (1, None, "1/1 CardComputeUnitsExhausted")],
    ],
    "H100-80GB": [
        # 10000 MiB is more than the 1g.10gb instance (9984 MiB): the smallest that holds it is a 2g.
        [(10000, "2g.20gb", 0), (9984, "1g.10gb", 6), (20000, "2g.20gb", 2),
         (40000, None, "1/1 CardInsufficientMemory"), (9000, "1g.10gb", 5), (9000, "1g.10gb", 4),
         (9000, None, INFEASIBLE)],
    ],
    "H200-141GB": [
        [(17000, "1g.18gb", 6), (30000, "2g.35gb", 0), (70000, None, INFEASIBLE), (35000, "2g.35gb", 2),
         (17600, "1g.18gb", 5), (17600, "1g.18gb", 4), (17600, None, INFEASIBLE)],
    ],
}


@pytest.mark.parametrize(("model", "sequence"), [(m, s) for m, seqs in TABLES.items() for s in seqs])
def test_placement_sequence(model: str, sequence: list[Step]) -> None:
    state = ClusterState([node("n", mig_gpu("GPU-m", model))])
    profiles = {p.name: p for p in state.devices[0].mig_profiles}
    for step, (memory, profile, where) in enumerate(sequence):
        d = place(state, pod(f"p{step}", container(gpu=1, mem=memory)))
        if profile is None:
            assert d.node is None and d.reasons == {"n": where}, (step, d.reasons)
            continue
        assert d.node == "n", (step, d.reasons)
        [[device]] = d.allocation
        assert device.part == DevicePart(profile, int(where), profiles[profile].placements[0].size), (step, parts(d))
        assert (device.usedmem, device.usedcores) == (profiles[profile].memory, profiles[profile].core)


def test_registration_of_each_model() -> None:
    a100 = mig_gpu("GPU-a", "A100-40GB")
    assert (a100.mode, a100.count, a100.devmem, a100.devcore) == ("mig", 7, 40960, 100)
    assert [(p.name, p.memory, p.core, p.slices) for p in a100.mig_profiles] == [
        ("1g.5gb", 4864, 15, 1), ("2g.10gb", 9984, 29, 2), ("3g.20gb", 20096, 43, 3), ("7g.40gb", 40192, 100, 7)]
    assert [(x.start, x.size) for x in a100.mig_profiles[2].placements] == [(0, 4), (4, 4)]
    h100 = mig_gpu("GPU-h", "H100-80GB")
    assert [(p.name, p.core) for p in h100.mig_profiles] == [("1g.10gb", 13), ("2g.20gb", 25), ("3g.40gb", 46),
                                                             ("7g.80gb", 100)]


def test_allowlist_name_selects_the_double_memory_1g() -> None:
    """`1g.20gb` on an H100 is the double-memory 1g profile (HAMi would read the plain 1g's memory)."""
    config = parse_config({"nvidia": {"migProfileAllowlist": [
        {"models": ["H100"], "profiles": ["1g.10gb", "1g.20gb", "2g.20gb"]}]}})
    device = mig_gpu("GPU-h", "H100-80GB", config=config)
    assert [(p.name, p.memory, [x.size for x in p.placements][0]) for p in device.mig_profiles] == [
        ("1g.10gb", 9984, 1), ("1g.20gb", 20096, 2), ("2g.20gb", 20096, 2)]
    state = ClusterState([node("n", device)])
    # Same memory: the profile with fewer slices first (HAMi's order), placed from the top.
    assert parts(schedule(state, pod("p", container(gpu=1, mem=15000)))) == [[("GPU-h", "1g.20gb", 6, 2)]]


# ---- mixed nodes and pods ------------------------------------------------------------------

def mixed_node() -> NodeDevices:
    return node("mixed", mig_gpu("GPU-mig", "A100-40GB", index=0), gpu("GPU-core", mem=40960, index=1,
                                                                        dtype="NVIDIA-A100-SXM4-40GB"))


def test_vgpu_mode_selects_mig_or_shares() -> None:
    state = ClusterState([mixed_node()])
    on_mig = schedule(state, pod("a", container(gpu=1, mem=4000), annotations=MIG))
    assert parts(on_mig) == [[("GPU-mig", "1g.5gb", 6, 1)]]
    shared = schedule(state, pod("b", container(gpu=1, mem=4000), annotations={keys.VGPU_MODE: "hami-core"}))
    assert [[(d.uuid, d.part) for d in c] for c in shared.allocation] == [[("GPU-core", None)]]
    too_big = schedule(state, pod("c", container(gpu=1, mem=41000), annotations=MIG))
    assert too_big.reasons == {"mixed": "1/2 CardTypeMismatch, 1/2 CardInsufficientMemory"}


def test_a_container_gets_instances_or_shares_not_both() -> None:
    state = ClusterState([mixed_node()])
    # Spread tries the idle shared GPU first: the container takes shares (one GPU is not enough
    # for two) and then instances of the MIG GPU, never one of each.
    d = schedule(state, pod("p", container(gpu=2, mem=4000)))
    assert parts(d) == [[("GPU-mig", "1g.5gb", 6, 1), ("GPU-mig", "1g.5gb", 5, 1)]]


def test_containers_of_one_pod_get_distinct_placements() -> None:
    state = ClusterState([node("n", mig_gpu("GPU-m", "A100-40GB"))])
    d = schedule(state, pod("p", container("a", gpu=1, mem=4000), container("b", gpu=1, mem=4000),
                            init=(container("i", gpu=1, mem=4000),)))
    assert parts(d) == [[("GPU-m", "1g.5gb", 6, 1)], [("GPU-m", "1g.5gb", 5, 1)], [("GPU-m", "1g.5gb", 4, 1)]]


def test_decision_annotation_indexes_containers_and_devices() -> None:
    state = ClusterState([node("n", mig_gpu("GPU-m", "A100-40GB"))])
    request = pod("p", container("a", gpu=1, mem=1000), container("b", gpu=2, mem=9000), annotations=MIG)
    d = schedule(state, request)
    annotations = default_vendors().decision_annotations(state.nodes[0], request, d.allocation, 0)
    assert json.loads(annotations[keys.MIG_ALLOCATIONS]) == [
        {"containerIndex": 0, "deviceIndex": 0, "gpuUUID": "GPU-m", "profile": "1g.5gb",
         "placement": {"start": 6, "size": 1}},
        {"containerIndex": 1, "deviceIndex": 0, "gpuUUID": "GPU-m", "profile": "2g.10gb",
         "placement": {"start": 0, "size": 2}},
        {"containerIndex": 1, "deviceIndex": 1, "gpuUUID": "GPU-m", "profile": "2g.10gb",
         "placement": {"start": 2, "size": 2}},
    ]
    assert annotations[keys.DEVICES_ALLOCATED] == "GPU-m,NVIDIA,4864,15:;GPU-m,NVIDIA,9984,29:GPU-m,NVIDIA,9984,29:;"
    assert keys.MIG_ALLOCATIONS in default_vendors().decision_keys()


# ---- after a restart: occupancy from the pods --------------------------------------------

def held_pod(name: str, allocated: str, mig_annotation: str | None) -> dict:
    annotations = {keys.VGPU_NODE: "n", keys.DEVICES_ALLOCATED: allocated}
    if mig_annotation is not None:
        annotations[keys.MIG_ALLOCATIONS] = mig_annotation
    return {"metadata": {"name": name, "namespace": "t", "annotations": annotations},
            "spec": {"nodeName": "n", "containers": [container(gpu=1, mem=4000)]}}


def restored(*pods: dict, device=None) -> ClusterState:
    state = ClusterState([node("n", device or synthetic_a100())])
    for obj in pods:
        decision = pod_decision(obj, default_vendors())
        assert decision is not None
        state.add_pod(obj["metadata"]["name"], decision[0], decision[1])
    return state


RESERVED_6 = ('[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"1g.5gb",'
              '"placement":{"start":6,"size":1},"migUUID":"MIG-a","gpuInstanceID":7,"computeInstanceID":0}]')


# TestGetNodesUsageRestoresMigAllocationByProfileAndPlacement
def test_restart_restores_profile_and_placement() -> None:
    state = restored(held_pod("old", "GPU-a,NVIDIA,5120,14:;", RESERVED_6))
    assert state.parts_of(0) == [DevicePart("1g.5gb", 6, 1)]
    assert parts(schedule(state, pod("new", container(gpu=1, mem=4000)))) == [[("GPU-a", "1g.5gb", 5, 1)]]
    state.remove_pod("old")
    assert state.parts_of(0) == []
    assert parts(schedule(state, pod("new", container(gpu=1, mem=4000)))) == [[("GPU-a", "1g.5gb", 6, 1)]]


def test_restart_round_trip_through_the_annotations() -> None:
    """A decision, written as the scheduler writes it and read back, holds the same placements."""
    state = ClusterState([node("n", mig_gpu("GPU-m", "A100-40GB"))])
    request = pod("p", container(gpu=2, mem=9000), annotations=MIG)
    d = schedule(state, request)
    written = default_vendors().decision_annotations(state.nodes[0], request, d.allocation, 0)
    obj = {"metadata": {"name": "p", "namespace": "t", "annotations": {keys.VGPU_NODE: "n", **written}},
           "spec": {"nodeName": "n"}}
    decision = pod_decision(obj, default_vendors())
    assert decision is not None and decision[1] == d.allocation


# TestGetNodesUsageFailsClosedWithoutMigAllocation
def test_a_pod_without_reservation_fails_the_mig_gpu_closed() -> None:
    state = restored(held_pod("old", "GPU-a,NVIDIA,5120,14:;", None))
    d = schedule(state, pod("new", container(gpu=1, mem=4000)))
    assert d.node is None and d.reasons == {"n": "1/1 CardNotHealth"}


def test_malformed_reservations_fail_closed() -> None:
    state = restored(held_pod("old", "GPU-a,NVIDIA,5120,14:;", "[{"))
    assert schedule(state, pod("new", container(gpu=1, mem=4000))).reasons == {"n": "1/1 CardNotHealth"}


def test_unconsumed_reservations_fail_closed() -> None:  # HAMi restores them; we hold the GPU unhealthy
    two = ('[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"1g.5gb",'
           '"placement":{"start":6,"size":1}},'
           '{"containerIndex":0,"deviceIndex":1,"gpuUUID":"GPU-a","profile":"1g.5gb",'
           '"placement":{"start":5,"size":1}}]')
    state = restored(held_pod("old", "GPU-a,NVIDIA,5120,14:;", two))
    assert schedule(state, pod("new", container(gpu=1, mem=4000))).reasons == {"n": "1/1 CardNotHealth"}
    state.remove_pod("old")
    assert schedule(state, pod("new", container(gpu=1, mem=4000))).node == "n"


def test_a_reservation_on_a_shared_gpu_fails_it_closed() -> None:
    reserved = RESERVED_6.replace("GPU-a", "GPU-s")
    state = restored(held_pod("old", "GPU-s,NVIDIA,5120,14:;", reserved),
                     device=gpu("GPU-s", mem=40960))
    d = schedule(state, pod("new", container(gpu=1, mem=4000)))
    assert d.reasons == {"n": "1/1 CardNotHealth"}


def test_schedule_command_prints_profile_and_placement(tmp_path) -> None:
    from tests.unit.test_schedule_command import hami

    registered = json.dumps([{"id": "GPU-a", "count": 7, "devmem": 40960, "devcore": 100,
                              "type": "NVIDIA A100-SXM4-40GB", "mode": "mig", "health": True,
                              "migProfiles": [{"name": "1g.5gb", "memoryMB": 4864, "core": 15, "sliceCount": 1,
                                               "placements": [{"start": s, "size": 1} for s in range(7)]}]}])
    snapshot = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "n", "annotations": {keys.NODE_NVIDIA_REGISTER: registered}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "old", "namespace": "t", "annotations": {
            keys.VGPU_NODE: "n", keys.DEVICES_ALLOCATED: "GPU-a,NVIDIA,4864,15:;", keys.MIG_ALLOCATIONS: RESERVED_6}},
         "spec": {"nodeName": "n", "containers": [container(gpu=1, mem=4000)]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new", "namespace": "t"},
         "spec": {"containers": [container(gpu=2, mem=4000)]}},
    ]}
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snapshot))
    result = hami("schedule", "--snapshot", str(path), "-o", "json")
    assert result.returncode == 0, result.stderr
    [decision] = json.loads(result.stdout)["decisions"]
    assert decision["containers"] == [[
        {"uuid": "GPU-a", "type": "NVIDIA A100-SXM4-40GB", "memory": 4864, "cores": 15,
         "mig": {"profile": "1g.5gb", "placement": {"start": 5, "size": 1}}},
        {"uuid": "GPU-a", "type": "NVIDIA A100-SXM4-40GB", "memory": 4864, "cores": 15,
         "mig": {"profile": "1g.5gb", "placement": {"start": 4, "size": 1}}},
    ]]


def test_container_device_part_is_not_in_the_allocation_text() -> None:
    from hami.annotations.pod_devices import encode_pod_devices

    placed = ContainerDevice("GPU-a", "NVIDIA", 4864, 15, DevicePart("1g.5gb", 6, 1))
    assert encode_pod_devices(((placed,),)) == "GPU-a,NVIDIA,4864,15:;"


def test_defaults_keep_binpack_for_mig_nodes() -> None:
    """Two MIG GPUs: binpack GPUs fill the busier one first, with HAMi's device score."""
    state = ClusterState([node("n", mig_gpu("GPU-0", "A100-40GB", index=0), mig_gpu("GPU-1", "A100-40GB", index=1))])
    first = place(state, pod("a", container(gpu=1, mem=4000)), gpu_policy=PolicyDefaults().gpu_policy)
    second = place(state, pod("b", container(gpu=1, mem=4000), annotations={keys.GPU_SCHEDULER_POLICY: "binpack"}))
    assert first.allocation[0][0].uuid == second.allocation[0][0].uuid


def test_a_mig_instance_cannot_be_resized() -> None:
    from hami.scheduler.resize import ResizeAsk, plan_resize

    state = ClusterState([node("n", synthetic_a100())])
    request = pod("p", container(gpu=1, mem=4000))
    d = place(state, request)
    plan = plan_resize(state, request.key, "n", d.allocation, request.names, [ResizeAsk(None, memory_mib=8000)])
    assert plan.allocation is None and "MIG instance (1g.5gb)" in plan.reason
