"""The node monitor in a real cluster: the real API server and kube-scheduler with `hami scheduler`,
the device plugin's Allocate for each pod, containers as libvgpu processes on the fake driver,
`hami monitor` (informer on the node's pods), and a real Prometheus scraping both. Every query
of the Grafana dashboard runs against it and must give the expected values; live resizing goes
end to end (applied and refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.monitor.simnode import BUILD, ROOT, Worker, stop_process
from hami.annotations import keys
from hami.deviceplugin.allocate import AllocateSettings, ContainerGrant, allocate
from hami.deviceplugin.pods import KubePodSource
from hami.monitor import shared_region
from hami.scheduler.resize import RESIZE, RESIZE_STATUS
from tests.cluster import ControlPlane, free_port, wait_for
from tests.integration.hami_stack import HamiScheduler, create_pod, gpu_node_annotations, gpu_pod, wait_bound
from tests.integration.prometheus import Prometheus
from tests.unit.libvgpu_helpers import build

MIB = 1024 * 1024
GPU_MIB = 16000
DASHBOARD = ROOT / "dashboards" / "hami.json"


def dashboard_queries() -> dict[str, list[str]]:
    """Panel title -> its PromQL queries, with the template variables set to "all"."""
    board = json.loads(DASHBOARD.read_text())
    found: dict[str, list[str]] = {}
    panels = list(board["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels") or [])
        exprs = [t["expr"] for t in panel.get("targets") or []]
        if exprs:
            assert panel["title"] not in found, f"two panels named {panel['title']!r}"
            found[panel["title"]] = [e.replace("$node", ".*").replace("$namespace", ".*") for e in exprs]
    return found


class GpuNode:
    """A fake GPU node in the cluster, with `hami scheduler` in front and `hami monitor` on it."""

    def __init__(self, cp: ControlPlane, namespace: str, workdir: Path, add_node: Any, start_scheduler: Any):
        self.cp = cp
        self.namespace = namespace
        self.dir = workdir
        self.name = f"{namespace}-gpu"[:60]
        self.uuids = [f"GPU-{self.name}-{i}" for i in range(2)]
        add_node(self.name, capacity={"nvidia.com/gpu": "20", "cpu": "8", "memory": "32Gi", "pods": "110"},
                 annotations=gpu_node_annotations(self.name, 2, memory=GPU_MIB))
        self.scheduler_port = free_port()
        self.hami = HamiScheduler(cp, workdir / "hami", scheduler_name=f"hami-{namespace}"[:60],
                                  extra_args=["--metrics-port", str(self.scheduler_port),
                                              "--gpu-policy", "binpack"]).start()
        start_scheduler(self.hami.extender_config())
        self.hook_path = workdir / "vgpu"
        (self.hook_path / "containers").mkdir(parents=True)
        self.driver_env = {
            "LD_LIBRARY_PATH": str(BUILD), "FAKE_CUDA_STATE": str(workdir / "fake-gpu.state"),
            "FAKE_CUDA_DEVICES": "2", "FAKE_CUDA_MEM_MIB": str(GPU_MIB), "FAKE_CUDA_UUIDS": ",".join(self.uuids),
            "FAKE_CUDA_BLOCK_US": "50",
        }
        self.monitor_port = free_port()
        self.monitor_log = workdir / "monitor.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIDIA_", "LD_PRELOAD"))}
        env.update(self.driver_env, HOOK_PATH=str(self.hook_path), NODE_NAME=self.name)
        self.monitor = subprocess.Popen(
            [sys.executable, "-m", "hami", "monitor", "--kubeconfig", str(cp.kubeconfig),
             "--metrics-bind-address", f"127.0.0.1:{self.monitor_port}"],
            env={**env, "PATH": os.environ.get("PATH", "")}, cwd=ROOT,
            stdout=open(self.monitor_log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the child owns it
        self.source = KubePodSource(str(cp.kubeconfig))
        self.workers: list[Worker] = []

    def run_pod(self, name: str, memory: int, cores: int, priority: int) -> tuple[dict[str, Any], Worker]:
        """Create the pod, let the schedulers bind it, run the device plugin's Allocate for it, and
        start its container as a libvgpu process with exactly the env Allocate gave it."""
        pod = gpu_pod(name, self.hami.scheduler_name, memory=memory, cores=cores,
                      extra_limits={"nvidia.com/priority": priority})
        create_pod(self.cp, self.namespace, pod)
        wait_for(lambda: self._pod(name)["spec"].get("nodeName"), timeout=60, message=f"pod {name} bound")
        settings = AllocateSettings(node=self.name, hook_path=str(self.hook_path),
                                    cache_root=str(self.hook_path / "containers"))
        grant: ContainerGrant = allocate(self.source, settings, [1])[0]
        return self._pod(name), self._start(grant)

    def _pod(self, name: str) -> dict[str, Any]:
        return dict(self.cp.api("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}"))

    def _start(self, grant: ContainerGrant) -> Worker:
        os.makedirs(grant.cache_dir, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CUDA_", "FAKE_CUDA_", "LIBVGPU_", "GPU_CORE", "NVIDIA_"))}
        env.update(self.driver_env)
        env.update(grant.envs)
        # The container sees its cache directory at /usr/local/vgpu/cache; this process, on the host, here.
        env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(Path(grant.cache_dir) / "vgpu.cache")
        env["LD_PRELOAD"] = str(BUILD / "libvgpu.so")
        process = subprocess.Popen([str(BUILD / "t_worker")], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, bufsize=1)
        worker = Worker(process, Path(grant.cache_dir))
        self.workers.append(worker)
        assert worker.answer().startswith("ready")
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        stop_process(self.monitor)
        self.hami.stop()


@pytest.fixture
def gpu_node(control_plane: ControlPlane, namespace: str, tmp_path: Path, add_node: Any,
             start_scheduler: Any) -> Iterator[GpuNode]:
    build()
    node = GpuNode(control_plane, namespace, tmp_path, add_node, start_scheduler)
    try:
        yield node
    finally:
        node.close()


def values(result: list[dict[str, Any]], label: str = "") -> dict[str, float]:
    """{label value (or "") -> sample value} of an instant query's result."""
    return {r["metric"].get(label, "") if label else "": float(r["value"][1]) for r in result}


