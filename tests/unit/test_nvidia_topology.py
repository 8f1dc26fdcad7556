"""The topology-aware GPU policy: links measured as HAMi measures them, the set of GPUs HAMi's
rule picks, and our link-aware node scoring (a multi-GPU pod goes where its set is best linked;
binpack still packs when link quality ties).

Golden cases are HAMi's test tables (pkg/device/nvidia/{calculate_score,links,device}_test.go).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.node_register import encode_node_devices
from hami.annotations.node_score import decode_pair_scores, encode_pair_scores
from hami.annotations.selectors import Policy, gpu_policy_filters, pod_policies
from hami.deviceplugin import topology
from hami.deviceplugin.backend import NVLINK_DEVICE_GPU, NVLINK_DEVICE_SWITCH, BackendError, NvLink
from hami.deviceplugin.fake import FakeBackend
from hami.model import DeviceInfo, NodeDevices
from hami.scheduler.engine import PolicyDefaults, schedule
from hami.scheduler.state import ClusterState
from hami.vendors import nvidia_links as links
from hami.vendors.registry import default_vendors
from tests.unit.engine_helpers import container, devices_of, gpu, node, place, pod

TOPO = {keys.GPU_SCHEDULER_POLICY: "topology-aware"}
BUS = "00000000:2A:00.0"
SWITCH = "00000000:07:00.0"


# ---- measurement (links.go, calculate_score.go) ------------------------------------------

def gpu_links(n: int, to: str) -> list[NvLink]:
    return [NvLink(to, NVLINK_DEVICE_GPU) for _ in range(n)]


def switch_links(n: int) -> list[NvLink]:
    return [NvLink(SWITCH, NVLINK_DEVICE_SWITCH) for _ in range(n)]


@pytest.mark.parametrize(("mine", "theirs", "count"), [
    (gpu_links(18, BUS), [], 18),  # direct_connect_18_links
    (gpu_links(4, BUS), [], 4),  # direct_connect_partial
    (switch_links(18), switch_links(18), 18),  # nvswitch_full_mesh_18
    (switch_links(18), switch_links(4), 4),  # nvswitch_asymmetric
    (switch_links(4), switch_links(18), 4),  # nvswitch_asymmetric_swapped
    (switch_links(18), [], 0),  # one_side_no_nvswitch
    ([], switch_links(18), 0),  # one_side_no_nvswitch_swapped
    ([], [], 0),  # no_nvlink_anywhere
    (gpu_links(2, "00000000:05:00.0") + gpu_links(1, BUS.lower()), [], 1),  # counts only the peer's bus ID
    (gpu_links(19, BUS), [], 0),  # beyond 18 links: unknown (nvlinkCountToType)
    ([NvLink(None, NVLINK_DEVICE_SWITCH)] * 3, switch_links(3), 0),  # no remote PCI known: no NVSwitch check
])
def test_nvlink_count(mine: list[NvLink], theirs: list[NvLink], count: int) -> None:
    assert topology.nvlink_count(mine, theirs, BUS) == count


def fake(devices: list[dict[str, Any]]) -> FakeBackend:
    backend = FakeBackend(data={"devices": devices})
    backend.init()
    return backend


def quad(matrix: list[list[int]], **extra: Any) -> list[dict[str, Any]]:
    """Four GPUs on one NUMA node whose NVLink counts are `matrix` (row: from, column: to)."""
    uuids = [f"gpu{i}" for i in range(len(matrix))]
    return [{"uuid": uuids[i], "memory": 16384, "nvlink": [uuids[j] for j, n in enumerate(row) for _ in range(n)],
             **extra} for i, row in enumerate(matrix)]


def test_pair_scores_of_a_linked_quad() -> None:  # Test_calculateGPUScore ("nvlink test"), plus PCIe NODE (20)
    backend = fake(quad([[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 2], [2, 1, 2, 0]]))
    measured = topology.measure(backend, backend.devices())
    assert measured.asymmetric == ()
    assert measured.scores == {
        "gpu0": {"gpu1": 120, "gpu2": 120, "gpu3": 220},
        "gpu1": {"gpu0": 120, "gpu2": 220, "gpu3": 120},
        "gpu2": {"gpu0": 120, "gpu1": 220, "gpu3": 220},
        "gpu3": {"gpu0": 220, "gpu1": 120, "gpu2": 220},
    }


def test_asymmetric_links_score_zero() -> None:  # Test_calculateGPUPairScore_asymmetric
    backend = fake(quad([[0, 4], [0, 0]]))  # gpu0 sees 4 NVLinks to gpu1, gpu1 none back
    measured = topology.measure(backend, backend.devices())
    assert measured.scores == {"gpu0": {"gpu1": 0}, "gpu1": {"gpu0": 0}}
    assert measured.asymmetric == (("gpu0", "gpu1"),)


@pytest.mark.parametrize(("level", "score"), [("INTERNAL", 60), ("SINGLE", 50), ("MULTIPLE", 40), ("HOSTBRIDGE", 30),
                                              ("NODE", 20), ("SYSTEM", 10)])
def test_pcie_levels(level: str, score: int) -> None:
    backend = fake([{"uuid": "a", "memory": 1, "topology": {"b": level}}, {"uuid": "b", "memory": 1, "numa": 1}])
    assert topology.measure(backend, backend.devices()).scores["b"] == {"a": score}


def test_nvswitch_system() -> None:
    backend = fake([{"uuid": f"g{i}", "memory": 1, "nvlink": ["switch"] * 18} for i in range(3)])
    assert topology.measure(backend, backend.devices()).scores["g0"] == {"g1": 1820, "g2": 1820}


def test_a_failing_link_query_fails_the_measurement() -> None:  # dev1_nvlink_state_error
    backend = fake([{"uuid": "a", "memory": 1, "nvlinkError": "NVML_ERROR_UNKNOWN"}, {"uuid": "b", "memory": 1}])
    with pytest.raises(BackendError, match="NVML_ERROR_UNKNOWN"):
        topology.measure(backend, backend.devices())


def test_score_annotation_codec() -> None:  # TestGetNodeDevices_PairScores / _InvalidPairScores
    text = encode_pair_scores({"GPU-0": {"GPU-1": 100}, "GPU-1": {"GPU-0": 100}})
    assert json.loads(text) == [{"uuid": "GPU-0", "score": {"GPU-1": 100}}, {"uuid": "GPU-1", "score": {"GPU-0": 100}}]
    assert decode_pair_scores(text) == {"GPU-0": {"GPU-1": 100}, "GPU-1": {"GPU-0": 100}}
    for bad in ("not-valid-json", '{"uuid":"x"}', '[{"uuid":"x","score":{"y":"1"}}]'):
        with pytest.raises(AnnotationError):
            decode_pair_scores(bad)


def node_object(name: str, devices: list[DeviceInfo], scores: dict[str, dict[str, int]] | str | None) -> dict:
    annotations = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}
    if scores is not None:
        annotations[keys.NODE_NVIDIA_SCORE] = scores if isinstance(scores, str) else encode_pair_scores(scores)
    return {"metadata": {"name": name, "annotations": annotations}}


def test_node_devices_carry_their_scores() -> None:
    obj = node_object("n", [gpu("GPU-0"), gpu("GPU-1")], {"GPU-0": {"GPU-1": 100}, "GPU-1": {"GPU-0": 100}})
    registered, warnings = default_vendors().registered_node(obj)
    assert warnings == [] and registered is not None
    assert [d.pair_scores for d in registered.devices] == [{"GPU-1": 100}, {"GPU-0": 100}]
    registered, warnings = default_vendors().registered_node(node_object("n", [gpu("GPU-0")], "not-valid-json"))
    assert registered is None and keys.NODE_NVIDIA_SCORE in warnings[0]


# ---- the choice (device.go Fit with topology-aware) ----------------------------------------

SCORES = {"dev-0": {"dev-1": 100, "dev-2": 200}, "dev-1": {"dev-0": 100, "dev-2": 150},
          "dev-2": {"dev-0": 200, "dev-1": 150}}
NEGATIVE = {"dev-0": {"dev-1": -5, "dev-2": -3}, "dev-1": {"dev-0": -5, "dev-2": -1},
            "dev-2": {"dev-0": -3, "dev-1": -1}}


def scored_node(scores: dict[str, dict[str, int]], name: str = "n", used: int = 0) -> NodeDevices:
    return node(name, *(gpu(u, mem=8192, pair_scores=scores.get(u, {})) for u in sorted(scores)))


def test_exact_match_takes_all() -> None:  # TestFit_TopologyExactMatch
    state = ClusterState([node("n", gpu("dev-0", mem=8192), gpu("dev-1", mem=8192))])
    assert sorted(devices_of(schedule(state, pod("p", container(gpu=2, mem=100, cores=10), annotations=TOPO)))[0]) \
        == ["dev-0", "dev-1"]


@pytest.mark.parametrize(("scores", "nums", "expected"), [
    (SCORES, 1, {"dev-1"}),  # TestFit_TopologyWorstSingleCard
    (SCORES, 2, {"dev-0", "dev-2"}),  # TestFit_TopologyBestCombination
    (NEGATIVE, 1, {"dev-0"}),  # TestFit_TopologyNegativeScores/SingleGPU
    (NEGATIVE, 2, {"dev-1", "dev-2"}),  # TestFit_TopologyNegativeScores/MultiGPU
])
def test_hami_choice(scores: dict[str, dict[str, int]], nums: int, expected: set[str]) -> None:
    state = ClusterState([scored_node(scores)])
    d = schedule(state, pod("p", container(gpu=nums, mem=100, cores=10), annotations=TOPO))
    assert set(devices_of(d)[0]) == expected


def test_zero_scores_still_fit() -> None:  # TestFit_TopologyBestCombinationZeroScores
    zero = {u: {v: 0 for v in SCORES if v != u} for u in SCORES}
    d = schedule(ClusterState([scored_node(zero)]), pod("p", container(gpu=2, mem=100, cores=10), annotations=TOPO))
    assert len(devices_of(d)[0]) == 2


# TestGenerateCombinations, TestComputeWorstSingleCard, TestComputeBestCombination
def test_combination_helpers() -> None:
    assert links.worst_single(SCORES, ["dev-0", "dev-1", "dev-2"]) == 1
    assert links.best_set(SCORES, ["dev-0", "dev-1", "dev-2"], 2) == [0, 2]
    assert links.set_score(SCORES, ["dev-0", "dev-1", "dev-2"]) == 450
    many = {f"g{i}": {f"g{j}": (100 if (i < 8) == (j < 8) else 10) for j in range(24) if j != i} for i in range(24)}
    assert links.best_set(many, sorted(many, key=lambda u: int(u[1:])), 8) == list(range(8))  # greedy past 20000 sets


def test_policy_words() -> None:
    assert pod_policies(TOPO, Policy.BINPACK, Policy.SPREAD) == (Policy.BINPACK, Policy.TOPOLOGY_AWARE)
    both = {keys.GPU_SCHEDULER_POLICY: "binpack,topology-aware"}
    assert pod_policies(both, Policy.BINPACK, Policy.SPREAD)[1] is Policy.BINPACK
    assert gpu_policy_filters(both) == {"topology-aware"}
    assert gpu_policy_filters({}, Policy.TOPOLOGY_AWARE) == {"topology-aware"}
    assert gpu_policy_filters({keys.GPU_SCHEDULER_POLICY: "spread"}, Policy.TOPOLOGY_AWARE) == frozenset()
    with pytest.raises(AnnotationError, match="binpack, spread"):
        pod_policies({keys.NODE_SCHEDULER_POLICY: "topology-aware"}, Policy.BINPACK, Policy.SPREAD)


# ---- scenarios on real topologies ----------------------------------------------------------

# DGX-1 with V100s (nvidia-smi topo -m): a hybrid cube mesh; NV2 = two NVLinks, 0 = none.
DGX1 = [
    [0, 1, 1, 2, 2, 0, 0, 0],
    [1, 0, 2, 1, 0, 2, 0, 0],
    [1, 2, 0, 2, 0, 0, 1, 0],
    [2, 1, 2, 0, 0, 0, 0, 1],
    [2, 0, 0, 0, 0, 1, 1, 2],
    [0, 2, 0, 0, 1, 0, 2, 1],
    [0, 0, 1, 0, 1, 2, 0, 2],
    [0, 0, 0, 1, 2, 1, 2, 0],
]


def dgx1_node(name: str, prefix: str) -> NodeDevices:
    """A DGX-1 as the device plugin registers it: its links measured through the fake NVML."""
    devices = []
    for i, row in enumerate(DGX1):
        devices.append({"uuid": f"{prefix}{i}", "name": "Tesla V100-SXM2-16GB", "memory": 16384, "numa": i // 4,
                        "nvlink": [f"{prefix}{j}" for j, n in enumerate(row) for _ in range(n)],
                        "topology": {f"{prefix}{i ^ 1}": "SINGLE"}})
    backend = fake(devices)
    scores = topology.measure(backend, backend.devices()).scores
    registered = [gpu(g.uuid, mem=16384, dtype="NVIDIA-Tesla V100-SXM2-16GB", numa=g.numa, index=g.index)
                  for g in backend.devices()]
    found, warnings = default_vendors().registered_node(node_object(name, registered, scores))
    assert found is not None and not warnings
    return found


def state_with(*nodes: NodeDevices) -> ClusterState:
    return ClusterState(list(nodes))


def weakest(state: ClusterState, decision) -> int:
    scores = {d.id: d.pair_scores for d in state.devices}
    return links.weakest_link(scores, [d.uuid for d in decision.allocation[0]])


def test_dgx1_four_gpus_get_a_fully_linked_quad() -> None:
    state = state_with(dgx1_node("dgx", "g"))
    place(state, pod("small", container(gpu=1, mem=1000, cores=10), annotations={keys.USE_GPUUUID: "g7"}))
    d = schedule(state, pod("p", container(gpu=4, mem=1000), annotations=TOPO))
    # Both quads sum to the same score; HAMi's rule takes the first in its walk, sharing g7.
    assert sorted(devices_of(d)[0]) in (["g0", "g1", "g2", "g3"], ["g4", "g5", "g6", "g7"])
    assert weakest(state, d) >= 100  # every pair over NVLink
    plain = schedule(state, pod("p", container(gpu=4, mem=1000)))  # spread: the four least used, g3 to g6
    assert sorted(devices_of(plain)[0]) == ["g3", "g4", "g5", "g6"] and weakest(state, plain) == 10


def test_dgx1_two_gpus_get_a_double_link() -> None:
    state = state_with(dgx1_node("dgx", "g"))
    d = schedule(state, pod("p", container(gpu=2, mem=1000), annotations=TOPO))
    assert weakest(state, d) == 200 + 50  # NV2 and the same PCIe switch


def test_one_gpu_takes_the_one_whose_loss_hurts_least() -> None:
    """After a 4-GPU job took one quad, single-GPU pods leave the best-linked pair of the other."""
    state = state_with(dgx1_node("dgx", "g"))
    place(state, pod("quad", container(gpu=4, mem=16384), annotations=TOPO))
    taken = set()
    for i in range(2):
        d = place(state, pod(f"one{i}", container(gpu=1, mem=16384), annotations=TOPO))
        taken |= set(devices_of(d)[0])
    left = schedule(state, pod("pair", container(gpu=2, mem=1000), annotations=TOPO))
    assert not taken & set(devices_of(left)[0])
    assert weakest(state, left) == 250  # the NV2 pair on one PCIe switch is still whole


def test_link_aware_node_choice() -> None:
    """Binpack prefers the fuller node; a 4-GPU topology-aware pod goes to the node where it gets
    an NVLink set. HAMi's node score alone sends it to the fuller node, across PCIe."""
    full, empty = dgx1_node("a-full", "a"), dgx1_node("b-empty", "b")
    state = state_with(full, empty)
    # Fill node a so that its four free GPUs are the two PCIe-switch pairs across the quads.
    for uuid in ("a2", "a3", "a6", "a7"):
        place(state, pod(f"hold-{uuid}", container(gpu=1, mem=16000),
                         annotations={keys.USE_GPUUUID: uuid}), node_policy=Policy.BINPACK)
    ours = schedule(state, pod("p", container(gpu=4, mem=1000), annotations=TOPO))
    assert ours.node == "b-empty" and weakest(state, ours) >= 100
    # Without the topology policy the node score decides: the fuller node, across CPUs.
    hami = schedule(state, pod("p", container(gpu=4, mem=1000)))
    assert hami.node == "a-full" and weakest(state, hami) == 10
    # Spread also wants the better-linked node (the sign follows the policy).
    spread = schedule(state, pod("p", container(gpu=4, mem=1000), annotations=TOPO),
                      PolicyDefaults(node_policy=Policy.SPREAD))
    assert spread.node == "b-empty"


