"""Per-pod decision time of the engine on a mixed cluster: N nodes x 8 devices, half NVIDIA, a
quarter Ascend 910B3, the rest spread over the other vendors, filled to about 50 % first.

    python -m bench.engine.mixed                  # N = 1000, 5000
    python -m bench.engine.mixed --nodes 5000 --pods 500

Nodes are built from Node objects as the API server returns them (each vendor's registration
annotation or capacity), pods from Pod objects (each vendor's resource names), so parsing and
vendor hooks are what a real cluster runs. Prints p50 and p99 of `schedule()` with reasons,
wall time and CPU time (CPU time is steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hami.config import HamiConfig
from hami.model import NodeDevices, PodRequest
from hami.scheduler.engine import PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.vendors.registry import VendorSet

Rng = np.random.Generator
NodeBuilder = Callable[[str, Rng], dict[str, Any]]
PodBuilder = Callable[[Rng], dict[str, Any]]


def _node(name: str, annotations: dict[str, str] | None = None, capacity: dict[str, str] | None = None,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
            "status": {"capacity": capacity or {}, "allocatable": capacity or {}}}


def _json(name: str, prefix: str, **fields: Any) -> str:
    return json.dumps([{"id": f"{prefix}-{name}-{i}", "index": i, "health": True, "numa": i // 4, **fields}
                       for i in range(8)])


def nvidia_node(name: str, rng: Rng) -> dict[str, Any]:
    model, mem = [("NVIDIA-A100-SXM4-80GB", 81920), ("NVIDIA-A10", 23028), ("NVIDIA-L4", 23034)][int(rng.integers(3))]
    return _node(name, {"hami.io/node-nvidia-register": _json(name, "GPU", count=10, devmem=mem, devcore=100,
                                                               type=model)})


def dcu_node(name: str, rng: Rng) -> dict[str, Any]:
    csv = "".join(f"DCU-{name}-{i},4,65536,100,DCU-K100,{i // 4},true,{i},hami-core:" for i in range(8))
    return _node(name, {"hami.io/node-dcu-register": csv})


def iluvatar_node(name: str, rng: Rng) -> dict[str, Any]:
    csv = "".join(f"IL-{name}-{i},8,32768,100,BI-V150,0,true,{i},hami-core:" for i in range(8))
    return _node(name, {"hami.io/node-BI-V150-register": csv})


def biren_node(name: str, rng: Rng) -> dict[str, Any]:
    return _node(name, {"hami.io/node-biren-register": _json(name, "BR", count=4, devmem=65536, devcore=100,
                                                              type="Biren-110")})


def gcu_node(name: str, rng: Rng) -> dict[str, Any]:
    return _node(name, capacity={"enflame.com/gcu": "8"})


def nvidia_pod(rng: Rng) -> dict[str, Any]:
    nums = 1 if rng.random() < 0.85 else int(rng.integers(2, 5))
    return {"nvidia.com/gpu": nums, "nvidia.com/gpumem": int(rng.integers(1000, 16000)),
            "nvidia.com/gpucores": int(rng.choice([0, 10, 20, 30]))}


def dcu_pod(rng: Rng) -> dict[str, Any]:
    return {"hygon.com/dcunum": 1, "hygon.com/dcumem": int(rng.integers(1000, 16000)), "hygon.com/dcucores": 20}


def iluvatar_pod(rng: Rng) -> dict[str, Any]:
    return {"iluvatar.ai/BI-V150-vgpu": 1, "iluvatar.ai/BI-V150.vMem": int(rng.integers(4, 40)),
            "iluvatar.ai/BI-V150.vCore": 10}


# (share of nodes, node builder, pod builder).
MIX: list[tuple[float, NodeBuilder, Callable[[Rng], dict[str, Any]]]] = [
    (0.50, nvidia_node, nvidia_pod),
    (0.25, dcu_node, dcu_pod),
    (0.10, iluvatar_node, iluvatar_pod),
    (0.08, biren_node, lambda rng: {"birentech.com/gpu": 1}),
    (0.07, gcu_node, lambda rng: {"enflame.com/gcu": 1}),
]


def build(nodes: int, vendors: VendorSet, rng: Rng) -> ClusterState:
    cluster: list[NodeDevices] = []
    shares = np.cumsum([m[0] for m in MIX])
    for n in range(nodes):
        kind = int(np.searchsorted(shares, (n + 0.5) / nodes))
        registered, warnings = vendors.registered_node(MIX[kind][1](f"node-{n:05d}", rng))
        assert registered is not None and not warnings, warnings
        cluster.append(registered)
    return ClusterState(cluster, vendors)


def pod(key: str, vendors: VendorSet, rng: Rng) -> PodRequest:
    kind = int(np.searchsorted(np.cumsum([m[0] for m in MIX]), rng.random()))
    limits = MIX[min(kind, len(MIX) - 1)][2](rng)
    namespace, name = key.split("/")
    return vendors.pod_request({"metadata": {"name": name, "namespace": namespace},
                                "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}})


def measure(nodes: int, pods: int, seed: int) -> tuple[float, float, float, float, float]:
    rng = np.random.default_rng(seed)
    vendors = VendorSet.from_config(HamiConfig())
    state = build(nodes, vendors, rng)
    defaults = PolicyDefaults()
    k = 0
    while state.usedmem.sum() < 0.5 * state.totalmem.sum() and k < nodes * 40:  # fill through the engine
        request = pod(f"fill/p{k}", vendors, rng)
        commit(state, request, schedule(state, request, defaults, explain=False))
        k += 1
    gc.freeze()  # as `hami scheduler` does after building its state
    wall, cpu = [], []
    for i in range(pods):
        request = pod(f"bench/p{i}", vendors, rng)
        start, start_cpu = time.perf_counter(), time.process_time()
        decision = schedule(state, request, defaults)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        commit(state, request, decision)
    w, c = np.asarray(wall) * 1000, np.asarray(cpu) * 1000
    return (float(np.percentile(w, 50)), float(np.percentile(w, 99)), float(np.percentile(c, 50)),
            float(np.percentile(c, 99)), float(state.usedmem.sum() / state.totalmem.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--pods", type=int, default=300, help="measured pods per size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'nodes':>7} {'devices':>8} {'pods':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50 cpu':>8} {'p99 cpu':>8} "
          f"{'mem load':>9}")
    for nodes in args.nodes or [1000, 5000]:
        p50, p99, c50, c99, load = measure(nodes, args.pods, args.seed)
        print(f"{nodes:>7} {nodes * 8:>8} {args.pods:>5} {p50:>8.2f} {p99:>8.2f} {c50:>8.2f} {c99:>8.2f} "
              f"{load:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
