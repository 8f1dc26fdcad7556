"""One scenario per scheduling rule of HAMi (see HAMI-CONTRACT.md and docs/compatibility.md)."""

from __future__ import annotations

import pytest

from hami.annotations.errors import AnnotationError
from hami.annotations.selectors import Policy
from hami.scheduler.engine import schedule
from hami.scheduler.state import ClusterState
from tests.unit.engine_helpers import container, devices_of, gpu, node, place, pod

BINPACK, SPREAD = Policy.BINPACK, Policy.SPREAD


def test_memory_limit_and_reason() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=10000), gpu("g1", mem=10000))])
    d = schedule(state, pod("p", container(gpu=1, mem=12000)))
    assert d.node is None
    assert d.reasons == {"n1": "2/2 CardInsufficientMemory"}
    assert schedule(state, pod("p", container(gpu=1, mem=10000))).node == "n1"


def test_memory_accumulates_across_pods() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=10000))])
    assert place(state, pod("a", container(gpu=1, mem=6000, cores=10))).node == "n1"
    second = place(state, pod("b", container(gpu=1, mem=6000, cores=10)))
    assert second.node is None and second.reasons["n1"] == "1/1 CardInsufficientMemory"
    assert place(state, pod("c", container(gpu=1, mem=4000, cores=10))).node == "n1"


def test_percentage_is_of_each_device() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=16000), gpu("g1", mem=32000))])
    d = schedule(state, pod("p", container(gpu=2, pct=25, cores=0)))
    mem = {dev.uuid: dev.usedmem for dev in d.allocation[0]}
    assert mem == {"g0": 4000, "g1": 8000}


def test_no_memory_asked_means_whole_card_and_exclusive() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=16000))])
    d = place(state, pod("p", container(gpu=1)))
    assert [(x.usedmem, x.usedcores) for x in d.allocation[0]] == [(16000, 100)]
    assert place(state, pod("q", container(gpu=1, mem=10, cores=0))).reasons["n1"] == "1/1 CardInsufficientMemory"


def test_default_memory_from_config() -> None:
    from hami.config import NvidiaConfig

    cfg = NvidiaConfig(defaultMemory=3000, defaultCores=5)
    request = pod("p", container(gpu=1, cores=50), config=cfg)
    assert (request.containers[0].memreq, request.containers[0].coresreq) == (3000, 50)
    request = pod("p", container(mem=2000), config=cfg)  # only memory -> count 1, default cores
    assert (request.containers[0].nums, request.containers[0].coresreq) == (1, 5)


def test_cores_limit() -> None:
    state = ClusterState([node("n1", gpu("g0"))])
    place(state, pod("a", container(gpu=1, mem=100, cores=80)))
    d = schedule(state, pod("b", container(gpu=1, mem=100, cores=30)))
    assert d.reasons == {"n1": "1/1 CardInsufficientCore"}
    assert schedule(state, pod("c", container(gpu=1, mem=100, cores=20))).node == "n1"


def test_split_count_limits_tasks() -> None:
    state = ClusterState([node("n1", gpu("g0", count=2))])
    for name in "ab":
        assert place(state, pod(name, container(gpu=1, mem=100, cores=1))).node == "n1"
    assert place(state, pod("c", container(gpu=1, mem=100, cores=1))).reasons == {"n1": "1/1 CardTimeSlicingExhausted"}


def test_exclusive_cores_take_no_one_else() -> None:
    state = ClusterState([node("n1", gpu("g0"), gpu("g1"))])
    place(state, pod("a", container(gpu=1, mem=100, cores=10)))  # spread: lands on g1 (higher index)
    exclusive = place(state, pod("x", container(gpu=1, mem=100, cores=100)))
    assert devices_of(exclusive) == [["g0"]]
    blocked = schedule(state, pod("y", container(gpu=2, mem=100, cores=100)))
    assert blocked.reasons == {"n1": "2/2 CardInsufficientCore"}
    # A device used by a zero-core task still cannot be taken exclusively.
    shared = ClusterState([node("n3", gpu("g0"))])
    place(shared, pod("a", container(gpu=1, mem=100, cores=0)))
    assert schedule(shared, pod("x", container(gpu=1, mem=100, cores=100))).reasons == {
        "n3": "1/1 ExclusiveDeviceAllocateConflict"
    }
    # A zero-core task cannot join a device whose cores are all taken.
    zero = schedule(state, pod("z", container(gpu=1, mem=100, cores=0)))
    assert devices_of(zero) == [["g1"]]
    state2 = ClusterState([node("n2", gpu("g0"))])
    place(state2, pod("x", container(gpu=1, mem=100, cores=100)))
    assert schedule(state2, pod("z", container(gpu=1, mem=100, cores=0))).reasons == {
        "n2": "1/1 CardComputeUnitsExhausted"
    }


