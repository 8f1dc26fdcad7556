"""Time to plan a preemption (hami.scheduler.preempt) on N nodes x 8 GPUs that are nearly full.

    python -m bench.preempt.run                  # N = 10, 100, 1000
    python -m bench.preempt.run --nodes 1000 --plans 20

Each GPU (80 GB, 10 shares) is filled with pods of 4-24 GB of priorities 0-3 (one in ten
spans two GPUs) to about 95 % of memory. Then a preemptor of priority 10 asks, in turn, one
GPU with 40 GB, one whole GPU (cores 100: every pod on it must go) and two GPUs with 30 GB
each; `plan_preemption` is timed over every node, as the scheduler's worker calls it when
kube-scheduler offers all of them. Prints p50 and p99 per kind, wall and CPU time (the CPU time
of this process, which other work on a shared machine does not inflate), and the victims chosen.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from hami.model import ContainerDevice, ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.preempt import plan_preemption
from hami.scheduler.state import ClusterState

MEMORY = 81920
KINDS = {
    "1 GPU, 40 GB": ContainerRequest(nums=1, memreq=40960),
    "1 whole GPU": ContainerRequest(nums=1, mem_percentage=100, coresreq=100),
    "2 GPUs, 30 GB": ContainerRequest(nums=2, memreq=30720),
}


def build(nodes: int, rng: np.random.Generator) -> tuple[ClusterState, dict[str, int]]:
    state = ClusterState([
        NodeDevices(name=f"node-{n:05d}", devices=tuple(
            DeviceInfo(id=f"GPU-{n:05d}-{i}", count=10, devmem=MEMORY, devcore=100, type="NVIDIA-A100", index=i)
            for i in range(8)))
        for n in range(nodes)])
    priorities: dict[str, int] = {}
    k = 0
    for n in range(nodes):
        for i in range(8):
            row = n * 8 + i
            while state.totalmem[row] - state.usedmem[row] > 0.05 * MEMORY and state.used[row] < 9:
                free = int(state.totalmem[row] - state.usedmem[row])
                mem = min(free, int(rng.integers(4096, 24577)))
                rows = [row]
                if i < 7 and rng.random() < 0.1 and state.totalmem[row + 1] - state.usedmem[row + 1] >= mem:
                    rows.append(row + 1)
                allocation = (tuple(ContainerDevice(state.uuids[r], "NVIDIA", mem, 0) for r in rows),)
                key = f"fill/{k}"
                state.add_pod(key, f"node-{n:05d}", allocation)
                priorities[key] = int(rng.integers(0, 4))
                k += 1
    return state, priorities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--plans", type=int, default=10, help="plans timed per kind and size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'nodes':>6} {'pods':>7} {'preemptor':<14} {'p50 ms':>8} {'p99 ms':>8} {'p50 CPU':>8} {'p99 CPU':>8} "
          f"{'victims':>8}")
    for nodes in args.nodes or [10, 100, 1000]:
        rng = np.random.default_rng(args.seed)
        state, priorities = build(nodes, rng)
        gc.freeze()
        for kind, ask in KINDS.items():
            wall, cpu, victims = [], [], 0
            for k in range(args.plans):
                pod = PodRequest(key=f"bench/p{k}", containers=(ask,))
                start, start_cpu = time.perf_counter(), time.process_time()
                plan = plan_preemption(state, pod, 10, priorities).plan
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
                victims = len(plan.victims) if plan is not None else -1
            ms, cpu_ms = np.asarray(wall) * 1000, np.asarray(cpu) * 1000
            print(f"{nodes:>6} {len(priorities):>7} {kind:<14} {np.percentile(ms, 50):>8.1f} "
                  f"{np.percentile(ms, 99):>8.1f} {np.percentile(cpu_ms, 50):>8.1f} {np.percentile(cpu_ms, 99):>8.1f} "
                  f"{victims:>8}", flush=True)


if __name__ == "__main__":
    main()
