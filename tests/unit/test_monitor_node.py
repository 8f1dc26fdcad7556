"""`hami monitor` on a simulated node: containers are libvgpu processes on the fake driver, each
under its own cache directory. Metrics, priority, resizes, cleanup and broken regions."""

from __future__ import annotations

import ctypes
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.monitor.run import measure
from bench.monitor.simnode import Gpu, SimNode, gpu_uuid, stop_process
from hami.annotations import keys
from hami.annotations.pod_devices import encode_pod_devices
from hami.model.allocation import ContainerDevice
from hami.monitor import shared_region
from hami.monitor.node import MonitorOptions, NodeMonitor
from hami.monitor.pods import PodIndex
from tests.cluster import free_port
from tests.unit.libvgpu_helpers import build

MIB = 1024 * 1024
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SimNode]:
    sim = SimNode(tmp_path)
    yield sim
    sim.close()


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def scrape(port: int) -> Samples:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pick(samples: Samples, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name} {labels}: {len(found)} series"
    return found[0]


class RunningMonitor:
    def __init__(self, node: SimNode, *args: str):
        self.port = free_port()
        self.log = node.dir / "monitor.log"
        self.process = node.start_monitor("--metrics-bind-address", f"127.0.0.1:{self.port}", *args, log=self.log)
        wait_for(self._up, 20, "the monitor's /metrics")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"monitor exited: {self.log.read_text()}")
        try:
            scrape(self.port)
            return True
        except OSError:
            return False

    def scrape(self) -> Samples:
        return scrape(self.port)


@pytest.fixture
def monitor(node: SimNode) -> Iterator[Callable[..., RunningMonitor]]:
    started: list[RunningMonitor] = []

    def start(*args: str) -> RunningMonitor:
        running = RunningMonitor(node, *args)
        started.append(running)
        return running

    yield start
    for running in started:
        stop_process(running.process)


def test_probes_answer_beside_the_metrics(node: SimNode, monitor: Callable[..., RunningMonitor]) -> None:
    running = monitor("--pods", str(node.pods_file()))
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{running.port}{path}", timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
    assert any(name.startswith("hami_monitor_") for name, _ in running.scrape())


def test_metrics_equal_what_the_regions_hold(node: SimNode, monitor: Callable[..., RunningMonitor]) -> None:
    train = node.add_pod("train", {"main": [Gpu(0, 4000, 30)]}, namespace="ml")
    serve = node.add_pod("serve", {"api": [Gpu(0, 2000, 0), Gpu(1, 3000, 0)]}, namespace="web")
    running = monitor("--pods", str(node.pods_file()), "--legacy-metrics")
    trainer = node.start(train, "main", priority=1)
    server = node.start(serve, "api", priority=0)
    second = node.start(serve, "api", priority=0, device=1)  # another process of the container, on its 2nd GPU
    assert trainer.send("alloc 1000") == "alloc ok"
    assert trainer.send("alloc 3500") == "alloc oom"  # past its 4000 MiB
    assert server.send("alloc 500") == "alloc ok"
    assert second.send("alloc 700") == "alloc ok"
    assert server.send("launch 0.05 1000").startswith("launch")

    samples = wait_for(lambda: (s := running.scrape()) and any(n == "hami_vgpu_memory_used_bytes" for n, _ in s)
                       and s, what="container metrics")
    assert isinstance(samples, dict)
    for pod, container, index, uuid in (("train", "main", 0, gpu_uuid(0)), ("serve", "api", 0, gpu_uuid(0)),
                                        ("serve", "api", 1, gpu_uuid(1))):
        region = shared_region.read_region(node.cache_dir(node.pods[0 if pod == "train" else 1], container)
                                           / "vgpu.cache")
        device = region.device(index)
        assert device is not None
        labels = {"pod": pod, "container": container, "vdevice_index": str(index), "device_uuid": uuid,
                  "zone": "vGPU"}
        assert pick(samples, "hami_vgpu_memory_used_bytes", **labels) == device.used_bytes
        assert pick(samples, "hami_vgpu_memory_limit_bytes", **labels) == device.limit_bytes
        assert pick(samples, "hami_container_device_memory_bytes", **labels) == device.used_bytes
        assert pick(samples, "vGPU_device_memory_usage_in_bytes", podname=pod, ctrname=container,
                    vdeviceid=str(index)) == device.used_bytes
    # And what the processes did: 1000 MiB and 500 MiB held, limits from the decisions.
    assert pick(samples, "hami_vgpu_memory_used_bytes", pod="train", namespace="ml") == 1000 * MIB
    assert pick(samples, "hami_vgpu_memory_limit_bytes", pod="train") == 4000 * MIB
    assert pick(samples, "hami_vgpu_memory_used_bytes", pod="serve", vdevice_index="0") == 500 * MIB
    assert pick(samples, "hami_vgpu_memory_limit_bytes", pod="serve", vdevice_index="1") == 3000 * MIB
    assert pick(samples, "hami_container_device_core_limit_ratio", pod="train") == pytest.approx(0.3)
    assert pick(samples, "hami_container_task_priority", pod="train") == 1
    assert pick(samples, "hami_container_task_priority", pod="serve") == 0
    assert pick(samples, "hami_container_last_kernel_elapsed_seconds", pod="serve", vdevice_index="0") < 30

    # Utilisation of a container without a core limit (HAMi's reads 0 there): measured by libvgpu.
    server.start("busy 2")
    busy = wait_for(lambda: pick(running.scrape(), "hami_container_device_utilization_ratio", pod="serve",
                                 vdevice_index="0") > 50, timeout=5, what="the serving container's utilisation")
    assert busy
    assert server.answer().startswith("busy util=")
    # The host's figures come from NVML (the fake's): what the driver holds on each GPU.
    assert pick(samples, "hami_host_gpu_memory_used_bytes", device_uuid=gpu_uuid(0), node="sim-node") == 1500 * MIB
    assert pick(samples, "hami_host_gpu_memory_used_bytes", device_uuid=gpu_uuid(1), device_index="1",
                device_type="NVIDIA-Fake GPU 1") == 700 * MIB
    assert pick(samples, "HostGPUMemoryUsage", deviceuuid=gpu_uuid(0)) == 1500 * MIB
    assert pick(samples, "hami_vgpu_memory_used_bytes", pod="serve", vdevice_index="1") == 700 * MIB


