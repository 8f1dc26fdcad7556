"""Per-pod decision time of the engine on a cluster of the shared-device vendors: N nodes x 8
devices, half NVIDIA, the other half spread over Cambricon, Moore Threads, MetaX GPU and sGPU,
Enflame DRS, AMD and Vastai (die mode), filled to about 50 % first.

    python -m bench.engine.shared                  # N = 1000, 5000
    python -m bench.engine.shared --nodes 5000 --pods 500

Nodes are Node objects as the API server returns them (each vendor's annotation or capacity),
pods are Pod objects with each vendor's resource names and annotations (MetaX app classes and
QoS, a few pods asking several Vastai dies), so the vendors' parsing, checks, choices and node
scores are what run. Prints p50 and p99 of `schedule()` with reasons, overall and for the pods
of each vendor, in wall time and CPU time (CPU time is steadier on a shared machine).
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
Pod = tuple[dict[str, Any], dict[str, str]]  # limits, annotations


def node(name: str, annotations: dict[str, str] | None = None,
         capacity: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}},
            "status": {"capacity": capacity or {}, "allocatable": capacity or {}}}


def nvidia_node(name: str, rng: Rng) -> dict[str, Any]:
    devices = [{"id": f"GPU-{name}-{i}", "index": i, "count": 10, "devmem": 81920, "devcore": 100,
                "type": "NVIDIA-A100-SXM4-80GB", "health": True} for i in range(8)]
    return node(name, {"hami.io/node-nvidia-register": json.dumps(devices)})


def mlu_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, capacity={"cambricon.com/mlu.smlu.vcore": "800", "cambricon.com/mlu.smlu.vmemory": "2048",
                                "cambricon.com/vmlu": "800"})


def mthreads_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, capacity={"mthreads.com/sgpu-core": "128", "mthreads.com/sgpu-memory": "768",
                                "mthreads.com/vgpu": "800"})


def metax_gpu_node(name: str, rng: Rng) -> dict[str, Any]:
    losses = json.dumps({str(k): int(v) for k, v in zip(range(1, 9), sorted(rng.integers(0, 1500, 8)), strict=True)})
    return node(name, {"metax-tech.com/gpu.topology.losses": losses}, capacity={"metax-tech.com/gpu": "8"})


def metax_sgpu_node(name: str, rng: Rng) -> dict[str, Any]:
    devices = [{"uuid": f"SG-{name}-{i}", "model": "C500", "totalDevCount": 16, "totalCompute": 100,
                "totalVRam": 65536, "numa": i // 4, "healthy": True, "qosPolicy": "", "linkZone": 1 + i // 4}
               for i in range(8)]
    return node(name, {"metax-tech.com/node-gpu-devices": json.dumps(devices)})


def enflame_node(name: str, rng: Rng) -> dict[str, Any]:
    spec = {"devices": [{"index": str(i), "minor": str(i), "capacity": 6} for i in range(8)],
            "profiles": {"1g.6gb": "0", "3g.20gb": "1", "6g.40gb": "2"}}
    return node(name, {"enflame.com/gcu-drs-capacity": json.dumps(spec)})


def amd_node(name: str, rng: Rng) -> dict[str, Any]:
    devices = [{"id": f"AMD-{name}-{i}", "index": i, "count": 4, "devmem": 196608, "devcore": 304,
                "type": "AMD_Instinct_MI300X", "health": True} for i in range(8)]
    return node(name, {"hami.io/node-amd-register": json.dumps(devices)}, capacity={"amd.com/gpu": "32"})


def vastai_node(name: str, rng: Rng) -> dict[str, Any]:
    devices = [{"id": f"VA-{name}-{i}", "index": i, "count": 2, "devmem": 16384, "type": "Vastai", "health": True,
                "custominfo": {"DeviceStrategy": "die", "AIC": str(i // 4)}} for i in range(8)]
    return node(name, {"hami.io/node-va-register": json.dumps(devices)})


def nvidia_pod(rng: Rng) -> Pod:
    return {"nvidia.com/gpu": 1, "nvidia.com/gpumem": int(rng.integers(1000, 16000)),
            "nvidia.com/gpucores": int(rng.choice([0, 10, 20, 30]))}, {}


def mlu_pod(rng: Rng) -> Pod:
    return {"cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": int(rng.integers(4, 64)),
            "cambricon.com/mlu.smlu.vcore": int(rng.choice([10, 25, 50]))}, {}


def mthreads_pod(rng: Rng) -> Pod:
    return {"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": int(rng.choice([2, 4, 8, 16])),
            "mthreads.com/sgpu-core": int(rng.choice([1, 2, 4]))}, {}


def metax_sgpu_pod(rng: Rng) -> Pod:
    annotations = {"metax-tech.com/sgpu-qos-policy": str(rng.choice(["best-effort", "fixed-share"]))}
    if rng.random() < 0.2:
        annotations = {"metax-tech.com/sgpu-app-class": str(rng.choice(["online", "offline"]))}
    return {"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": int(rng.choice([10, 20, 30])),
            "metax-tech.com/vmemory": int(rng.choice([2, 4, 8]))}, annotations


def enflame_pod(rng: Rng) -> Pod:
    if rng.random() < 0.5:
        return {"enflame.com/drs-gcu": int(rng.choice([1, 3]))}, {}
    return {"enflame.com/gcu-memory": int(rng.choice([6, 20])), "enflame.com/gcu-core": 10}, {}


def amd_pod(rng: Rng) -> Pod:
    return {"amd.com/gpu": 1, "amd.com/gpumem": int(rng.integers(4096, 65536)),
            "amd.com/gpucores": int(rng.choice([10, 25, 50]))}, {}


def vastai_pod(rng: Rng) -> Pod:
    return {"vastaitech.com/va": int(rng.choice([1, 1, 1, 2, 4]))}, {}


# (vendor, share of nodes, node builder, pod builder)
MIX: list[tuple[str, float, Callable[[str, Rng], dict[str, Any]], Callable[[Rng], Pod]]] = [
    ("NVIDIA", 0.50, nvidia_node, nvidia_pod),
    ("MLU", 0.08, mlu_node, mlu_pod),
    ("Mthreads", 0.08, mthreads_node, mthreads_pod),
    ("Metax-GPU", 0.05, metax_gpu_node, lambda rng: ({"metax-tech.com/gpu": 1}, {})),
    ("Metax-SGPU", 0.08, metax_sgpu_node, metax_sgpu_pod),
    ("Enflame", 0.06, enflame_node, enflame_pod),
    ("AMD", 0.08, amd_node, amd_pod),
    ("Vastai", 0.07, vastai_node, vastai_pod),
]
SHARES = np.cumsum([m[1] for m in MIX])


def build(nodes: int, vendors: VendorSet, rng: Rng) -> ClusterState:
    cluster: list[NodeDevices] = []
    for n in range(nodes):
        kind = int(np.searchsorted(SHARES, (n + 0.5) / nodes))
        registered, warnings = vendors.registered_node(MIX[kind][2](f"node-{n:05d}", rng))
        assert registered is not None and not warnings, warnings
        cluster.append(registered)
    return ClusterState(cluster, vendors)


def pod(key: str, vendors: VendorSet, rng: Rng) -> tuple[str, PodRequest]:
    kind = min(int(np.searchsorted(SHARES, rng.random())), len(MIX) - 1)
    limits, annotations = MIX[kind][3](rng)
    namespace, name = key.split("/")
    obj = {"metadata": {"name": name, "namespace": namespace, "annotations": annotations},
           "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}
    return MIX[kind][0], vendors.pod_request(obj)


def measure(nodes: int, pods: int, seed: int, freeze: bool = False) -> dict[str, tuple[list[float], list[float]]]:
    rng = np.random.default_rng(seed)
    vendors = VendorSet.from_config(HamiConfig())
    state = build(nodes, vendors, rng)
    defaults = PolicyDefaults()
    k = 0
    while state.usedmem.sum() < 0.5 * state.totalmem.sum() and k < nodes * 40:  # fill through the engine
        _, request = pod(f"fill/p{k}", vendors, rng)
        commit(state, request, schedule(state, request, defaults, explain=False))
        k += 1
    if freeze:  # keep the cluster's objects out of the garbage collector's full passes
        gc.collect()
        gc.freeze()
    times: dict[str, tuple[list[float], list[float]]] = {}
    for i in range(pods):
        vendor, request = pod(f"bench/p{i}", vendors, rng)
        start, start_cpu = time.perf_counter(), time.process_time()
        decision = schedule(state, request, defaults)
        wall, cpu = (time.perf_counter() - start) * 1000, (time.process_time() - start_cpu) * 1000
        for key in ("all", vendor):
            times.setdefault(key, ([], []))
            times[key][0].append(wall)
            times[key][1].append(cpu)
        commit(state, request, decision)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--pods", type=int, default=400, help="measured pods per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() once the cluster is filled (shows the garbage collector's share of p99)")
    args = parser.parse_args()
    print(f"{'nodes':>6} {'pods of':>11} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50 cpu':>8} {'p99 cpu':>8}")
    for nodes in args.nodes or [1000, 5000]:
        times = measure(nodes, args.pods, args.seed, args.gc_freeze)
        for key in ["all"] + [m[0] for m in MIX]:
            if key not in times:
                continue
            wall, cpu = np.asarray(times[key][0]), np.asarray(times[key][1])
            print(f"{nodes:>6} {key:>11} {len(wall):>5} {np.percentile(wall, 50):>8.2f} "
                  f"{np.percentile(wall, 99):>8.2f} {np.percentile(cpu, 50):>8.2f} {np.percentile(cpu, 99):>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