def test_binpack_still_packs_when_links_tie() -> None:
    state = state_with(dgx1_node("a", "a"), dgx1_node("b", "b"))
    place(state, pod("small", container(gpu=1, mem=1000, cores=10), annotations={keys.USE_GPUUUID: "b7"}))
    d = schedule(state, pod("p", container(gpu=2, mem=1000), annotations=TOPO))
    assert d.node == "b"  # both offer an NV2 pair: the fuller node wins, as binpack wants
    d = schedule(state, pod("p", container(gpu=2, mem=1000), annotations=TOPO),
                 PolicyDefaults(node_policy=Policy.SPREAD))
    assert d.node == "a"


def test_default_gpu_policy_topology_aware() -> None:
    state = state_with(dgx1_node("dgx", "g"))
    place(state, pod("small", container(gpu=1, mem=1000, cores=10), annotations={keys.USE_GPUUUID: "g7"}))
    defaults = PolicyDefaults(gpu_policy=Policy.TOPOLOGY_AWARE)
    d = schedule(state, pod("p", container(gpu=4, mem=1000)), defaults)
    assert weakest(state, d) >= 100
    d = schedule(state, pod("p", container(gpu=4, mem=1000), annotations={keys.GPU_SCHEDULER_POLICY: "spread"}),
                 defaults)
    assert weakest(state, d) < 100  # the pod's own policy replaces the default


