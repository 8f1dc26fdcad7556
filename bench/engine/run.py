"""Per-pod decision time of the engine on N nodes x 8 GPUs at about 50 % memory load.

    python -m bench.engine.run                 # N = 100, 1000, 5000, 10000
    python -m bench.engine.run --nodes 5000 --pods 500

Prints p50 and p99 of `schedule()` (with reasons, as the extender calls it) per cluster size.
The cluster is filled first with random pods (seeded) to ~50 % memory; each measured pod is
then scheduled and committed, so the state moves as it does in a real cluster.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState

GPU_TYPES = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A10", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4")
MEMORY = {"NVIDIA-A100-SXM4-80GB": 81920, "NVIDIA-A10": 23028, "NVIDIA-H100-80GB-HBM3": 81559, "NVIDIA-L4": 23034}


def build_cluster(nodes: int, rng: np.random.Generator) -> ClusterState:
    cluster = []
    for n in range(nodes):
        gpu_type = GPU_TYPES[int(rng.integers(len(GPU_TYPES)))]
        devices = tuple(
            DeviceInfo(id=f"GPU-{n:05d}-{i}", count=10, devmem=MEMORY[gpu_type], devcore=100, type=gpu_type,
                       numa=i // 4, index=i)
            for i in range(8)
        )
        cluster.append(NodeDevices(name=f"node-{n:05d}", devices=devices))
    return ClusterState(cluster)


def random_pod(key: str, rng: np.random.Generator) -> PodRequest:
    nums = 1 if rng.random() < 0.85 else int(rng.integers(2, 5))
    request = ContainerRequest(
        nums=nums, memreq=int(rng.integers(1000, 16000)), coresreq=int(rng.choice([0, 10, 20, 30]))
    )
    return PodRequest(key=key, containers=(request,))


def fill(state: ClusterState, target: float, rng: np.random.Generator) -> None:
    """Place random pods directly on random devices until the memory load reaches `target`."""
    total = int(state.totalmem.sum())
    k = 0
    while int(state.usedmem.sum()) < target * total:
        row = int(rng.integers(len(state.uuids)))
        free = int(state.totalmem[row] - state.usedmem[row])
        if free < 1000 or state.used[row] >= state.count[row]:
            continue
        from hami.model import ContainerDevice

        mem = int(rng.integers(1000, min(free, 20000) + 1))
        node = state.nodes[int(state.dev_node[row])].name
        state.add_pod(f"fill/{k}", node, ((ContainerDevice(state.uuids[row], "NVIDIA", mem, 10),),))
        k += 1


def measure(nodes: int, pods: int, seed: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    state = build_cluster(nodes, rng)
    fill(state, 0.5, rng)
    gc.freeze()  # as `hami scheduler` does after building its state
    defaults = PolicyDefaults()
    timings = []
    for k in range(pods):
        request = random_pod(f"bench/{k}", rng)
        start = time.perf_counter()
        decision = schedule(state, request, defaults)
        timings.append(time.perf_counter() - start)
        commit(state, request, decision)
    ms = np.asarray(timings) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(state.usedmem.sum() / state.totalmem.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--pods", type=int, default=300, help="measured pods per size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = args.nodes or [100, 1000, 5000, 10000]
    print(f"{'nodes':>7} {'gpus':>7} {'pods':>5} {'p50 ms':>8} {'p99 ms':>8} {'mem load':>9}")
    for nodes in sizes:
        p50, p99, load = measure(nodes, args.pods, args.seed)
        print(f"{nodes:>7} {nodes * 8:>7} {args.pods:>5} {p50:>8.2f} {p99:>8.2f} {load:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
