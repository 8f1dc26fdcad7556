"""Prometheus metrics of the scheduler, with HAMi's names, read from the cache at scrape time.

Quotas as HAMi's scheduler reports them: `hami_resource_quota_used{namespace, quota_name, limit}`
(in MiB or cores, as decisions count them; `limit` is the quota as written, "0" without one)
for every namespace that holds a managed resource, and `hami_resource_quota_limit{namespace,
quota_name}` where a ResourceQuota caps it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hami.scheduler.cache import ClusterCache
from hami.scheduler.quota import QuotaBook

MIB = 1024 * 1024
DEVICE_LABELS = ["node", "device_uuid", "device_index", "device_type"]
POD_LABELS = ["namespace", "pod", "container_index", *DEVICE_LABELS]


class SchedulerCollector(Collector):
    def __init__(self, cache: ClusterCache, quota: QuotaBook | None = None):
        self.cache = cache
        self.quota = quota

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "mem_limit": GaugeMetricFamily("hami_gpu_memory_limit_bytes", "Device memory offered for sharing",
                                           labels=DEVICE_LABELS),
            "core_limit": GaugeMetricFamily("hami_gpu_core_limit_ratio", "Device compute offered (1 = all SMs)",
                                            labels=DEVICE_LABELS),
            "mem_alloc": GaugeMetricFamily("hami_gpu_memory_allocated_bytes", "Device memory allocated to pods",
                                           labels=DEVICE_LABELS),
            "core_alloc": GaugeMetricFamily("hami_gpu_core_allocated_ratio", "Device compute allocated (1 = all SMs)",
                                            labels=DEVICE_LABELS),
            "shared": GaugeMetricFamily("hami_gpu_shared_count", "Tasks sharing the device", labels=DEVICE_LABELS),
            "node_mem": GaugeMetricFamily("hami_node_gpu_memory_allocated_ratio",
                                          "Share of the node's GPU memory allocated", labels=["node"]),
            "node_overview": GaugeMetricFamily("hami_node_gpu_overview", "GPUs registered on the node",
                                               labels=["node"]),
            "vgpu_mem": GaugeMetricFamily("hami_vgpu_memory_allocated_bytes", "Device memory allocated to a container",
                                          labels=POD_LABELS),
            "vgpu_core": GaugeMetricFamily("hami_vgpu_core_allocated_ratio", "Device compute allocated to a container",
                                           labels=POD_LABELS),
            "held": GaugeMetricFamily("hami_preemption_held_devices",
                                      "Devices kept for a preempting pod while its victims terminate",
                                      labels=["namespace", "pod", "node"]),
        }
        with self.cache.lock():
            state = self.cache.state()
            labels_of: dict[tuple[str, str], list[str]] = {}
            for row, uuid in enumerate(state.uuids):
                node = state.names[int(state.dev_node[row])]
                labels = [node, uuid, str(int(state.index[row])), state.types[row]]
                labels_of[(node, uuid)] = labels
                families["mem_limit"].add_metric(labels, float(state.totalmem[row]) * MIB)
                families["core_limit"].add_metric(labels, float(state.totalcore[row]) / 100)
                families["mem_alloc"].add_metric(labels, float(state.usedmem[row]) * MIB)
                families["core_alloc"].add_metric(labels, float(state.usedcores[row]) / 100)
                families["shared"].add_metric(labels, float(state.used[row]))
            for i, node in enumerate(state.names):
                total = float(state.node_mem_total[i])
                families["node_mem"].add_metric([node], float(state.node_usedmem[i]) / total if total else 0.0)
                families["node_overview"].add_metric([node], float(state.sizes[i]))
            for key, holding in self.cache.holdings().items():
                namespace, name = key.split("/")[:2]
                if holding.held:  # kept for a preempting pod: not allocated to it yet
                    families["held"].add_metric([namespace, name, holding.node],
                                                float(len({d.uuid for c in holding.allocation for d in c})))
                    continue
                for position, container in enumerate(holding.allocation):
                    for device in container:
                        device_labels = labels_of.get((holding.node, device.uuid))
                        if device_labels is None:
                            continue
                        pod_labels = [namespace, name, str(position), *device_labels]
                        families["vgpu_mem"].add_metric(pod_labels, float(device.usedmem) * MIB)
                        families["vgpu_core"].add_metric(pod_labels, float(device.usedcores) / 100)
        yield from families.values()
        if self.quota is not None:
            yield from quota_metrics(self.quota)


def quota_metrics(book: QuotaBook) -> Iterator[GaugeMetricFamily]:
    used = GaugeMetricFamily("hami_resource_quota_used", "resourcequota usage for a certain device",
                             labels=["namespace", "quota_name", "limit"])
    limit = GaugeMetricFamily("hami_resource_quota_limit", "resourcequota limit for a certain device",
                              labels=["namespace", "quota_name"])
    for namespace, resources in sorted(book.snapshot().items()):
        for resource, (amount, cap) in sorted(resources.items()):
            used.add_metric([namespace, resource, str(cap or 0)], float(amount))
            if cap is not None:
                limit.add_metric([namespace, resource], float(cap))
    yield used
    yield limit