def test_unhealthy_and_cordoned_devices_are_skipped() -> None:
    state = ClusterState([node("n1", gpu("g0", health=False), gpu("g1"), cordoned=("g1",))])
    d = schedule(state, pod("p", container(gpu=1, mem=100)))
    assert d.node is None
    assert d.reasons == {"n1": "1/2 CardNotHealth, 1/2 CardCordoned"}


def test_type_allow_and_deny_lists() -> None:
    state = ClusterState(
        [
            node("a100", gpu("g0", dtype="NVIDIA-A100-SXM4-80GB", mem=80000)),
            node("t4", gpu("g1", dtype="NVIDIA-Tesla-T4", mem=15000)),
        ]
    )
    use = pod("p", container(gpu=1, mem=100), annotations={"nvidia.com/use-gputype": "a100, H100"})
    d = schedule(state, use)
    assert d.node == "a100" and d.reasons == {"t4": "1/1 CardTypeMismatch"}
    deny = pod("q", container(gpu=1, mem=100), annotations={"nvidia.com/nouse-gputype": "A100"})
    assert schedule(state, deny).node == "t4"


def test_uuid_allow_and_deny_lists() -> None:
    state = ClusterState([node("n1", gpu("GPU-1"), gpu("GPU-2"), gpu("GPU-3"))])
    use = pod("p", container(gpu=1, mem=100), annotations={"nvidia.com/use-gpuuuid": "GPU-1"})
    assert devices_of(schedule(state, use)) == [["GPU-1"]]
    deny = pod("q", container(gpu=2, mem=100), annotations={"nvidia.com/nouse-gpuuuid": "GPU-3,GPU-2"})
    d = schedule(state, deny)
    assert d.node is None and d.reasons == {"n1": "2/3 CardUuidMismatch, 1/3 AllocatedCardsInsufficientRequest"}


def test_several_devices_per_container_and_node_insufficient_device() -> None:
    state = ClusterState([node("n1", gpu("g0"), gpu("g1")), node("n2", gpu("g2"))])
    d = schedule(state, pod("p", container(gpu=2, mem=1000)))
    assert d.node == "n1" and sorted(devices_of(d)[0]) == ["g0", "g1"]
    assert d.reasons == {"n2": "1/1 NodeInsufficientDevice"}


def test_several_containers_share_the_node_cumulatively() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=10000))])
    fits = schedule(state, pod("p", container("a", gpu=1, mem=5000), container("b", gpu=1, mem=5000)))
    assert devices_of(fits) == [["g0"], ["g0"]]
    too_much = schedule(state, pod("q", container("a", gpu=1, mem=6000), container("b", gpu=1, mem=5000)))
    assert too_much.node is None and too_much.reasons == {"n1": "1/1 CardInsufficientMemory"}


def test_init_containers_use_the_node_as_it_is() -> None:
    state = ClusterState([node("n1", gpu("g0", mem=10000))])
    request = pod(
        "p", container("app", gpu=1, mem=8000, cores=10), init=(container("init", gpu=1, mem=9000, cores=10),)
    )
    d = place(state, request)
    assert devices_of(d) == [["g0"], ["g0"]]
    # The pod holds max(init 9000, app 8000) = 9000 MiB, not the sum.
    assert int(state.usedmem[0]) == 9000 and int(state.used[0]) == 1


def test_node_binpack_and_spread() -> None:
    def cluster() -> ClusterState:
        state = ClusterState([node("busy", gpu("g0")), node("idle", gpu("g1"))])
        place(state, pod("existing", container(gpu=1, mem=12000, cores=50)), node_policy=BINPACK)
        return state

    assert schedule(cluster(), pod("p", container(gpu=1, mem=100))).node == "busy"
    from hami.scheduler.engine import PolicyDefaults

    assert schedule(cluster(), pod("p", container(gpu=1, mem=100)), PolicyDefaults(node_policy=SPREAD)).node == "idle"
    annotated = pod("p", container(gpu=1, mem=100), annotations={"hami.io/node-scheduler-policy": "spread"})
    assert schedule(cluster(), annotated).node == "idle"


