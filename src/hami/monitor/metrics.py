"""The monitor's Prometheus metrics, with HAMi's names and labels (its vGPU monitor's), read
from the regions and the host GPUs at scrape time.

HAMi registers every monitor metric with the constant label zone="vGPU"; so do we.
`hami_container_device_utilization_ratio` and `hami_host_gpu_utilization_ratio` are in
percent (0-100), as HAMi exports them despite the name. Ours, not HAMi's: the per-device
core limit, suspend and relax flags, the container's task priority, and the monitor's own
counters. With `legacy=True` the pre-v2.5 names are exported as well.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterator
from importlib import metadata

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hami.monitor import shared_region
from hami.monitor.host import HostGpu, HostSource
from hami.monitor.node import NodeMonitor
from hami.monitor.pods import ContainerInfo
from hami.monitor.shared_region import RegionError, RegionSnapshot

ZONE = "vGPU"
HOST_LABELS = ["zone", "node", "device_index", "device_uuid", "device_type"]
CONTAINER_LABELS = ["zone", "namespace", "pod", "container", "vdevice_index", "device_uuid"]
LEGACY_HOST_LABELS = ["zone", "nodeid", "deviceidx", "deviceuuid", "devicetype"]
LEGACY_CONTAINER_LABELS = ["zone", "podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid"]


def _version() -> str:
    try:
        return metadata.version("hami")
    except metadata.PackageNotFoundError:
        return "unknown"


class MonitorCollector(Collector):
    def __init__(self, node: str, monitor: NodeMonitor, host: HostSource, legacy: bool = False) -> None:
        self.node = node
        self.monitor = monitor
        self.host = host
        self.legacy = legacy

    def _containers(self) -> list[tuple[ContainerInfo, RegionSnapshot]]:
        found = []
        for directory in self.monitor.containers():
            pods = self.monitor.pods
            info = pods.container(directory.pod_uid, directory.container) if pods is not None else None
            region = directory.region()
            if info is None or region is None:
                continue  # an unknown pod (HAMi leaves these out too), or no process yet
            try:
                found.append((info, shared_region.read_region(region)))
            except (RegionError, OSError):
                continue  # logged by the monitor loop
        return found

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=labels)

        host_mem = gauge("hami_host_gpu_memory_used_bytes", "GPU memory in use on the host", HOST_LABELS)
        host_util = gauge("hami_host_gpu_utilization_ratio", "GPU utilisation on the host, percent", HOST_LABELS)
        host_mem_util = gauge("hami_host_gpu_memory_controller_utilization_ratio",
                              "GPU memory controller utilisation, percent",
                              ["zone", "device_index", "device_uuid", "device_type"])
        used = gauge("hami_vgpu_memory_used_bytes", "Device memory the container uses", CONTAINER_LABELS)
        limit = gauge("hami_vgpu_memory_limit_bytes", "Device memory limit of the container (0: none)",
                      CONTAINER_LABELS)
        memory = gauge("hami_container_device_memory_bytes", "Device memory the container uses", CONTAINER_LABELS)
        util = gauge("hami_container_device_utilization_ratio", "SM utilisation of the container, percent",
                     CONTAINER_LABELS)
        elapsed = gauge("hami_container_last_kernel_elapsed_seconds", "Seconds since the container's last launch",
                        CONTAINER_LABELS)
        core_limit = gauge("hami_container_device_core_limit_ratio",
                           "SM limit of the container (1 = all SMs; 0 = none)", CONTAINER_LABELS)
        suspended = gauge("hami_container_device_suspended",
                          "1 while the container's low-priority launches wait for priority-0 work", CONTAINER_LABELS)
        relaxed = gauge("hami_container_device_core_limit_relaxed",
                        "1 while the container runs alone and its SM limit is lifted", CONTAINER_LABELS)
        throttled = CounterMetricFamily("hami_container_device_throttled_launches",
                                        "Launches that waited for the SM limit", labels=CONTAINER_LABELS)
        prio = gauge("hami_container_task_priority", "Task priority of the container's processes (0 high, 1 low)",
                     ["zone", "namespace", "pod", "container"])

        gpus = self.host.gpus()
        containers = self._containers()
        # A fake-devices host has no figures: the containers' own are the host's then.
        summed_mem: dict[str, int] = {}
        summed_util: dict[str, float] = {}
        now = time.time_ns()
        for info, snap in containers:
            for i, device in enumerate(info.devices):
                usage = snap.device(i)
                if usage is None:
                    continue
                summed_mem[device.uuid] = summed_mem.get(device.uuid, 0) + usage.used_bytes
                summed_util[device.uuid] = summed_util.get(device.uuid, 0.0) + usage.utilization * 100
        for gpu in gpus:
            labels = [ZONE, self.node, str(gpu.index), gpu.uuid, gpu.type]
            host_mem.add_metric(labels, float(_or(gpu.memory_used_bytes, summed_mem.get(gpu.uuid, 0))))
            host_util.add_metric(labels, float(_or(gpu.utilization, summed_util.get(gpu.uuid, 0.0))))
            if gpu.memory_utilization is not None:
                host_mem_util.add_metric([ZONE, str(gpu.index), gpu.uuid, gpu.type], gpu.memory_utilization)

        legacy_rows: list[tuple[list[str], shared_region.DeviceUsage, float | None]] = []
        for info, snap in containers:
            if snap.processes:
                prio.add_metric([ZONE, info.namespace, info.pod, info.container],
                                float(min(p.priority for p in snap.processes)))
            for i, device in enumerate(info.devices):
                usage = snap.device(i)
                if usage is None:
                    continue
                labels = [ZONE, info.namespace, info.pod, info.container, str(i), device.uuid]
                used.add_metric(labels, float(usage.used_bytes))
                limit.add_metric(labels, float(usage.limit_bytes))
                memory.add_metric(labels, float(usage.used_bytes))
                util.add_metric(labels, usage.utilization * 100)
                last = max(usage.last_launch_ns)
                seconds = max(0.0, (now - last) / 1e9) if last > 0 else None
                if seconds is not None:
                    elapsed.add_metric(labels, seconds)
                core_limit.add_metric(labels, usage.sm_limit / 100 if 0 < usage.sm_limit < 100 else 0.0)
                suspended.add_metric(labels, float(usage.suspended))
                relaxed.add_metric(labels, float(usage.relaxed))
                throttled.add_metric(labels, float(usage.throttled_launches))
                legacy_rows.append((labels, usage, seconds))

        stats = self.monitor.stats
        skipped = gauge("hami_monitor_skipped_regions", "Container regions skipped as unreadable", ["zone"])
        skipped.add_metric([ZONE], float(len(stats.skipped)))
        actions = CounterMetricFamily("hami_monitor_priority_actions", "Suspensions and resumptions written",
                                      labels=["zone", "action"])
        actions.add_metric([ZONE, "suspend"], float(stats.suspends))
        actions.add_metric([ZONE, "resume"], float(stats.resumes))
        resizes = CounterMetricFamily("hami_monitor_limit_writes", "Regions whose limits were rewritten (resizes)",
                                      labels=["zone"])
        resizes.add_metric([ZONE], float(stats.resizes))
        removed = CounterMetricFamily("hami_monitor_removed_caches", "Cache directories of gone pods removed",
                                      labels=["zone"])
        removed.add_metric([ZONE], float(stats.removed))
        build = gauge("hami_build_info", "Build of this monitor",
                      ["zone", "version", "revision", "build_date", "go_version", "compiler", "platform"])
        build.add_metric([ZONE, _version(), "", "", "", sys.implementation.name,
                          f"{sys.platform}/{platform.machine()}"], 1.0)

        yield from (host_mem, host_util, host_mem_util, used, limit, memory, util, elapsed, core_limit, suspended,
                    relaxed, throttled, prio, skipped, actions, resizes, removed, build)
        if self.legacy:
            yield from self._legacy(gpus, summed_mem, summed_util, legacy_rows)

    def _legacy(self, gpus: list[HostGpu], summed_mem: dict[str, int], summed_util: dict[str, float],
                rows: list[tuple[list[str], shared_region.DeviceUsage, float | None]]) -> Iterator[Metric]:
        host_mem = GaugeMetricFamily("HostGPUMemoryUsage", "GPU memory in use on the host", labels=LEGACY_HOST_LABELS)
        host_util = GaugeMetricFamily("HostCoreUtilization", "GPU utilisation on the host, percent",
                                      labels=LEGACY_HOST_LABELS)
        for gpu in gpus:
            labels = [ZONE, self.node, str(gpu.index), gpu.uuid, gpu.type]
            host_mem.add_metric(labels, float(_or(gpu.memory_used_bytes, summed_mem.get(gpu.uuid, 0))))
            host_util.add_metric(labels, float(_or(gpu.utilization, summed_util.get(gpu.uuid, 0.0))))
        used = GaugeMetricFamily("vGPU_device_memory_usage_in_bytes", "Device memory the container uses",
                                 labels=LEGACY_CONTAINER_LABELS)
        limit = GaugeMetricFamily("vGPU_device_memory_limit_in_bytes", "Device memory limit of the container",
                                  labels=LEGACY_CONTAINER_LABELS)
        util = GaugeMetricFamily("Device_utilization_desc_of_container", "SM utilisation of the container, percent",
                                 labels=LEGACY_CONTAINER_LABELS)
        last = GaugeMetricFamily("Device_last_kernel_of_container", "Seconds since the container's last launch",
                                 labels=LEGACY_CONTAINER_LABELS)
        for labels, usage, seconds in rows:
            used.add_metric(labels, float(usage.used_bytes))
            limit.add_metric(labels, float(usage.limit_bytes))
            util.add_metric(labels, usage.utilization * 100)
            if seconds is not None:
                last.add_metric(labels, seconds)
        yield from (host_mem, host_util, used, limit, util, last)


def _or(value: float | None, fallback: float) -> float:
    return fallback if value is None else value