def test_fake_devices_take_host_figures_from_the_containers(node: SimNode,
                                                             monitor: Callable[..., RunningMonitor]) -> None:
    pod = node.add_pod("p", {"c": [Gpu(1, 2000)]})
    running = monitor("--pods", str(node.pods_file()), "--fake-devices", str(node.fake_devices_yaml()))
    worker = node.start(pod, "c")
    assert worker.send("alloc 300") == "alloc ok"
    samples = wait_for(lambda: (s := running.scrape()) and any(n == "hami_vgpu_memory_used_bytes" for n, _ in s)
                       and s, what="container metrics")
    assert isinstance(samples, dict)
    assert pick(samples, "hami_host_gpu_memory_used_bytes", device_uuid=gpu_uuid(1),
                device_type="NVIDIA-Fake GPU") == 300 * MIB
    assert pick(samples, "hami_host_gpu_memory_used_bytes", device_uuid=gpu_uuid(0)) == 0


def test_priority_suspends_low_priority_work_and_resumes_it(node: SimNode,
                                                            monitor: Callable[..., RunningMonitor]) -> None:
    low_pod = node.add_pod("train", {"c": [Gpu(0, 1000)]})
    high_pod = node.add_pod("serve", {"c": [Gpu(0, 1000)]})
    elsewhere_pod = node.add_pod("other", {"c": [Gpu(1, 1000)]})
    running = monitor("--pods", str(node.pods_file()))
    low, high, elsewhere = (node.start(low_pod, "c", priority=1), node.start(high_pod, "c", priority=0),
                            node.start(elsewhere_pod, "c", priority=1))
    low_log, high_log, other_log = node.dir / "low.log", node.dir / "high.log", node.dir / "other.log"
    low.start(f"launch-log {low_log} 3.5 1000")
    elsewhere.start(f"launch-log {other_log} 3.5 1000")
    time.sleep(0.5)
    start = time.time_ns()
    high.send(f"launch-log {high_log} 1 2000")
    suspended = running.scrape()
    low.answer()
    elsewhere.answer()
    result = measure(low_log, high_log, start)
    assert result is not None
    stop_ms, resume_ms = result
    # Loose bounds on a shared machine; bench/monitor measures the real figures.
    assert stop_ms < 500, stop_ms
    assert resume_ms < 1500, resume_ms
    assert resume_ms > 300  # not before the window (0.5 s) has passed
    # The container on the other GPU never paused.
    other = [int(x) for x in other_log.read_text().split()]
    assert max(b - a for a, b in zip(other, other[1:], strict=False)) < 300_000_000
    assert pick(suspended, "hami_monitor_priority_actions_total", action="suspend") >= 1