def test_gpu_binpack_and_spread() -> None:
    state = ClusterState([node("n1", gpu("g0"), gpu("g1"), gpu("g2"))])
    place(state, pod("existing", container(gpu=1, mem=12000, cores=10)), gpu_policy=BINPACK)  # ties -> g2
    assert int(state.usedmem[2]) == 12000
    spread = schedule(state, pod("p", container(gpu=1, mem=100)))
    assert devices_of(spread) == [["g1"]]  # lowest score, tie between g0 and g1 -> higher index
    binpack = pod("q", container(gpu=1, mem=100), annotations={"hami.io/gpu-scheduler-policy": "binpack"})
    assert devices_of(schedule(state, binpack)) == [["g2"]]


def test_scoring_weights_change_the_device_choice() -> None:
    state = ClusterState([node("n1", gpu("g0", count=10), gpu("g1", count=10))])
    # g0: many light tasks; g1: one task with much memory.
    for i in range(4):
        state.add_pod(f"light{i}", "n1", ((_dev("g0", 100, 1),),))
    state.add_pod("heavy", "n1", ((_dev("g1", 20000, 1),),))
    by_memory = pod(
        "p",
        container(gpu=1, mem=100),
        annotations={
            "hami.io/gpu-scheduler-policy": "binpack",
            "hami.io/device-scoring-weights": "slot=0,core=0,memory=1",
        },
    )
    by_slots = pod(
        "q",
        container(gpu=1, mem=100),
        annotations={
            "hami.io/gpu-scheduler-policy": "binpack",
            "hami.io/device-scoring-weights": "slot=1,core=0,memory=0",
        },
    )
    assert devices_of(schedule(state, by_memory)) == [["g1"]]
    assert devices_of(schedule(state, by_slots)) == [["g0"]]


def _dev(uuid: str, mem: int, cores: int):  # type: ignore[no-untyped-def]
    from hami.model import ContainerDevice

    return ContainerDevice(uuid, "NVIDIA", mem, cores)


def test_node_ties_break_by_name_and_device_ties_by_higher_index() -> None:
    state = ClusterState([node("b", gpu("b0"), gpu("b1")), node("a", gpu("a0"), gpu("a1"))])
    d = schedule(state, pod("p", container(gpu=1, mem=100)))
    assert d.node == "a" and devices_of(d) == [["a1"]]


def test_numa_bind_keeps_devices_on_one_numa_node() -> None:
    state = ClusterState([node("n1", gpu("g0", numa=0), gpu("g1", numa=1), gpu("g2", numa=1))])
    bound = pod("p", container(gpu=2, mem=100), annotations={"nvidia.com/numa-bind": "true"})
    assert sorted(devices_of(schedule(state, bound))[0]) == ["g1", "g2"]
    state.add_pod("x", "n1", ((_dev("g2", 24000, 0),),))
    d = schedule(state, bound)
    assert d.node is None
    assert "NumaNotFit" in d.reasons["n1"]


def test_bad_policy_annotation_is_an_error() -> None:
    state = ClusterState([node("n1", gpu("g0"))])
    with pytest.raises(AnnotationError, match="node-scheduler-policy"):
        schedule(state, pod("p", container(gpu=1), annotations={"hami.io/node-scheduler-policy": "fastest"}))
    with pytest.raises(AnnotationError, match="device-scoring-weights"):
        schedule(state, pod("p", container(gpu=1), annotations={"hami.io/device-scoring-weights": "slot=x"}))


def test_candidate_nodes_restrict_the_choice() -> None:
    state = ClusterState([node("n1", gpu("g0")), node("n2", gpu("g1"))])
    assert schedule(state, pod("p", container(gpu=1, mem=1)), nodes=["n2"]).node == "n2"


def test_same_input_same_answer() -> None:
    def run() -> list[tuple[str | None, list[list[str]]]]:
        state = ClusterState([node(f"n{i}", gpu(f"n{i}-g0"), gpu(f"n{i}-g1")) for i in range(5)])
        return [
            (d.node, devices_of(d))
            for d in (place(state, pod(f"p{k}", container(gpu=1, mem=3000 + 100 * k, cores=20))) for k in range(30))
        ]

    assert run() == run()
