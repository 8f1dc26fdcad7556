"""The topology-aware fill experiment: how well linked the GPU sets of multi-GPU tasks are.

A cluster of 8-GPU nodes, half DGX-1-like (V100s in NVIDIA's hybrid cube mesh: NVLink between
some pairs, none between others) and half PCIe servers (two CPUs, four GPUs each, two GPUs per
PCIe switch). Each node's links are measured as the device plugin measures them (through the
fake NVML) and registered with `hami.io/node-nvidia-score`. Tasks drawn from a trace (default:
openb's multigpu50 mix) arrive until the GPU demand reaches `until` x capacity; nothing leaves.

Every placed task of two GPUs or more reports the weakest link of its set, in classes:
NVLink (every pair over NVLink), PCIe switch, same CPU, across CPUs. The policies compared, all
with HAMi's node policy binpack:
- binpack, spread: HAMi's GPU policies, blind to links;
- topology-aware (HAMi): HAMi's choice of set on the node that HAMi's node score picks;
- topology-aware (ours): the same choice, with the node chosen for its links first.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.annotations.node_score import encode_pair_scores
from hami.annotations.selectors import Policy
from hami.config import NvidiaConfig
from hami.deviceplugin import topology
from hami.deviceplugin.fake import FakeBackend
from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.sim.trace import Tasks
from hami.vendors.nvidia import Nvidia, link_quality
from hami.vendors.registry import VendorSet

GPU_MEMORY = 32768  # V100 32 GB
CLASSES = ("NVLink", "PCIe switch", "same CPU", "across CPUs")

# NVLinks between the GPUs of a DGX-1 (V100): nvidia-smi topo -m (NV1 / NV2; 0 = none).
DGX1_NVLINKS = (
    (0, 1, 1, 2, 2, 0, 0, 0),
    (1, 0, 2, 1, 0, 2, 0, 0),
    (1, 2, 0, 2, 0, 0, 1, 0),
    (2, 1, 2, 0, 0, 0, 0, 1),
    (2, 0, 0, 0, 0, 1, 1, 2),
    (0, 2, 0, 0, 1, 0, 2, 1),
    (0, 0, 1, 0, 1, 2, 0, 2),
    (0, 0, 0, 1, 2, 1, 2, 0),
)


def link_class(score: int) -> str:
    """The class of a set's weakest pair score (HAMi's scores: NVLink adds 100 per link)."""
    if score >= 100:
        return CLASSES[0]
    if score >= 40:
        return CLASSES[1]
    if score >= 20:
        return CLASSES[2]
    return CLASSES[3]


def node_links(kind: str, prefix: str) -> dict[str, dict[str, int]]:
    """The pair scores of one node, measured through the fake NVML as the device plugin does."""
    devices = []
    for i in range(8):
        nvlink = [f"{prefix}{j}" for j, n in enumerate(DGX1_NVLINKS[i]) for _ in range(n)] if kind == "dgx1" else []
        devices.append({"uuid": f"{prefix}{i}", "name": "Tesla V100-SXM2-32GB", "memory": GPU_MEMORY,
                        "numa": i // 4, "nvlink": nvlink, "topology": {f"{prefix}{i ^ 1}": "SINGLE"}})
    backend = FakeBackend(data={"devices": devices})
    backend.init()
    return topology.measure(backend, backend.devices()).scores


def build_cluster(nodes: int, split_count: int, vendors: VendorSet) -> list[NodeDevices]:
    """Half DGX-1-like nodes, half PCIe servers, registered through HAMi's annotations."""
    template = {kind: node_links(kind, "gpu") for kind in ("dgx1", "pcie")}
    cluster = []
    for n in range(nodes):
        kind = "dgx1" if n % 2 == 0 else "pcie"
        name = f"node-{n:03d}-{kind}"  # kinds alternate in name order too (binpack's tie-break)

        def uuid(g: str, name: str = name) -> str:
            return f"{name}/{g}"

        scores = {uuid(g): {uuid(p): s for p, s in peers.items()} for g, peers in template[kind].items()}
        devices = [DeviceInfo(id=uuid(f"gpu{i}"), count=split_count, devmem=GPU_MEMORY, devcore=100,
                              type="NVIDIA-Tesla V100-SXM2-32GB", numa=i // 4, index=i) for i in range(8)]
        obj = {"metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices),
                                                          keys.NODE_NVIDIA_SCORE: encode_pair_scores(scores)}}}
        registered, warnings = vendors.registered_node(obj)
        assert registered is not None and not warnings, warnings
        cluster.append(registered)
    return cluster


@dataclass
class HamiTopologyNvidia(Nvidia):
    """NVIDIA as HAMi has it: the topology-aware choice of GPUs, HAMi's node score alone."""

    def scores(self, ctx: PodContext) -> bool:
        return False


@dataclass(frozen=True)
class Variant:
    name: str
    gpu_policy: Policy
    hami_nodes: bool = False  # HAMi's node choice (no link-aware node score)


VARIANTS = (
    Variant("binpack", Policy.BINPACK),
    Variant("spread", Policy.SPREAD),
    Variant("topology-aware (HAMi)", Policy.TOPOLOGY_AWARE, hami_nodes=True),
    Variant("topology-aware (ours)", Policy.TOPOLOGY_AWARE),
)


