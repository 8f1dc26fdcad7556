"""Moore Threads: HAMi's pkg/device/mthreads rules, with the cases of its device_test.go."""

from __future__ import annotations

from typing import Any

import pytest

from hami.errors import HamiError
from hami.model import ContainerDevice, ContainerRequest, DeviceInfo
from hami.vendors.base import LockKind, PodDecisionInput
from hami.webhook.mutate import mutate

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

MT = VENDORS["Mthreads"]
COUNT, MEM, CORES = "mthreads.com/vgpu", "mthreads.com/sgpu-memory", "mthreads.com/sgpu-core"


def mt_node(name: str, gpus: int) -> dict[str, Any]:
    return node_obj(name, capacity={CORES: str(16 * gpus), MEM: str(96 * gpus), COUNT: str(100 * gpus)})


# ---- registration from capacity ----------------------------------------------------------------


def test_one_gpu_from_capacity_as_hami_test() -> None:
    [node] = registered(VENDORS, node_obj("test", capacity={MEM: "1", CORES: "1"}))
    assert node.devices == (DeviceInfo(id="test-mthreads-0", count=100, devmem=8192, devcore=16, type="Mthreads",
                                       index=0, vendor="Mthreads"),)


def test_gpus_are_cores_over_16_and_share_the_memory() -> None:
    [node] = registered(VENDORS, mt_node("n", 2))
    assert [(d.id, d.devmem, d.devcore) for d in node.devices] == [("n-mthreads-0", 49152, 16),
                                                                   ("n-mthreads-1", 49152, 16)]


def test_no_lock_and_only_the_count_is_managed() -> None:
    assert MT.lock is LockKind.NONE
    assert MT.managed_resources() == (COUNT,)


# ---- webhook: HAMi's Test_MutateAdmission ---------------------------------------------------


def admit(container: dict[str, Any], annotations: dict[str, str] | None = None) -> tuple[bool, dict, dict]:
    pod = pod_obj("p", container, annotations=annotations)
    found = MT.admit(pod["spec"]["containers"][0], pod)
    return found, pod["spec"]["containers"][0]["resources"], pod["metadata"]["annotations"]


def test_webhook_several_gpus_become_whole_gpus_and_the_pod_says_how_many() -> None:
    found, resources, annotations = admit(ctr(limits={COUNT: 2, MEM: 2, CORES: 1}),
                                          {"mthreads.com/request-gpu-num": "test123"})
    assert found
    assert resources["limits"] == {COUNT: 2, MEM: "192", CORES: "32"}
    assert annotations == {"mthreads.com/request-gpu-num": "2"}


def test_webhook_count_from_requests_when_limits_lack_it() -> None:
    found, resources, annotations = admit(ctr(requests={COUNT: "2"}))
    assert found and resources["limits"] == {MEM: "192", CORES: "32"}
    assert annotations == {"mthreads.com/request-gpu-num": "2"}
    found, resources, _ = admit(ctr(requests={COUNT: "1"}))
    assert found and resources["limits"] == {MEM: "96", CORES: "16"}


def test_webhook_one_gpu_without_memory_is_the_whole_gpu() -> None:
    found, resources, _ = admit(ctr(limits={COUNT: "1", CORES: "1"}))
    assert found and resources["limits"] == {COUNT: "1", MEM: "96", CORES: "16"}


def test_webhook_leaves_a_valid_share_alone() -> None:
    found, resources, annotations = admit(ctr(limits={COUNT: "1", MEM: "2", CORES: "1"}))
    assert found and resources["limits"] == {COUNT: "1", MEM: "2", CORES: "1"} and annotations == {}


def test_webhook_ignores_containers_without_the_count() -> None:
    found, resources, _ = admit(ctr(limits={MEM: "2", CORES: "1"}))
    assert not found and resources["limits"] == {MEM: "2", CORES: "1"}


def test_webhook_denies_a_memory_outside_the_list() -> None:
    with pytest.raises(HamiError) as error:
        admit(ctr(limits={COUNT: "1", MEM: "3", CORES: "1"}))
    assert str(error.value) == "sGPU memory request value is invalid, valid values are [2, 4, 8, 16, 32, 64, 96]"


@pytest.mark.parametrize("container", [
    ctr(limits={COUNT: "0", MEM: "2", CORES: "1"}),
    ctr(requests={COUNT: "0", MEM: "2", CORES: "1"}),
])
def test_a_count_of_0_asks_for_nothing(container: dict[str, Any]) -> None:
    # HAMi's webhook denies it; a count of 0 leaves the pod alone here, for every vendor.
    found, resources, annotations = admit(container)
    assert not found and annotations == {} and "96" not in str(resources)


