"""Per-pod decision time of the engine on mixed-vendor clusters of N nodes, filled to about 50 %.

    python -m bench.engine.mixed                          # the mixed cluster, N = 1000, 5000
    python -m bench.engine.mixed --nodes 5000 --pods 500
    python -m bench.engine.mixed --mix topology           # the vendors with a topology
    python -m bench.engine.mixed --mix shared             # the shared-device vendors
    python -m bench.engine.mixed --no-gc-freeze           # without gc.freeze(): the collector's share
    python -m bench.engine.mixed --no-tune-allocator      # glibc's default allocator: page faults

Mixes (share of nodes):
- `mixed`: half NVIDIA, a quarter Ascend 910B3, the rest spread over every other vendor.
- `topology`: half NVIDIA, a quarter Ascend 910B3 (network groups), the rest Ascend 910C (card
  pairs), Kunlunxin whole XPUs and vXPUs, AWS Trainium / Inferentia.
- `shared`: half NVIDIA, the rest Cambricon, Moore Threads, MetaX GPU and sGPU, Enflame DRS, AMD
  and Vastai (die mode).
Nodes and pods are built as the API server returns them (bench/engine/clusters.py). Prints p50
and p99 of `schedule()` with reasons, for all pods and for each vendor's pods, in wall time and
CPU time.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.engine import clusters as c

_REST = 0.25 / 13
MIXES: dict[str, c.Mix] = {
    "mixed": [
        ("NVIDIA", 0.50, c.nvidia_node, c.nvidia_pod),
        ("Ascend910B3", 0.25, c.ascend_node, c.ascend_pod),
        ("Ascend910C", _REST, c.ascend910c_node, c.ascend910c_pod),
        ("DCU", _REST, c.dcu_node, c.dcu_pod),
        ("BI-V150", _REST, c.iluvatar_node, c.iluvatar_pod),
        ("MLU", _REST, c.mlu_node, c.mlu_pod),
        ("Mthreads", _REST, c.mthreads_node, c.mthreads_pod),
        ("Metax-GPU", _REST, c.metax_gpu_node, lambda rng: ({"metax-tech.com/gpu": 1}, {})),
        ("Metax-SGPU", _REST, c.metax_sgpu_node, c.metax_sgpu_pod),
        ("Enflame", _REST, c.enflame_node, c.enflame_pod),
        ("GCU", _REST, c.gcu_node, lambda rng: ({"enflame.com/gcu": 1}, {})),
        ("kunlun", _REST, c.kunlun_node, c.kunlun_pod),
        ("XPU", _REST, c.vxpu_node, c.vxpu_pod),
        ("AWSNeuron", _REST, c.aws_node, c.aws_pod),
        ("AMD", _REST, c.amd_node, c.amd_pod),
        ("Vastai", _REST / 2, c.vastai_node, c.vastai_pod),
        ("Biren", _REST / 2, c.biren_node, lambda rng: ({"birentech.com/gpu": 1}, {})),
    ],
    "topology": [
        ("NVIDIA", 0.50, c.nvidia_node, c.nvidia_pod),
        ("Ascend910B3", 0.25, c.ascend_node, c.ascend_pod),
        ("Ascend910C", 0.07, c.ascend910c_node, c.ascend910c_pod),
        ("kunlun", 0.06, c.kunlun_node, c.kunlun_pod),
        ("XPU", 0.06, c.vxpu_node, c.vxpu_pod),
        ("AWSNeuron", 0.06, c.aws_node, c.aws_pod),
    ],
    "shared": [
        ("NVIDIA", 0.50, c.nvidia_node, c.nvidia_pod),
        ("MLU", 0.08, c.mlu_node, c.mlu_pod),
        ("Mthreads", 0.08, c.mthreads_node, c.mthreads_pod),
        ("Metax-GPU", 0.05, c.metax_gpu_node, lambda rng: ({"metax-tech.com/gpu": 1}, {})),
        ("Metax-SGPU", 0.08, c.metax_sgpu_node, c.metax_sgpu_pod),
        ("Enflame", 0.06, c.enflame_node, c.enflame_pod),
        ("AMD", 0.08, c.amd_node, c.amd_pod),
        ("Vastai", 0.07, c.vastai_node, c.vastai_pod),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable)")
    parser.add_argument("--pods", type=int, default=400, help="measured pods per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="leave the cluster's objects in the garbage collector's full passes")
    parser.add_argument("--no-tune-allocator", action="store_true",
                        help="leave glibc's allocator as it is (hami scheduler tunes it: hami.allocator)")
    parser.add_argument("--by-vendor", action="store_true", help="also a line per vendor's pods")
    args = parser.parse_args()
    mix = MIXES[args.mix]
    print(f"{'nodes':>6} {'pods of':>11} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50 cpu':>8} {'p99 cpu':>8} "
          f"{'mem load':>9}")
    for nodes in args.nodes or [1000, 5000]:
        times, load = c.measure(mix, nodes, args.pods, args.seed, freeze=not args.no_gc_freeze,
                                tune=not args.no_tune_allocator)
        keys = ["all"] + ([m[0] for m in mix] if args.by_vendor else [])
        for key in keys:
            if key not in times:
                continue
            wall, cpu = np.asarray(times[key][0]), np.asarray(times[key][1])
            print(f"{nodes:>6} {key:>11} {len(wall):>5} {np.percentile(wall, 50):>8.2f} "
                  f"{np.percentile(wall, 99):>8.2f} {np.percentile(cpu, 50):>8.2f} {np.percentile(cpu, 99):>8.2f} "
                  f"{load:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
