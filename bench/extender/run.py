"""Pods per second through the real kube-scheduler with our extender, and /filter and /bind latency.

    python -m bench.extender.run                   # 1,000 fake nodes x 8 GPUs, 500 pods
    python -m bench.extender.run --nodes 200 --pods 200
    python -m bench.extender.run --extender-cpu 1   # hami on core 1, the rest on the others

Starts the test control plane (tests/cluster; build it first with `make cluster-binaries`),
adds fake nodes with HAMi registrations, runs `hami scheduler` and a kube-scheduler that calls
it (nodeCacheCapable, filter + prioritize + bind), creates the pods at once and waits until
all are bound. Latencies are measured inside the extender (its request-duration histogram,
read as Prometheus' histogram_quantile does); pods/s is wall time from the first create to
the last binding. `bind` includes waiting for the node (kube-scheduler binds in parallel,
binds to one node run one at a time); `bind-held` is a bind's own work once its node is free.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import ControlPlane
from tests.integration.hami_stack import HamiScheduler, create_pod, gpu_node_annotations, gpu_pod, pods_in


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """histogram_quantile over cumulative (upper bound, count) pairs, linear within a bucket."""
    total = buckets[-1][1]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            width = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / width if width else 0)
        previous_bound, previous_count = bound, count
    return previous_bound


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process on `cpus` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def latencies(hami: HamiScheduler) -> dict[str, tuple[int, float, float]]:
    _, body = hami.get("/metrics")
    result = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "hami_extender_request_duration_seconds":
            continue
        per_route: dict[str, list[tuple[float, float]]] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                per_route.setdefault(sample.labels["route"], []).append((float(sample.labels["le"]), sample.value))
        for route, buckets in per_route.items():
            buckets.sort()
            result[route] = (int(buckets[-1][1]), quantile(0.5, buckets) * 1000, quantile(0.99, buckets) * 1000)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--extender-cpu", type=int, default=None,
                        help="run hami scheduler alone on this core and everything else on the others, as in a "
                             "cluster where the extender has its own CPU (default: all share all cores)")
    args = parser.parse_args()
    if args.extender_cpu is not None:
        others = os.sched_getaffinity(0) - {args.extender_cpu}
        if args.extender_cpu not in os.sched_getaffinity(0) or not others:
            parser.error(f"--extender-cpu {args.extender_cpu}: needs that core and at least one other")
        pin(os.getpid(), others)  # the control plane started below inherits this
    with tempfile.TemporaryDirectory(prefix="hami-bench-") as tmp:
        # No controller-manager marks nodes NotReady, so heartbeats are not needed here.
        cp = ControlPlane.start(Path(tmp) / "cp", heartbeat_interval=3600)
        try:
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda n: cp.add_node(
                            f"node-{n:04d}", annotations=gpu_node_annotations(f"node-{n:04d}", gpus=8, memory=81920)
                        ),
                        range(args.nodes),
                    )
                )
            print(f"{args.nodes} nodes x 8 GPUs added in {time.perf_counter() - started:.0f} s", flush=True)
            hami = HamiScheduler(cp, Path(tmp) / "hami", scheduler_name="hami-scheduler").start()
            if args.extender_cpu is not None:
                assert hami.process is not None
                pin(hami.process.pid, {args.extender_cpu})
            cp.start_scheduler(hami.extender_config())
            namespace = cp.create_namespace("bench")
            pods = [
                gpu_pod(f"p{i:05d}", "hami-scheduler", memory=4000 + 500 * (i % 16), cores=10 * (i % 4))
                for i in range(args.pods)
            ]
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda p: create_pod(cp, namespace, p), pods))
            while True:
                bound = sum(1 for p in pods_in(cp, namespace) if p["spec"].get("nodeName"))
                if bound >= args.pods:
                    break
                time.sleep(2)  # listing every pod is load on the API server: poll gently
            elapsed = time.perf_counter() - started
            print(f"{args.pods} pods bound in {elapsed:.1f} s: {args.pods / elapsed:.1f} pods/s")
            print(f"{'route':<11} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}")
            for route, (calls, p50, p99) in sorted(latencies(hami).items()):
                print(f"{route:<11} {calls:>6} {p50:>8.2f} {p99:>8.2f}")
            hami.stop()
        finally:
            cp.close()


if __name__ == "__main__":
    main()