def test_nodes_without_scores_are_chosen_by_hami_score() -> None:
    plain = node("plain", *(gpu(f"p{i}", mem=16384) for i in range(4)))
    state = state_with(plain)
    d = schedule(state, pod("p", container(gpu=2, mem=1000), annotations=TOPO))
    assert d.node == "plain" and len(devices_of(d)[0]) == 2


# ---- the fill experiment (hami simulate --topology) -----------------------------------------

def test_fill_experiment_sets_and_classes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from hami.sim import topology as sim
    from hami.sim.trace import Tasks

    assert [sim.link_class(s) for s in (250, 120, 50, 20, 10, 0)] == [
        "NVLink", "NVLink", "PCIe switch", "same CPU", "across CPUs", "across CPUs"]
    num = [1] * 24 + [2] * 8 + [4] * 2
    tasks = Tasks(source="test", names=[f"t{i}" for i in range(len(num))], cpu_milli=np.zeros(len(num), np.int64),
                  memory_mib=np.zeros(len(num), np.int64), num_gpu=np.asarray(num, np.int64),
                  gpu_milli=np.full(len(num), 1000, np.int64), gpu_spec=[""] * len(num))
    report = sim.run_experiment(tasks, "test", nodes=6, seeds=2, until=0.9, split_count=10, out=tmp_path)
    policies = report["policies"]
    ours, hami, binpack = (policies[n]["sets"]["all"] for n in ("topology-aware (ours)", "topology-aware (HAMi)",
                                                                   "binpack"))
    assert ours["count"] == hami["count"] == binpack["count"] > 0
    assert ours["NVLink"] > hami["NVLink"]  # the node with an NVLink set, not the fullest one
    assert hami["across CPUs"] <= binpack["across CPUs"]
    assert (tmp_path / "topology.json").is_file()