@dataclass
class Outcome:
    variant: str
    seed: int
    sets: dict[int, list[str]] = field(default_factory=dict)  # per GPU count: the link class of each placed set
    placed_gpus: float = 0.0
    capacity: int = 0
    tasks: int = 0
    seconds: float = 0.0


def request(key: str, num_gpu: int, gpu_milli: int) -> PodRequest:
    if gpu_milli < 1000:
        pct = -(-gpu_milli // 10)
        container = ContainerRequest(nums=1, mem_percentage=pct, coresreq=pct)
    else:
        container = ContainerRequest(nums=num_gpu, mem_percentage=100, coresreq=100)
    return PodRequest(key=key, containers=(container,))


def run_fill(tasks: Tasks, variant: Variant, seed: int, nodes: int, until: float, split_count: int) -> Outcome:
    started = time.perf_counter()
    vendor = Nvidia.of(NvidiaConfig(deviceSplitCount=split_count))
    if variant.hami_nodes:
        vendor = HamiTopologyNvidia(**vars(vendor))
    vendors = VendorSet([vendor])
    state = ClusterState(build_cluster(nodes, split_count, vendors), vendors)
    defaults = PolicyDefaults(node_policy=Policy.BINPACK, gpu_policy=variant.gpu_policy)
    gpu_tasks = np.flatnonzero(tasks.num_gpu > 0)
    order = np.random.default_rng([seed, 15]).permutation(gpu_tasks)
    capacity = 8 * nodes
    outcome = Outcome(variant.name, seed, capacity=capacity)
    arrived = 0.0
    for k, t in enumerate(order.tolist()):
        num, milli = int(tasks.num_gpu[t]), int(tasks.gpu_milli[t])
        demand = num if milli >= 1000 else milli / 1000
        if arrived + demand > until * capacity:
            break
        arrived += demand
        pod = request(f"t{k}", num, milli)
        decision = schedule(state, pod, defaults, explain=False)
        outcome.tasks += 1
        if decision.node is None:
            continue
        commit(state, pod, decision)
        outcome.placed_gpus += demand
        if num > 1:
            quality = link_quality(state, state.node_pos[decision.node], decision.allocation)
            outcome.sets.setdefault(num, []).append(link_class(quality or 0))
    outcome.seconds = time.perf_counter() - started
    return outcome


def summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per GPU count (and all multi-GPU tasks): the share of sets in each link class, over seeds."""
    counts = sorted({n for o in outcomes for n in o.sets})
    groups: dict[str, list[str]] = {str(n): [c for o in outcomes for c in o.sets.get(n, [])] for n in counts}
    groups["all"] = [c for o in outcomes for cs in o.sets.values() for c in cs]
    return {
        "sets": {g: {"count": len(cs), **{c: round(cs.count(c) / len(cs), 4) if cs else 0.0 for c in CLASSES}}
                 for g, cs in groups.items()},
        "placed_gpu_share": round(float(np.mean([o.placed_gpus / o.capacity for o in outcomes])), 4),
        "tasks": sum(o.tasks for o in outcomes),
        "seconds": round(sum(o.seconds for o in outcomes), 1),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """Per policy: the GPU share placed, and for 2- and 4-GPU tasks (8-GPU tasks take a whole node,
    no choice) the share of sets linked all over NVLink and the share with a pair across CPUs."""
    groups = [g for g in next(iter(results.values()))["sets"] if g not in ("all", "8")]
    head = "".join(f"  {g + '-GPU sets':>10} {'NVLink':>7} {'x-CPU':>6}" for g in groups)
    lines = [f"{'policy':<24} {'placed':>7}{head}"]
    for name, r in results.items():
        cells = "".join(f"  {r['sets'][g]['count']:>10} {r['sets'][g]['NVLink'] * 100:6.1f}% "
                        f"{r['sets'][g]['across CPUs'] * 100:5.1f}%" for g in groups)
        lines.append(f"{name:<24} {r['placed_gpu_share'] * 100:6.1f}%{cells}")
    return "\n".join(lines)


def run_experiment(tasks: Tasks, label: str, nodes: int, seeds: int, until: float, split_count: int,
                   out: Path) -> dict[str, Any]:
    print(f"topology fill: {nodes} nodes x 8 V100 (half DGX-1 NVLink mesh, half PCIe), {seeds} seeds, "
          f"until {until:g} x capacity; tasks: {label}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        outcomes = []
        for seed in range(seeds):
            outcomes.append(run_fill(tasks, variant, seed, nodes, until, split_count))
            print(f"  {variant.name} seed {seed}: {outcomes[-1].tasks} tasks, {outcomes[-1].seconds:.1f}s",
                  file=sys.stderr)
        results[variant.name] = summary(outcomes)
    report = {"experiment": "topology fill", "tasks": label, "nodes": nodes, "seeds": seeds, "until": until,
              "classes": list(CLASSES), "policies": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "topology.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"report: {out / 'topology.json'}", file=sys.stderr)
    return report