def test_gone_pods_are_cleaned_after_the_grace_period_but_never_while_in_use(
        node: SimNode, monitor: Callable[..., RunningMonitor]) -> None:
    kept = node.add_pod("kept", {"c": [Gpu(0, 1000)]})
    gone = node.add_pod("gone", {"c": [Gpu(0, 1000)]})
    busy = node.add_pod("busy", {"c": [Gpu(0, 1000)]})
    for pod in (kept, gone):
        worker = node.start(pod, "c")
        worker.send("alloc 10")
        worker.stop()
    in_use = node.start(busy, "c")
    node.pods = [kept]  # the API server knows only this one now
    running = monitor("--pods", str(node.pods_file()), "--resync-interval", "1s")
    wait_for(lambda: not node.cache_dir(gone, "c").exists(), 15, "the gone pod's directory to be removed")
    time.sleep(1.5)
    assert node.cache_dir(kept, "c").exists()
    assert node.cache_dir(busy, "c").exists()  # its pod is gone, but a process still uses the region
    assert "still uses" in running.log.read_text()
    in_use.stop()
    wait_for(lambda: not node.cache_dir(busy, "c").exists(), 15, "the directory to go once unused")
    assert pick(running.scrape(), "hami_monitor_removed_caches_total") == 2


def test_a_young_directory_of_an_unknown_pod_is_kept(node: SimNode, monitor: Callable[..., RunningMonitor]) -> None:
    stranger = node.add_pod("stranger", {"c": [Gpu(0, 1000)]})
    worker = node.start(stranger, "c")
    worker.stop()
    node.pods = []
    monitor("--pods", str(node.pods_file()), "--resync-interval", "1m")
    time.sleep(2.5)
    assert node.cache_dir(stranger, "c").exists()


def test_broken_regions_are_logged_and_skipped(node: SimNode, monitor: Callable[..., RunningMonitor]) -> None:
    good = node.add_pod("good", {"c": [Gpu(0, 1000)]})
    broken = {name: node.add_pod(name, {"c": [Gpu(0, 1000)]}) for name in ("short", "garbage", "version", "empty")}
    worker = node.start(good, "c")
    worker.send("alloc 100")
    region = (node.cache_dir(good, "c") / "vgpu.cache").read_bytes()
    contents = {
        "short": region[:1000],
        "garbage": bytes(range(256)) * 200,
        "version": region[:8] + (7).to_bytes(4, "little") + region[12:],
        "empty": b"",
    }
    for name, data in contents.items():
        directory = node.cache_dir(broken[name], "c")
        directory.mkdir(parents=True)
        (directory / "vgpu.cache").write_bytes(data)
    running = monitor("--pods", str(node.pods_file()))
    samples = wait_for(lambda: (s := running.scrape()) and pick(s, "hami_monitor_skipped_regions") == 4 and s,
                       what="four skipped regions")
    assert isinstance(samples, dict)
    assert pick(samples, "hami_vgpu_memory_used_bytes", pod="good") == 100 * MIB
    assert not [k for k in samples if k[0] == "hami_vgpu_memory_used_bytes" and ("pod", "garbage") in k[1]]
    log = running.log.read_text()
    for words in ("expected at least", "bad magic", "layout version 7", "is 0 bytes"):
        assert words in log
    # The good region broken while watched: skipped too, and the monitor goes on.
    good_region = node.cache_dir(good, "c") / "vgpu.cache"
    with open(good_region, "r+b") as f:
        f.truncate(100)
    wait_for(lambda: pick(running.scrape(), "hami_monitor_skipped_regions") == 5, what="the truncated region")
    assert running.process.poll() is None


# ---- resizes, with the monitor in this process --------------------------------------------


@pytest.fixture
def inproc(node: SimNode) -> Iterator[tuple[NodeMonitor, PodIndex]]:
    pods = PodIndex()
    monitor = NodeMonitor(MonitorOptions(root=node.hook_path / "containers", scan_interval_s=0.5), pods)
    pods.on_change = monitor.wake
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,), daemon=True)
    thread.start()
    yield monitor, pods
    stop.set()
    monitor.wake()
    thread.join(5)
    monitor.close()


def _resized(pod: dict[str, object], memory: int, cores: int) -> dict[str, object]:
    import copy

    changed = copy.deepcopy(pod)
    annotations = changed["metadata"]["annotations"]  # type: ignore[index]
    annotations[keys.DEVICES_ALLOCATED] = encode_pod_devices(
        ((ContainerDevice(gpu_uuid(0), "NVIDIA", memory, cores),),))
    return changed


