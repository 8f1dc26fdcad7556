"""Per-pod decision time of topology-aware pods on N nodes x 8 GPUs with measured links.

    python -m bench.engine.nvlink                 # N = 100, 1000
    python -m bench.engine.nvlink --nodes 5000

Half the nodes are DGX-1-like (NVLink hybrid cube mesh), half PCIe servers (hami.sim.topology),
filled with one-GPU pods (seeded) to about 50 % of their GPUs. Then pods asking 1, 2 or 4 whole
GPUs with hami.io/gpu-scheduler-policy: topology-aware are scheduled and committed one after
another; p50 and p99 of `schedule()` with reasons, for HAMi's node choice (the link-blind node
score) and ours (links first), and for the same pods under binpack for comparison.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from hami.annotations.selectors import Policy
from hami.config import NvidiaConfig
from hami.model import ContainerRequest, PodRequest
from hami.scheduler.engine import PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.sim.topology import HamiTopologyNvidia, build_cluster
from hami.vendors.nvidia import Nvidia
from hami.vendors.registry import VendorSet


@dataclass(frozen=True)
class Case:
    name: str
    gpu_policy: Policy
    hami_nodes: bool = False


CASES = (Case("binpack", Policy.BINPACK), Case("topology-aware, HAMi's node choice", Policy.TOPOLOGY_AWARE, True),
         Case("topology-aware, ours", Policy.TOPOLOGY_AWARE))


def state_for(nodes: int, case: Case, seed: int) -> ClusterState:
    vendor = Nvidia.of(NvidiaConfig())
    if case.hami_nodes:
        vendor = HamiTopologyNvidia(**vars(vendor))
    vendors = VendorSet([vendor])
    state = ClusterState(build_cluster(nodes, 10, vendors), vendors)
    rng = np.random.default_rng(seed)
    from hami.model import ContainerDevice

    for k, row in enumerate(rng.choice(len(state.uuids), size=len(state.uuids) // 2, replace=False).tolist()):
        node = state.nodes[int(state.dev_node[row])].name
        state.add_pod(f"fill/{k}", node, ((ContainerDevice(state.uuids[row], "NVIDIA", 32768, 100),),))
    return state


def measure(nodes: int, pods: int, case: Case, seed: int) -> tuple[float, float]:
    state = state_for(nodes, case, seed)
    rng = np.random.default_rng(seed + 1)
    defaults = PolicyDefaults(node_policy=Policy.BINPACK, gpu_policy=case.gpu_policy)
    times = []
    for k in range(pods):
        nums = int(rng.choice([1, 2, 4]))
        pod = PodRequest(key=f"p{k}", containers=(ContainerRequest(nums=nums, mem_percentage=25, coresreq=10),))
        start = time.perf_counter()
        decision = schedule(state, pod, defaults)
        times.append((time.perf_counter() - start) * 1000)
        commit(state, pod, decision)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--pods", type=int, default=100, help="measured pods per size and case")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'nodes':>6} {'case':<36} {'p50 ms':>8} {'p99 ms':>8}")
    for nodes in args.nodes or [100, 1000]:
        for case in CASES:
            p50, p99 = measure(nodes, args.pods, case, args.seed)
            print(f"{nodes:>6} {case.name:<36} {p50:8.2f} {p99:8.2f}", flush=True)


if __name__ == "__main__":
    main()