def test_every_dashboard_query_gives_the_expected_values(gpu_node: GpuNode, tmp_path: Path) -> None:
    ns = gpu_node.namespace
    _, train = gpu_node.run_pod("train", memory=4000, cores=30, priority=1)
    _, serve = gpu_node.run_pod("serve", memory=2000, cores=0, priority=0)
    assert train.send("alloc 1000") == "alloc ok"
    assert serve.send("alloc 500") == "alloc ok"
    train_gpu = gpu_node._pod("train")["metadata"]["annotations"][keys.DEVICES_ALLOCATED].split(",")[0]
    assert gpu_node._pod("serve")["metadata"]["annotations"][keys.DEVICES_ALLOCATED].startswith(train_gpu)  # binpack
    prometheus = Prometheus(tmp_path / "prometheus", {"hami-scheduler": f"127.0.0.1:{gpu_node.scheduler_port}",
                                                      "hami-monitor": f"127.0.0.1:{gpu_node.monitor_port}"})
    try:
        queries = dashboard_queries()
        # Low-priority work runs; high-priority work starts: the "Suspended" panels show it.
        train.start(f"launch-log {tmp_path / 'train.log'} 8 1000")
        time.sleep(1)
        serve.start(f"launch-log {tmp_path / 'serve.log'} 4 2000")
        suspended = wait_for(lambda: values(prometheus.query(queries["Suspended containers"][0])).get("", 0) >= 1,
                             timeout=6, poll=0.2, message="a suspended container in Prometheus")
        assert suspended
        table = prometheus.query(queries["Suspended now"][0])
        assert [(r["metric"]["pod"], r["metric"]["namespace"]) for r in table] == [("train", ns)]
        serve.answer()
        train.answer()
        time.sleep(3)  # a few scrapes of the final state

        expected: dict[str, Callable[[list[list[dict[str, Any]]]], None]] = {}
        node = gpu_node.name

        def one(check: Callable[[dict[str, float]], None], label: str = "") -> Callable[[Any], None]:
            return lambda results: check(values(results[0], label))

        # Other tests' nodes may be in the cluster: figures below are for this node, through the
        # same queries restricted to it.
        def on_node(title: str) -> list[list[dict[str, Any]]]:
            return [prometheus.query(e.replace('node=~".*"', f'node="{node}"')) for e in queries[title]]

        cluster_memory = (4000 + 2000) / (2 * GPU_MIB)
        expected["GPU memory allocated"] = one(lambda v: pytest.approx(cluster_memory) == v[""])
        expected["GPU cores allocated"] = one(lambda v: pytest.approx(30 / 200) == v[""])
        expected["GPUs"] = one(lambda v: v[""] == 2)
        expected["Tasks on GPUs"] = one(lambda v: v[""] == 2)
        expected["GPU memory allocated per node"] = one(lambda v: pytest.approx(cluster_memory) == v[node], "node")
        expected["GPU memory in use per node"] = one(lambda v: v[node] == 1500 * MIB, "node")
        expected["GPU utilisation per node"] = one(lambda v: 0 <= v[node] <= 100, "node")
        expected["Memory allocated per GPU"] = one(lambda v: sorted(v.values()) == pytest.approx(
            sorted(_per_gpu(gpu_node, {"train": 4000, "serve": 2000}) / GPU_MIB)), "device_uuid")
        expected["Cores allocated per GPU"] = one(lambda v: sorted(v.values()) == pytest.approx(
            sorted(_per_gpu(gpu_node, {"train": 30, "serve": 0}) / 100)), "device_uuid")
        expected["Memory in use per GPU"] = one(lambda v: sorted(v.values()) == sorted(
            _per_gpu(gpu_node, {"train": 1000 * MIB, "serve": 500 * MIB})), "device_uuid")
        expected["Utilisation per GPU"] = one(lambda v: len(v) == 2 and all(0 <= x <= 100 for x in v.values()),
                                              "device_uuid")
        expected["Allocated vs in use per GPU"] = lambda results: (
            _check(sum(values(results[0], "device_uuid").values()) == 6000 * MIB),
            _check(sum(values(results[1], "device_uuid").values()) == 1500 * MIB))
        expected["Memory used / limit per container"] = one(
            lambda v: v == {"train": pytest.approx(1000 / 4000), "serve": pytest.approx(500 / 2000)}, "pod")
        expected["Memory used per container"] = one(lambda v: v == {"train": 1000 * MIB, "serve": 500 * MIB}, "pod")
        expected["Memory limit per container"] = one(lambda v: v == {"train": 4000 * MIB, "serve": 2000 * MIB}, "pod")
        expected["SM utilisation vs core limit per container"] = lambda results: (
            _check(set(values(results[0], "pod")) == {"train", "serve"}),
            _check(values(results[1], "pod") == {"train": pytest.approx(30)}))  # serve has no limit
        expected["Seconds since last kernel"] = one(lambda v: set(v) == {"train", "serve"} and all(
            0 <= x < 60 for x in v.values()), "pod")
        expected["Suspended containers"] = one(lambda v: v[""] == 0)  # serve is done: resumed
        expected["Suspended now"] = lambda results: _check(results[0] == [])
        expected["Task priority per container"] = one(lambda v: v == {"train": 1, "serve": 0}, "pod")
        expected["Suspensions per minute"] = one(lambda v: list(v.values())[0] > 0)
        expected["Core limit lifted (running alone)"] = lambda results: _check(results[0] == [])
        expected["Unreadable container regions"] = one(lambda v: v[""] == 0)

        assert set(expected) == set(queries), "every panel needs an expectation here"
        for title in queries:
            results = on_node(title)
            try:
                outcome = expected[title](results)
                if isinstance(outcome, bool):
                    assert outcome
            except AssertionError as exc:
                raise AssertionError(f"panel {title!r}: {queries[title]} gave {results}") from exc
    finally:
        prometheus.stop()