def test_resize_up_and_down_reaches_a_running_container(node: SimNode,
                                                        inproc: tuple[NodeMonitor, PodIndex]) -> None:
    monitor, pods = inproc
    pod = node.add_pod("p", {"c": [Gpu(0, 1000, 0)]})
    pods.replace([pod])
    worker = node.start(pod, "c")
    region = node.cache_dir(pod, "c") / "vgpu.cache"
    assert worker.send("alloc 800") == "alloc ok"
    assert worker.send("alloc 400") == "alloc oom"

    pods.upsert(_resized(pod, 2000, 0))
    wait_for(lambda: shared_region.read_region(region).devices[0].limit_bytes == 2000 * MIB, what="the new limit")
    assert worker.send("alloc 400") == "alloc ok"  # the same process, no restart
    assert worker.send("info") == f"info total={2000 * MIB} free={800 * MIB}"

    pods.upsert(_resized(pod, 500, 0))  # below the 1200 MiB it holds
    wait_for(lambda: shared_region.read_region(region).devices[0].limit_bytes == 500 * MIB, what="the smaller limit")
    assert shared_region.read_region(region).devices[0].used_bytes == 1200 * MIB  # nothing freed behind its back
    assert worker.send("alloc 1") == "alloc oom"
    assert worker.send("free") == "free ok"
    assert worker.send("alloc 400") == "alloc ok"
    assert worker.send("alloc 200") == "alloc oom"
    # A new process of the same container keeps the resized limit (not its environment's 1000).
    newcomer = node.start(pod, "c")
    assert shared_region.read_region(region).devices[0].limit_bytes == 500 * MIB
    assert newcomer.send("alloc 200") == "alloc oom"
    assert monitor.stats.resizes == 2


def test_resized_cores_reach_the_rate_limiter_without_a_restart(node: SimNode,
                                                                inproc: tuple[NodeMonitor, PodIndex]) -> None:
    _, pods = inproc
    pod = node.add_pod("p", {"c": [Gpu(0, 1000, 0)]})
    pods.replace([pod])
    worker = node.start(pod, "c", LIBVGPU_CONTROL_PERIOD_MS="50")
    uncapped = float(worker.send("busy 1").split("=")[1])
    assert uncapped > 0.6
    pods.upsert(_resized(pod, 1000, 30))
    region = node.cache_dir(pod, "c") / "vgpu.cache"
    wait_for(lambda: shared_region.read_region(region).devices[0].sm_limit == 30, what="the core limit")
    worker.send("busy 1")  # the controller measures and settles
    capped = float(worker.send("busy 1.5").split("=")[1])
    assert 0.15 < capped < 0.45, capped


def test_layout_has_room_for_what_the_monitor_reads() -> None:
    assert ctypes.sizeof(shared_region.VgpuRegion) == shared_region.REGION_SIZE == 41032


def test_libvgpu_writes_the_region_file_when_a_task_wakes_up(node: SimNode) -> None:
    """What the monitor's quick reaction rests on: a launch after 100 ms without one raises an
    inotify event on the region; launches in a busy stretch raise none."""
    from inotify_simple import INotify
    from inotify_simple import flags as inotify_flags

    pod = node.add_pod("p", {"c": [Gpu(0, 1000)]})
    worker = node.start(pod, "c", priority=0)
    watcher = INotify()
    try:
        watcher.add_watch(str(node.cache_dir(pod, "c")), inotify_flags.MODIFY)
        assert worker.send("launch 0.3 1000").startswith("launch")  # the first launch ever: one event
        events = watcher.read(timeout=1000)
        assert any(e.mask & inotify_flags.MODIFY and e.name == "vgpu.cache" for e in events)
        assert watcher.read(timeout=200) == []  # none for the launches that followed, 1 ms apart
        time.sleep(0.25)
        worker.send("launch 0.05 1000")  # after 250 ms idle: an event again
        assert watcher.read(timeout=1000)
        stamps = shared_region.read_region(node.cache_dir(pod, "c") / "vgpu.cache").device(0)
        assert stamps is not None and stamps.last_launch_ns[0] > 0 and stamps.last_launch_ns[1] == 0
    finally:
        watcher.close()


def test_core_limit_switching_lifts_the_cap_of_a_task_running_alone(
        node: SimNode, monitor: Callable[..., RunningMonitor]) -> None:
    alone_pod = node.add_pod("alone", {"c": [Gpu(0, 1000, 30)]})
    forced_pod = node.add_pod("forced", {"c": [Gpu(1, 1000, 30)]})
    running = monitor("--pods", str(node.pods_file()), "--core-limit-switching")
    alone = node.start(alone_pod, "c", LIBVGPU_CONTROL_PERIOD_MS="50")
    forced = node.start(forced_pod, "c", device=0, LIBVGPU_CONTROL_PERIOD_MS="50",
                        GPU_CORE_UTILIZATION_POLICY="force")
    alone.send("launch 0.2 1000")  # running: the monitor lifts its cap
    wait_for(lambda: pick(running.scrape(), "hami_container_device_core_limit_relaxed", pod="alone") == 1,
             what="the cap lifted")
    alone.start("busy 2")
    forced.start("busy 2")
    assert float(alone.answer().split("=")[1]) > 0.6  # well past its 30 %
    assert float(forced.answer().split("=")[1]) < 0.45  # GPU_CORE_UTILIZATION_POLICY=force keeps it