@pytest.mark.parametrize("mixed", [False, True])
def test_node_scores_at_once_equal_the_walk(mixed: bool) -> None:
    """The vectorised link score of every node equals placing the pod on each node and scoring
    the allocation (random usage, both node policies, binpack and spread GPU orders; NVIDIA alone
    and beside another vendor's devices)."""
    import numpy as np

    from hami.scheduler.engine import PodContext, fit_pod_on_node

    rng = np.random.default_rng(7)
    nodes = [dgx1_node(f"n{i}", f"n{i}g") for i in range(6)]
    if mixed:
        dcu = DeviceInfo(id="DCU-0", count=4, devmem=16384, devcore=100, type="DCU-Z100", vendor="DCU")
        nodes.append(node("dcu", dcu))
        nodes[0] = NodeDevices(name=nodes[0].name, devices=(*nodes[0].devices, dcu.__class__(
            **{**dcu.__dict__, "id": "DCU-1"})))
    state = state_with(*nodes)
    for k in range(40):
        uuid = f"n{int(rng.integers(6))}g{int(rng.integers(8))}"
        place(state, pod(f"fill{k}", container(gpu=1, mem=int(rng.integers(1000, 16000)), cores=10),
                         annotations={keys.USE_GPUUUID: uuid}))
    vendor = state.vendors["NVIDIA"]
    for nums in (2, 3, 4):
        for node_policy in (Policy.BINPACK, Policy.SPREAD):
            for gpu_policy in ("topology-aware", "binpack,topology-aware"):
                request = pod("p", container(gpu=nums, mem=2000), annotations={keys.GPU_SCHEDULER_POLICY: gpu_policy})
                ctx = PodContext.of(request, PolicyDefaults(node_policy=node_policy))
                everywhere = np.arange(len(state.nodes), dtype=np.int64)
                fast = vendor.node_scores(ctx, state, everywhere)
                assert fast is not None
                for where in everywhere.tolist():
                    if state.names[where] == "dcu":
                        continue
                    allocation, _ = fit_pod_on_node(state, where, ctx, ctx.static_codes(state))
                    slow = vendor.score_node(ctx, state, where, allocation) if allocation else 0.0
                    assert fast[where] == slow, (nums, node_policy, gpu_policy, where)