def _check(condition: bool) -> None:
    assert condition


def _per_gpu(gpu_node: GpuNode, per_pod: dict[str, float]) -> Any:
    """Per GPU of the node (both), the sum of `per_pod` over the pods placed on it."""
    import numpy as np

    totals = dict.fromkeys(gpu_node.uuids, 0.0)
    for name, value in per_pod.items():
        pod = gpu_node._pod(name)
        allocated = pod["metadata"]["annotations"][keys.DEVICES_ALLOCATED]
        totals[allocated.split(",")[0]] += value
    return np.asarray(list(totals.values()))


def test_resize_applied_and_refused_end_to_end(gpu_node: GpuNode) -> None:
    cp, ns = gpu_node.cp, gpu_node.namespace
    train_pod, train = gpu_node.run_pod("train", memory=4000, cores=30, priority=1)
    gpu = train_pod["metadata"]["annotations"][keys.DEVICES_ALLOCATED].split(",")[0]
    region = train.cache_dir / "vgpu.cache"
    assert train.send("alloc 3000") == "alloc ok"
    assert train.send("alloc 2000") == "alloc oom"

    def status(name: str) -> dict[str, Any]:
        text = gpu_node._pod(name)["metadata"]["annotations"].get(RESIZE_STATUS)
        return dict(json.loads(text)) if text else {}

    def annotate(name: str, value: str) -> None:
        cp.api("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"annotations": {RESIZE: value}}},
               content_type="application/merge-patch+json")

    annotate("train", "gpumem=6000,gpucores=50")
    wait_for(lambda: status("train").get("result") == "Applied", timeout=30, message="the resize applied")
    annotations = gpu_node._pod("train")["metadata"]["annotations"]
    assert annotations[keys.DEVICES_ALLOCATED] == f"{gpu},NVIDIA,6000,50:;"
    assert annotations[keys.DEVICES_TO_ALLOCATE] == ";"  # the device plugin's part is left alone
    wait_for(lambda: shared_region.read_region(region).devices[0].limit_bytes == 6000 * MIB, timeout=30,
             message=f"the monitor writing the new limit\n{gpu_node.monitor_log.read_text()[-2000:]}")
    assert shared_region.read_region(region).devices[0].sm_limit == 50
    assert train.send("alloc 2000") == "alloc ok"  # the running process, no restart

    # Another pod on the same GPU, then a resize that does not fit beside it.
    _, other = gpu_node.run_pod("other", memory=8000, cores=0, priority=1)
    other_pod = gpu_node._pod("other")
    assert other_pod["metadata"]["annotations"][keys.DEVICES_ALLOCATED].startswith(gpu)  # binpack
    annotate("train", "gpumem=9000")
    wait_for(lambda: status("train").get("result") == "Refused", timeout=30, message="the resize refused")
    assert "CardInsufficientMemory" in status("train")["message"]
    assert gpu_node._pod("train")["metadata"]["annotations"][keys.DEVICES_ALLOCATED] == f"{gpu},NVIDIA,6000,50:;"
    events = cp.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    refused = [e for e in events if e["reason"] == "ResizeRefused" and e["involvedObject"]["name"] == "train"]
    assert refused and "8000 MiB for this pod, 9000 asked" in refused[-1]["message"]
    assert any(e["reason"] == "Resized" and e["involvedObject"]["name"] == "train" for e in events)

    # Shrinking below what it holds: accepted, nothing freed, new allocations fail until it frees.
    annotate("train", "gpumem=1000")
    wait_for(lambda: status("train").get("result") == "Applied", timeout=30, message="the shrink applied")
    wait_for(lambda: shared_region.read_region(region).devices[0].limit_bytes == 1000 * MIB, timeout=30,
             message="the smaller limit")
    assert shared_region.read_region(region).devices[0].used_bytes == 5000 * MIB
    assert train.send("alloc 1") == "alloc oom"
    # The freed share is the scheduler's again at once: a pod that needs it fits.
    _, big = gpu_node.run_pod("big", memory=GPU_MIB - 8000 - 1000, cores=0, priority=1)
    assert gpu_node._pod("big")["metadata"]["annotations"][keys.DEVICES_ALLOCATED].startswith(gpu)
    wait_bound(cp, ns, 3, timeout=10)
