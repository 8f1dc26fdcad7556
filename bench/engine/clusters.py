"""Clusters and workloads for the engine benchmarks: Node objects as the API server returns them
(each vendor's registration annotation or capacity) and Pod objects with each vendor's resource
names and annotations, so that the vendors' parsing, checks, choices and node scores are what
run. `measure` fills a cluster to about 50 % through the engine, then times `schedule()` with
reasons per pod, in wall time and CPU time (CPU time is steadier on a shared machine).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hami.allocator import tune_allocator
from hami.config import HamiConfig
from hami.model import NodeDevices, PodRequest
from hami.scheduler.engine import PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.vendors.registry import VendorSet

Rng = np.random.Generator
Pod = tuple[dict[str, Any], dict[str, str]]  # limits, annotations
NodeBuilder = Callable[[str, Rng], dict[str, Any]]
PodBuilder = Callable[[Rng], Pod]
# (vendor, share of nodes, node builder, pod builder)
Mix = list[tuple[str, float, NodeBuilder, PodBuilder]]


def node(name: str, annotations: dict[str, str] | None = None, capacity: dict[str, str] | None = None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
            "status": {"capacity": capacity or {}, "allocatable": capacity or {}}}


def _json(name: str, prefix: str, **fields: Any) -> str:
    return json.dumps([{"id": f"{prefix}-{name}-{i}", "index": i, "health": True, "numa": i // 4, **fields}
                       for i in range(8)])


def nvidia_node(name: str, rng: Rng) -> dict[str, Any]:
    model, mem = [("NVIDIA-A100-SXM4-80GB", 81920), ("NVIDIA-A10", 23028), ("NVIDIA-L4", 23034)][int(rng.integers(3))]
    return node(name, {"hami.io/node-nvidia-register": _json(name, "GPU", count=10, devmem=mem, devcore=100,
                                                               type=model)})


def dcu_node(name: str, rng: Rng) -> dict[str, Any]:
    csv = "".join(f"DCU-{name}-{i},4,65536,100,DCU-K100,{i // 4},true,{i},hami-core:" for i in range(8))
    return node(name, {"hami.io/node-dcu-register": csv})


def iluvatar_node(name: str, rng: Rng) -> dict[str, Any]:
    csv = "".join(f"IL-{name}-{i},8,32768,100,BI-V150,0,true,{i},hami-core:" for i in range(8))
    return node(name, {"hami.io/node-BI-V150-register": csv})


def biren_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, {"hami.io/node-biren-register": _json(name, "BR", count=4, devmem=65536, devcore=100,
                                                              type="Biren-110")})


def gcu_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, capacity={"enflame.com/gcu": "8"})


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


def _npus(name: str, word: str, n: int, **fields: Any) -> str:
    return json.dumps([{"id": f"{word}-{name}-{i}", "index": i, "health": True, "type": word,
                        "custominfo": {"NetworkID": 0 if word == "Ascend910C" or i < n // 2 else 1}, **fields}
                       for i in range(n)])


def ascend_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, {"hami.io/node-register-Ascend910B3": _npus(name, "Ascend910B3", 8, count=4,
                                                                          devmem=65536, devcore=20)})


def ascend910c_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, {"hami.io/node-register-Ascend910C": _npus(name, "Ascend910C", 16, count=4,
                                                                         devmem=65536, devcore=20)})


def kunlun_node(name: str, rng: Rng) -> dict[str, Any]:
    return node(name, capacity={"kunlunxin.com/xpu": "8"})


def vxpu_node(name: str, rng: Rng) -> dict[str, Any]:
    devices = [{"id": f"XPU-{name}-{i}", "index": i, "count": 4, "devmem": 98304, "devcore": 100, "type": "XPU",
                "health": True} for i in range(8)]
    return node(name, {"hami.io/node-register-xpu": json.dumps(devices)})


def aws_node(name: str, rng: Rng) -> dict[str, Any]:
    inf = rng.random() < 0.5
    devices = 12 if inf else 16
    return node(name, capacity={"aws.amazon.com/neuron": str(devices),
                                "aws.amazon.com/neuroncore": str(2 * devices)},
                labels={"node.kubernetes.io/instance-type": "inf2.48xlarge" if inf else "trn1.32xlarge"})


def nvidia_pod(rng: Rng) -> Pod:
    nums = 1 if rng.random() < 0.85 else int(rng.integers(2, 5))
    return {"nvidia.com/gpu": nums, "nvidia.com/gpumem": int(rng.integers(1000, 16000)),
            "nvidia.com/gpucores": int(rng.choice([0, 10, 20, 30]))}, {}


def dcu_pod(rng: Rng) -> Pod:
    return {"hygon.com/dcunum": 1, "hygon.com/dcumem": int(rng.integers(1000, 16000)), "hygon.com/dcucores": 20}, {}


def iluvatar_pod(rng: Rng) -> Pod:
    return {"iluvatar.ai/BI-V150-vgpu": 1, "iluvatar.ai/BI-V150.vMem": int(rng.integers(4, 40)),
            "iluvatar.ai/BI-V150.vCore": 10}, {}


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


def ascend_pod(rng: Rng) -> Pod:
    if rng.random() < 0.8:
        return {"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": int(rng.choice([16384, 32768]))}, {}
    return {"huawei.com/Ascend910B3": int(rng.choice([2, 4, 8])), "huawei.com/Ascend910B3-memory": 65536}, {}


def ascend910c_pod(rng: Rng) -> Pod:
    return {"huawei.com/Ascend910C": int(rng.choice([2, 4])), "huawei.com/Ascend910C-memory": 65536}, {}


def kunlun_pod(rng: Rng) -> Pod:
    return {"kunlunxin.com/xpu": int(rng.choice([1, 1, 2, 4]))}, {}


def vxpu_pod(rng: Rng) -> Pod:
    return {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": int(rng.choice([24576, 49152]))}, {}


def aws_pod(rng: Rng) -> Pod:
    if rng.random() < 0.7:
        return {"aws.amazon.com/neuroncore": int(rng.choice([1, 2]))}, {}
    return {"aws.amazon.com/neuron": int(rng.choice([1, 4]))}, {}


def build(mix: Mix, nodes: int, vendors: VendorSet, rng: Rng) -> ClusterState:
    shares = np.cumsum([m[1] for m in mix])
    cluster: list[NodeDevices] = []
    for n in range(nodes):
        kind = min(int(np.searchsorted(shares, (n + 0.5) / nodes)), len(mix) - 1)
        registered, warnings = vendors.registered_node(mix[kind][2](f"node-{n:05d}", rng))
        assert registered is not None and not warnings, warnings
        cluster.append(registered)
    return ClusterState(cluster, vendors)


def pod(mix: Mix, key: str, vendors: VendorSet, rng: Rng) -> tuple[str, PodRequest]:
    kind = min(int(np.searchsorted(np.cumsum([m[1] for m in mix]), rng.random())), len(mix) - 1)
    limits, annotations = mix[kind][3](rng)
    namespace, name = key.split("/")
    obj = {"metadata": {"name": name, "namespace": namespace, "annotations": annotations},
           "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}
    return mix[kind][0], vendors.pod_request(obj)


Times = dict[str, tuple[list[float], list[float]]]  # per vendor ("all" too): wall ms, CPU ms


def measure(mix: Mix, nodes: int, pods: int, seed: int, freeze: bool = True,
            tune: bool = True) -> tuple[Times, float]:
    """Per-pod decision times, and the memory load at the end."""
    rng = np.random.default_rng(seed)
    if tune:  # as `hami scheduler` does at start
        tune_allocator()
    vendors = VendorSet.from_config(HamiConfig())
    state = build(mix, nodes, vendors, rng)
    defaults = PolicyDefaults()
    k = 0
    while state.usedmem.sum() < 0.5 * state.totalmem.sum() and k < nodes * 40:  # fill through the engine
        _, request = pod(mix, f"fill/p{k}", vendors, rng)
        commit(state, request, schedule(state, request, defaults, explain=False))
        k += 1
    if freeze:  # as `hami scheduler` does once it has built its state
        gc.collect()
        gc.freeze()
    times: Times = {}
    for i in range(pods):
        vendor, request = pod(mix, f"bench/p{i}", vendors, rng)
        start, start_cpu = time.perf_counter(), time.process_time()
        decision = schedule(state, request, defaults)
        wall, cpu = (time.perf_counter() - start) * 1000, (time.process_time() - start_cpu) * 1000
        for key in ("all", vendor):
            times.setdefault(key, ([], []))
            times[key][0].append(wall)
            times[key][1].append(cpu)
        commit(state, request, decision)
    if freeze:
        gc.unfreeze()
    return times, float(state.usedmem.sum() / state.totalmem.sum())
