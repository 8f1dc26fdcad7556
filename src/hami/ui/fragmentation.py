"""Free device capacity that no typical pod of the cluster could use, by the simulator's definition.

The definition is the one `hami simulate` reports (Weng et al., ATC 2023; hami.sim.frag), with the
cluster's own pods as the workload: their requests grouped into classes (devices per container,
share of one device, which device types they accept), weighted by how many pods ask that way, the
most popular classes covering 95 % of the pods. A device's free share is the smaller of its free
compute and free memory (none when its task slots are full); a class needs from one device the
larger of its compute and memory shares, or the whole device when it asks for several whole ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hami.model.requests import NO_PERCENTAGE, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults
from hami.scheduler.state import ClusterState
from hami.sim.frag import FULL, Classes, below, fragmentation

COVERAGE = 0.95


def _share_milli(request_cores: int, memreq: int, percentage: int, device_memory: int) -> int:
    memory = percentage * 10 if percentage != NO_PERCENTAGE else -(-memreq * FULL // max(device_memory, 1))
    return int(min(FULL, max(request_cores * 10, memory, 1)))


def workload_classes(state: ClusterState, pods: Iterable[PodRequest], defaults: PolicyDefaults
                     ) -> tuple[Classes, list[str]] | None:
    """The classes of the pods' device requests, over the node types of `state` (None: no pods)."""
    models = sorted({state.types[int(state.starts[i])] for i in range(len(state.nodes))})
    typical_memory = int(np.median(state.totalmem)) if len(state.totalmem) else 1
    counts: dict[tuple[int, int, tuple[bool, ...]], int] = {}
    for pod in pods:
        try:
            selectors = PodContext.of(pod, defaults).selectors
        except Exception:  # noqa: BLE001 - a pod with malformed annotations is no typical pod
            continue
        access = tuple(selectors.type_allowed(m) for m in models)
        for c in pod.containers:
            if not c.wants_devices:
                continue
            whole = c.nums > 1 or c.coresreq >= 100
            milli = FULL if whole else _share_milli(c.coresreq, c.memreq, c.mem_percentage, typical_memory)
            key = (c.nums, milli, access)
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][:2]))
    chosen, covered, total = [], 0, sum(counts.values())
    for key, count in ordered:
        chosen.append((key, count))
        covered += count
        if covered >= COVERAGE * total:
            break
    weights = np.asarray([c for _, c in chosen], dtype=np.int64)
    classes = Classes(
        num_gpu=np.asarray([k[0] for k, _ in chosen], dtype=np.int64),
        milli=np.asarray([k[1] for k, _ in chosen], dtype=np.int64),
        cpu=np.zeros(len(chosen), dtype=np.int64),
        access=np.asarray([k[2] for k, _ in chosen], dtype=bool).reshape(len(chosen), len(models)),
        weight=weights,
        total=int(weights.sum()),
    )
    return classes, models


def free_milli(state: ClusterState) -> np.ndarray:
    """Per device, its free share in milli-devices."""
    cores = (state.totalcore - state.usedcores) * FULL // np.maximum(state.totalcore, 1)
    memory = (state.totalmem - state.usedmem) * FULL // np.maximum(state.totalmem, 1)
    free = np.minimum(cores, memory)
    return np.where(state.used >= state.count, 0, np.maximum(free, 0)).astype(np.int64)


def by_type(state: ClusterState, pods: Iterable[PodRequest], defaults: PolicyDefaults
            ) -> dict[tuple[str, str], tuple[float, float]]:
    """Per (vendor, type): (fragmented free capacity, free capacity), in whole devices.

    A node counts under the vendor and type of its first device (the simulator's layout); an
    empty dict when no pod asks for devices, since then no capacity is unusable to anyone.
    """
    found = workload_classes(state, pods, defaults)
    if found is None or not len(state.nodes):
        return {}
    classes, models = found
    n = len(state.nodes)
    width = int(state.sizes.max())
    rows = np.full((n, width), len(state.uuids), dtype=np.int64)
    for i in range(n):
        rows[i, : int(state.sizes[i])] = np.arange(int(state.starts[i]), int(state.starts[i + 1]))
    free = np.append(free_milli(state), 0)[rows]
    first = [int(state.starts[i]) for i in range(n)]
    model = np.asarray([models.index(state.types[r]) for r in first], dtype=np.int64)
    frag = fragmentation(classes, free.sum(axis=1), below(free, classes.milli), free.max(axis=1, initial=0),
                         (free >= FULL).sum(axis=1), np.zeros(n, dtype=np.int64), model)
    totals = free.sum(axis=1)
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for i, node in enumerate(state.nodes):
        key = (node.devices[0].vendor, node.devices[0].type)
        fragmented, free_total = out.get(key, (0.0, 0.0))
        out[key] = (fragmented + float(frag[i]) / FULL, free_total + float(totals[i]) / FULL)
    return out
