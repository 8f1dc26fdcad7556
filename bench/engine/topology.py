"""Per-pod decision time with the topology vendors: N nodes x 8-16 devices, half NVIDIA, a
quarter Ascend 910B3 (network groups), the rest Ascend 910C (card pairs), Kunlunxin whole XPUs
and vXPUs, and AWS Trainium / Inferentia, filled to about 50 % first.

    python -m bench.engine.topology                  # N = 1000, 5000
    python -m bench.engine.topology --nodes 5000 --pods 500

The same measurement as bench.engine.mixed (Node and Pod objects as the API server returns
them, `schedule()` with reasons, p50 and p99 wall and CPU time), on a cluster where most
non-NVIDIA pods go through a vendor's topology: Ascend's largest-group choice and network
score, 910C whole cards, Kunlunxin's 8-XPU graph and calcscore, AWS runs of neighbours.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.engine import mixed

Rng = mixed.Rng


def _npus(name: str, word: str, n: int, **fields: Any) -> str:
    return json.dumps([{"id": f"{word}-{name}-{i}", "index": i, "health": True, "type": word,
                        "custominfo": {"NetworkID": 0 if word == "Ascend910C" or i < n // 2 else 1}, **fields}
                       for i in range(n)])


def ascend_node(name: str, rng: Rng) -> dict[str, Any]:
    return mixed._node(name, {"hami.io/node-register-Ascend910B3": _npus(name, "Ascend910B3", 8, count=4,
                                                                          devmem=65536, devcore=20)})


def ascend910c_node(name: str, rng: Rng) -> dict[str, Any]:
    return mixed._node(name, {"hami.io/node-register-Ascend910C": _npus(name, "Ascend910C", 16, count=4,
                                                                         devmem=65536, devcore=20)})


def kunlun_node(name: str, rng: Rng) -> dict[str, Any]:
    return mixed._node(name, capacity={"kunlunxin.com/xpu": "8"})


def vxpu_node(name: str, rng: Rng) -> dict[str, Any]:
    devices = [{"id": f"XPU-{name}-{i}", "index": i, "count": 4, "devmem": 98304, "devcore": 100, "type": "XPU",
                "health": True} for i in range(8)]
    return mixed._node(name, {"hami.io/node-register-xpu": json.dumps(devices)})


def aws_node(name: str, rng: Rng) -> dict[str, Any]:
    inf = rng.random() < 0.5
    devices = 12 if inf else 16
    return mixed._node(name, capacity={"aws.amazon.com/neuron": str(devices),
                                       "aws.amazon.com/neuroncore": str(2 * devices)},
                       labels={"node.kubernetes.io/instance-type": "inf2.48xlarge" if inf else "trn1.32xlarge"})


def ascend_pod(rng: Rng) -> dict[str, Any]:
    if rng.random() < 0.8:
        return {"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": int(rng.choice([16384, 32768]))}
    return {"huawei.com/Ascend910B3": int(rng.choice([2, 4, 8])), "huawei.com/Ascend910B3-memory": 65536}


def ascend910c_pod(rng: Rng) -> dict[str, Any]:
    return {"huawei.com/Ascend910C": int(rng.choice([2, 4])), "huawei.com/Ascend910C-memory": 65536}


def kunlun_pod(rng: Rng) -> dict[str, Any]:
    return {"kunlunxin.com/xpu": int(rng.choice([1, 1, 2, 4]))}


def vxpu_pod(rng: Rng) -> dict[str, Any]:
    return {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": int(rng.choice([24576, 49152]))}


def aws_pod(rng: Rng) -> dict[str, Any]:
    if rng.random() < 0.7:
        return {"aws.amazon.com/neuroncore": int(rng.choice([1, 2]))}
    return {"aws.amazon.com/neuron": int(rng.choice([1, 4]))}


MIX: list[tuple[float, mixed.NodeBuilder, mixed.PodBuilder]] = [
    (0.50, mixed.nvidia_node, mixed.nvidia_pod),
    (0.25, ascend_node, ascend_pod),
    (0.07, ascend910c_node, ascend910c_pod),
    (0.06, kunlun_node, kunlun_pod),
    (0.06, vxpu_node, vxpu_pod),
    (0.06, aws_node, aws_pod),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--pods", type=int, default=300, help="measured pods per size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    mixed.MIX = MIX  # mixed.build and mixed.pod draw nodes and pods from this table
    print(f"{'nodes':>7} {'pods':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50 cpu':>8} {'p99 cpu':>8} {'mem load':>9}")
    for nodes in args.nodes or [1000, 5000]:
        p50, p99, c50, c99, load = mixed.measure(nodes, args.pods, args.seed)
        print(f"{nodes:>7} {args.pods:>5} {p50:>8.2f} {p99:>8.2f} {c50:>8.2f} {c99:>8.2f} {load:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