def test_webhook_denies_a_negative_count() -> None:
    with pytest.raises(HamiError, match="mthreads.com/vgpu must be greater than 0"):
        admit(ctr(limits={COUNT: "-1", MEM: "2", CORES: "1"}))


# ---- requests: HAMi's Test_GenerateResourceRequests -----------------------------------------


def test_request_in_512_mib_units() -> None:
    ask = MT.ask(ctr(limits={COUNT: "1", MEM: "1000", CORES: "1"}, requests={COUNT: "1", MEM: "1000", CORES: "1"}))
    assert ask == ContainerRequest(nums=1, memreq=512000, mem_percentage=0, coresreq=1, vendor="Mthreads")


def test_request_count_only_from_requests_is_the_whole_gpu() -> None:
    ask = MT.ask(ctr(limits={}, requests={COUNT: "1"}))
    assert ask == ContainerRequest(nums=1, memreq=0, mem_percentage=100, coresreq=0, vendor="Mthreads")


def test_request_memory_and_cores_are_divided_over_the_gpus() -> None:
    ask = MT.ask(ctr(limits={COUNT: "2", MEM: "192", CORES: "32"}))
    assert ask is not None and (ask.nums, ask.memreq, ask.coresreq) == (2, 96 * 512, 16)
    ask = MT.ask(ctr(limits={COUNT: "3", MEM: "4", CORES: "16"}))
    assert ask is not None and (ask.memreq, ask.coresreq) == (4 * 512 // 3, 5)  # rounded down, as HAMi


@pytest.mark.parametrize("container", [
    ctr(limits={}, requests={MEM: "1000", CORES: "1"}),
    ctr(limits={COUNT: "0", MEM: "1000", CORES: "1"}),
])
def test_no_request_without_a_count(container: dict[str, Any]) -> None:
    assert MT.ask(container) is None


@pytest.mark.parametrize("limits", [
    {COUNT: "4294967296", MEM: "1000", CORES: "1"},
    {COUNT: "1", MEM: "16Gi", CORES: "1"},
    {COUNT: "1", MEM: "16.0Gi", CORES: "1"},
    {COUNT: "-1", MEM: "1000", CORES: "1"},
])
def test_out_of_range_requests_are_errors(limits: dict[str, str]) -> None:
    # HAMi drops these silently (no request); we refuse them with the resource named.
    with pytest.raises(HamiError):
        MT.ask(ctr(limits=limits))


# ---- fit: HAMi's TestDevices_Fit ---------------------------------------------------------------


def gpu(uuid: str, index: int, mem: int = 1280, count: int = 100, health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=100, type="Mthreads", index=index, health=health,
                      vendor="Mthreads")


def ask(nums: int = 1, mem: int = 512, pct: int = 0, cores: int = 50) -> ContainerRequest:
    return ContainerRequest(nums=nums, memreq=mem, mem_percentage=pct, coresreq=cores, vendor="Mthreads")


@pytest.mark.parametrize(("devices", "usage", "request_", "annotations", "want", "reason"), [
    pytest.param([gpu("dev-0", 0, 128), gpu("dev-1", 1, 128)], {}, ask(mem=64), {}, ["dev-1"], "", id="fit success"),
    pytest.param([gpu("dev-0", 0, 128)], {}, ask(), {}, None, "1/1 CardInsufficientMemory", id="memory not enough"),
    pytest.param([gpu("dev-0", 0, 1024)], {"dev-0": (0, 0, 100)}, ask(), {}, None, "1/1 CardInsufficientCore",
                 id="core not enough"),
    pytest.param([gpu("dev-1", 0)], {}, ask(), {"mthreads.ai/use-gpuuuid": "dev-0"}, None, "1/1 CardUuidMismatch",
                 id="use uuid mismatch"),
    pytest.param([gpu("dev-0", 0)], {}, ask(), {"mthreads.ai/nouse-gpuuuid": "dev-0"}, None, "1/1 CardUuidMismatch",
                 id="nouse uuid match"),
    pytest.param([gpu("dev-0", 0)], {"dev-0": (100, 0, 0)}, ask(), {}, None, "1/1 CardTimeSlicingExhausted",
                 id="card overused"),
    pytest.param([gpu("dev-0", 0)], {}, ask(cores=120), {}, ["dev-0"], "", id="core limit can't exceed 100"),
    pytest.param([gpu("dev-0", 0)], {"dev-0": (20, 0, 0)}, ask(cores=100), {}, None,
                 "1/1 ExclusiveDeviceAllocateConflict", id="card exclusively"),
    pytest.param([gpu("dev-0", 0)], {"dev-0": (20, 0, 100)}, ask(cores=0), {}, None, "1/1 CardComputeUnitsExhausted",
                 id="compute units exhausted"),
    pytest.param([gpu("dev-0", 0)], {"dev-0": (20, 0, 10)}, ask(mem=0, pct=10, cores=20), {}, ["dev-0"], "",
                 id="memory percentage"),
    pytest.param([gpu("dev-0", 0, 128, count=2)], {"dev-0": (1, 0, 0)}, ask(mem=64),
                 {"hami.io/gpu-scheduler-policy": "mutex"}, None, "1/1 ExclusiveDeviceAllocateConflict",
                 id="mutex policy rejects used device"),
    pytest.param([gpu("dev-0", 0), gpu("dev-1", 1), gpu("dev-2", 2)], {"dev-0": (100, 0, 0)}, ask(nums=3, cores=20),
                 {}, None, "1/3 CardTimeSlicingExhausted, 2/3 AllocatedCardsInsufficientRequest",
                 id="partial allocation"),
    pytest.param([gpu("dev-0", 0, health=False)], {}, ask(), {}, None, "1/1 CardNotHealth", id="card not healthy"),
])
def test_fit_as_hami(devices: list[DeviceInfo], usage: dict, request_: ContainerRequest, annotations: dict,
                     want: list[str] | None, reason: str) -> None:
    decision = fit(VENDORS, devices, request_, usage, annotations)
    if want is None:
        assert decision.node is None and decision.reasons == {"n": reason}
    else:
        assert uuids(decision) == [want]


# ---- one device per pod (HAMi's customFilterRule) -------------------------------------------


def test_later_containers_go_to_the_gpu_the_first_got_even_under_spread() -> None:
    state = cluster(VENDORS, mt_node("a", 2))
    pod = pod_obj("p", ctr("one", limits={COUNT: "1", MEM: "8", CORES: "4"}),
                  ctr("two", limits={COUNT: "1", MEM: "8", CORES: "4"}))
    decision = place(state, VENDORS, pod)
    assert decision.node == "a"
    first, second = uuids(decision)
    assert first == second  # spread alone would have taken the idle GPU for the second container


def test_no_room_on_the_pods_gpu_fails_with_the_custom_filter_reason() -> None:
    state = cluster(VENDORS, mt_node("a", 2))
    pod = pod_obj("p", ctr("one", limits={COUNT: "1", MEM: "64", CORES: "4"}),
                  ctr("two", limits={COUNT: "1", MEM: "64", CORES: "4"}))
    decision = place(state, VENDORS, pod)
    assert decision.node is None
    assert decision.reasons == {"a": "1/2 CardInsufficientMemory, 1/2 CardNotFoundCustomFilterRule"}


def test_init_and_app_containers_are_held_to_their_own_phase_as_hami() -> None:
    # HAMi fits init containers and app containers apart: an app container does not have to use
    # the GPU an init container had, but a second init container does.
    state = cluster(VENDORS, mt_node("a", 3))
    pod = pod_obj("p", ctr("main", limits={COUNT: "2"}), init=(ctr("prep", limits={COUNT: "1", MEM: "8"}),))
    decision = place(state, VENDORS, pod)
    assert decision.node == "a" and len(uuids(decision)[1]) == 2
    pod = pod_obj("q", ctr("main"), init=(ctr("one", limits={COUNT: "1", MEM: "8"}),
                                          ctr("two", limits={COUNT: "1", MEM: "8"})))
    decision = place(cluster(VENDORS, mt_node("a", 3)), VENDORS, pod)  # spread GPUs: only the rule keeps it
    first, second, _ = uuids(decision)
    assert first == second


# ---- annotations: HAMi's Test_PatchAnnotations ----------------------------------------------


def test_decision_writes_allocated_index_time_and_node_but_no_to_allocate() -> None:
    devices = {"test1": DeviceInfo(id="test1", count=100, devmem=8192, devcore=16, type="Mthreads", index=0,
                                   vendor="Mthreads")}
    written = MT.decision_annotations(PodDecisionInput(
        node="node-1", allocation=((ContainerDevice("test1", "Mthreads", 1000, 1),),), devices=devices,
        annotations={}, container_names=("c",), now_ns=1234))
    assert written == {
        "hami.io/mthreads-vgpu-devices-allocated": "test1,Mthreads,1000,1:;",
        "mthreads.com/gpu-index": "0",
        "mthreads.com/predicate-time": "1234",
        "mthreads.com/predicate-node": "node-1",
    }


def test_gpu_index_is_the_last_container_with_devices() -> None:
    state = cluster(VENDORS, mt_node("a", 4))
    pod = pod_obj("q", ctr("one", limits={COUNT: "1", MEM: "8"}), ctr("none"),
                  ctr("two", limits={COUNT: "1", MEM: "8"}))
    decision = place(state, VENDORS, pod)
    written = decision_annotations(VENDORS, state, pod, decision)
    last = uuids(decision)[2]
    assert written["mthreads.com/gpu-index"] == ",".join(uuid.rsplit("-", 1)[1] for uuid in last)
    assert written["hami.io/mthreads-vgpu-devices-allocated"].count(";") == 3
    assert "hami.io/mthreads-vgpu-devices-to-allocate" not in written


def test_several_gpus_after_a_one_gpu_container_cannot_fit() -> None:
    # Every later device must be the one the pod already holds: two of them cannot be.
    state = cluster(VENDORS, mt_node("a", 4))
    pod = pod_obj("p", ctr("one", limits={COUNT: "1", MEM: "8"}), ctr("two", limits={COUNT: "2"}))
    decision = place(state, VENDORS, pod)
    assert decision.node is None
    # (The webhook made the second container two whole GPUs; the pod's GPU has 8 units in use.)
    assert decision.reasons == {"a": "1/4 CardInsufficientMemory, 3/4 CardNotFoundCustomFilterRule"}


# ---- restart and hami schedule --------------------------------------------------------------


def test_restart_rebuilds_usage_from_the_allocated_annotation() -> None:
    nodes = [mt_node("a", 2), mt_node("b", 2)]
    state = cluster(VENDORS, *nodes)
    pods = [pod_obj(f"p{i}", ctr(limits={COUNT: "1", MEM: "16", CORES: "4"})) for i in range(3)]
    pods.append(pod_obj("whole", ctr(limits={COUNT: "2"})))
    placed = [(p, place(state, VENDORS, p)) for p in pods]
    assert all(d.node for _, d in placed)
    assert usage_of(restarted(VENDORS, nodes, placed)) == usage_of(state)


def test_hami_schedule_applies_the_webhook_rewrite_first(tmp_path: object) -> None:
    objects = [mt_node("a", 2), mt_node("b", 2),
               pod_obj("share", ctr(limits={COUNT: "1", MEM: "8", CORES: "4"})),
               pod_obj("two", ctr(limits={COUNT: "2", MEM: "2", CORES: "1"})),
               pod_obj("bad", ctr(limits={COUNT: "1", MEM: "5"}))]
    decisions = hami_schedule(tmp_path, objects)
    assert set(decisions) == {"t/share", "t/two"}  # the webhook would deny "bad"
    assert decisions["t/share"]["containers"][0][0]["memory"] == 8 * 512
    assert decisions["t/share"]["containers"][0][0]["type"] == "Mthreads"
    # Two GPUs become two whole GPUs (16 cores, 96 units each): only the idle node has them.
    two = decisions["t/two"]
    assert two["node"] == "b"
    assert [(d["memory"], d["cores"]) for d in two["containers"][0]] == [(49152, 16), (49152, 16)]


def test_admitted_pod_asks_what_the_webhook_wrote() -> None:
    pod = pod_obj("p", ctr(limits={COUNT: "3"}))
    assert admitted(VENDORS, pod)["metadata"]["annotations"] == {"mthreads.com/request-gpu-num": "3"}
    [ask_] = request(VENDORS, pod).containers
    assert (ask_.nums, ask_.memreq, ask_.coresreq) == (3, 96 * 512, 16)


def test_admission_review_patch() -> None:
    verdict = mutate(pod_obj("p", ctr(limits={COUNT: "2"})), VENDORS)
    assert verdict.allowed
    ops = {op["path"]: op for op in verdict.patch}
    assert ops["/spec/containers"]["value"][0]["resources"]["limits"] == {COUNT: "2", MEM: "192", CORES: "32"}
    assert ops["/metadata/annotations"]["value"] == {"mthreads.com/request-gpu-num": "2"}
    assert ops["/spec/schedulerName"]["value"] == "hami-scheduler"
    denied = mutate(pod_obj("p", ctr(limits={COUNT: "1", MEM: "3"})), VENDORS)
    assert not denied.allowed and "valid values are [2, 4, 8, 16, 32, 64, 96]" in denied.message
