"""Pods per second through the real kube-scheduler, alone and with our extender, on one control
plane in one run; and /filter and /bind latency inside the extender.

    python -m bench.extender.run                   # 1,000 fake nodes x 8 GPUs, 500 pods each phase
    python -m bench.extender.run --nodes 200 --pods 200
    python -m bench.extender.run --extender-cpu 1   # hami on core 1, the rest on the others
    python -m bench.extender.run --hami-chart       # filter + bind only, our choice alone

Starts the test control plane (tests/cluster; build it first with `make cluster-binaries`),
adds fake nodes with HAMi registrations (as our device plugin writes them, pod matching
included, so binds take no node lock), runs `hami scheduler`, a kube-scheduler that calls it
(nodeCacheCapable, filter + prioritize + bind; with --hami-chart, filter + bind as HAMi's chart
configures it, and `hami scheduler --only-best-node`) and a second kube-scheduler with the same
settings and no extender. Then two phases, each creating its pods at once and waiting until all
are bound:

1. kube-scheduler alone: the same pods without device requests, for the plain scheduler;
2. with the extender: pods asking for one GPU share each (4-11.5 GB, 0-30 % cores), binpacked.

pods/s is wall time from the first create to the last binding. Latencies are measured inside
the extender (its request-duration histogram, read as Prometheus' histogram_quantile does).
`bind` includes waiting (for a thread, the GIL, the API server); `bind-held` is a bind's own
work from its start. CPU seconds are read from /proc for hami and the control plane.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import ControlPlane
from tests.integration.hami_stack import HamiScheduler, create_pod, gpu_node_annotations, gpu_pod, pods_in

TARGET_RATIO, TARGET_BIND_P99_MS, TARGET_FILTER_P99_MS = 0.5, 2000.0, 20.0


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


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def plain_pod(name: str, scheduler: str) -> dict[str, Any]:
    """The same pod without device requests."""
    pod = gpu_pod(name, scheduler)
    del pod["spec"]["containers"][0]["resources"]
    return pod


def burst(cp: ControlPlane, namespace: str, pods: list[dict[str, Any]],
          processes: dict[str, Callable[[], int | None]]) -> dict[str, float]:
    """Create the pods at once and wait until all are bound: seconds to create, to bind, CPU used."""
    before = {name: cpu_seconds(pid()) for name, pid in processes.items()}
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: create_pod(cp, namespace, p), pods))
    created = time.perf_counter() - started
    while True:
        bound = sum(1 for p in pods_in(cp, namespace) if p["spec"].get("nodeName"))
        if bound >= len(pods):
            break
        time.sleep(0.5)  # listing every pod is load on the API server: poll gently
    result = {"created": created, "bound": time.perf_counter() - started}
    result.update({f"cpu {name}": cpu_seconds(pid()) - before[name] for name, pid in processes.items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=500, help="pods in each phase")
    parser.add_argument("--extender-cpu", type=int, default=None,
                        help="run hami scheduler alone on this core and everything else on the others, as in a "
                             "cluster where the extender has its own CPU (default: all share all cores)")
    parser.add_argument("--hami-chart", action="store_true",
                        help="configure kube-scheduler as HAMi's chart does (filter + bind, no prioritize) and "
                             "have /filter return only our choice (--only-best-node)")
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
            hami = HamiScheduler(cp, Path(tmp) / "hami", scheduler_name="hami-scheduler",
                                 extra_args=["--only-best-node"] if args.hami_chart else []).start()
            if args.extender_cpu is not None:
                assert hami.process is not None
                pin(hami.process.pid, {args.extender_cpu})
            with_extender = cp.start_scheduler(hami.extender_config(prioritize=not args.hami_chart))
            alone = cp.start_scheduler({"profiles": [{"schedulerName": "plain-scheduler"}]})
            def processes(scheduler: Any) -> dict[str, Callable[[], int | None]]:
                """The processes whose CPU time a phase reports (its kube-scheduler's)."""
                return {
                    "hami": lambda: hami.process.pid if hami.process else None,
                    "kube-scheduler": lambda: scheduler.process.pid,
                    "kube-apiserver": lambda: cp.apiserver.pid if cp.apiserver else None,
                    "etcd": lambda: cp.etcd.pid if cp.etcd else None,
                }

            plain = burst(cp, cp.create_namespace("bench-plain"),
                          [plain_pod(f"p{i:05d}", "plain-scheduler") for i in range(args.pods)], processes(alone))
            gpu = burst(cp, cp.create_namespace("bench-gpu"),
                        [gpu_pod(f"p{i:05d}", "hami-scheduler", memory=4000 + 500 * (i % 16), cores=10 * (i % 4))
                         for i in range(args.pods)], processes(with_extender))
            found = latencies(hami)
            hami.stop()
        finally:
            cp.close()
    report(args, plain, gpu, found)


def report(args: argparse.Namespace, plain: dict[str, float], gpu: dict[str, float],
           found: dict[str, tuple[int, float, float]]) -> None:
    print(f"\n{args.pods} pods per phase, {args.nodes} nodes x 8 GPUs, "
          f"{'hami on its own core' if args.extender_cpu is not None else 'all processes sharing the cores'}, "
          f"{'filter + bind, only our choice (HAMi chart)' if args.hami_chart else 'filter + prioritize + bind'}")
    print(f"{'phase':<22} {'created s':>9} {'bound s':>8} {'pods/s':>7} "
          + " ".join(f"{k.removeprefix('cpu '):>14}" for k in plain if k.startswith("cpu ")))
    for phase, result in (("kube-scheduler alone", plain), ("with the extender", gpu)):
        cpu = " ".join(f"{result[k]:>12.1f} s" for k in result if k.startswith("cpu "))
        print(f"{phase:<22} {result['created']:>9.1f} {result['bound']:>8.1f} "
              f"{args.pods / result['bound']:>7.1f} {cpu}")
    print(f"\n{'route':<11} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for route, (calls, p50, p99) in sorted(found.items()):
        print(f"{route:<11} {calls:>6} {p50:>8.2f} {p99:>8.2f}")
    ratio = plain["bound"] / gpu["bound"]
    checks = [
        (f"pods/s with the extender / alone = {ratio:.2f}", ratio >= TARGET_RATIO, f">= {TARGET_RATIO}"),
        (f"/bind p99 = {found.get('bind', (0, 0, 0))[2]:.0f} ms", found.get("bind", (0, 0, 1e9))[2]
         < TARGET_BIND_P99_MS, f"< {TARGET_BIND_P99_MS:.0f} ms"),
        (f"/filter p99 = {found.get('filter', (0, 0, 0))[2]:.1f} ms", found.get("filter", (0, 0, 1e9))[2]
         < TARGET_FILTER_P99_MS, f"< {TARGET_FILTER_P99_MS:.0f} ms"),
    ]
    print()
    for text, ok, target in checks:
        print(f"{'met    ' if ok else 'MISSED '} {text} (target {target})")


if __name__ == "__main__":
    main()
