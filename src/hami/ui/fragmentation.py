"""Free device capacity that no typical pod of the cluster could use, by the simulator's definition.

The definition is the one `hami simulate` reports (Weng et al., ATC 2023; hami.sim.frag), with the
cluster's own pods as the workload: their requests grouped into classes (devices per container,
share of one device, which device types they accept), weighted by how many pods ask that way, the
most popular classes covering 95 % of the pods. A device's free share is the smaller of its free
compute and free memory (none when its task slots are full, or it is unhealthy or cordoned); a
class needs from one device the larger of its compute and its memory share of that device, or the
whole device when it asks for several devices or all of one's compute (the simulator's multi-GPU
tasks are whole GPUs).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hami.model.requests import NO_PERCENTAGE, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults
from hami.scheduler.state import ClusterState
from hami.sim.frag import FULL, Classes, below, fragmentation

COVERAGE = 0.95


def _share_milli(cores: int, memreq: int, percentage: int, device_memory: int) -> int:
    memory = percentage * 10 if percentage != NO_PERCENTAGE else -(-memreq * FULL // max(device_memory, 1))
    return int(min(FULL, max(cores * 10, memory, 1)))


# A request shape: (devices per container, cores, MiB, memory percentage).
Shape = tuple[int, int, int, int]


def workload(pods: Iterable[PodRequest], models: list[str], defaults: PolicyDefaults
             ) -> list[tuple[Shape, tuple[bool, ...], int]]:
    """The most popular request shapes covering 95 % of the device containers: (shape, which
    models it accepts, how many ask that way)."""
    counts: dict[tuple[Shape, tuple[bool, ...]], int] = {}
    for pod in pods:
        try:
            selectors = PodContext.of(pod, defaults).selectors
        except Exception:  # noqa: BLE001 - a pod with malformed annotations is no typical pod
            continue
        access = tuple(selectors.type_allowed(m) for m in models)
        for c in pod.containers:
            if c.wants_devices:
                key = ((c.nums, c.coresreq, c.memreq, c.mem_percentage), access)
                counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0]))
    chosen, covered, total = [], 0, sum(counts.values())
    for (shape, access), count in ordered:
        chosen.append((shape, access, count))
        covered += count
        if covered >= COVERAGE * total:
            break
    return chosen


def classes_on(shapes: list[tuple[Shape, tuple[bool, ...], int]],
               device_memory: int) -> Classes:
    """The simulator's task classes for devices with this much memory: several devices, or all of
    a device's compute, count as whole devices (as the simulator's multi-GPU tasks)."""
    milli = [FULL if n > 1 or cores >= 100 else _share_milli(cores, mem, pct, device_memory)
             for (n, cores, mem, pct), _, _ in shapes]
    weights = np.asarray([count for _, _, count in shapes], dtype=np.int64)
    return Classes(
        num_gpu=np.asarray([shape[0] for shape, _, _ in shapes], dtype=np.int64),
        milli=np.asarray(milli, dtype=np.int64),
        cpu=np.zeros(len(shapes), dtype=np.int64),
        access=np.asarray([access for _, access, _ in shapes], dtype=bool).reshape(len(shapes), -1),
        weight=weights,
        total=int(weights.sum()),
    )


def free_milli(state: ClusterState) -> np.ndarray:
    """Per device, its free share in milli-devices (none on a full, unhealthy or cordoned device)."""
    cores = (state.totalcore - state.usedcores) * FULL // np.maximum(state.totalcore, 1)
    memory = (state.totalmem - state.usedmem) * FULL // np.maximum(state.totalmem, 1)
    free = np.minimum(cores, memory)
    closed = (state.used >= state.count) | ~state.health | state.cordoned
    return np.where(closed, 0, np.maximum(free, 0)).astype(np.int64)


def by_type(state: ClusterState, pods: Iterable[PodRequest], defaults: PolicyDefaults
            ) -> dict[tuple[str, str], tuple[float, float]]:
    """Per (vendor, type): (fragmented free capacity, free capacity), in whole devices.

    A node counts under the vendor and type of its first device (the simulator's layout), and a
    request's memory share is taken of that device's memory. Empty when no pod asks for devices,
    since then no capacity is unusable to anyone.
    """
    n = len(state.nodes)
    if not n:
        return {}
    first = [int(state.starts[i]) for i in range(n)]
    models = sorted({state.types[r] for r in first})
    shapes = workload(pods, models, defaults)
    if not shapes:
        return {}
    width = int(state.sizes.max())
    rows = np.full((n, width), len(state.uuids), dtype=np.int64)
    for i in range(n):
        rows[i, : int(state.sizes[i])] = np.arange(int(state.starts[i]), int(state.starts[i + 1]))
    free = np.append(free_milli(state), 0)[rows]
    model = np.asarray([models.index(state.types[r]) for r in first], dtype=np.int64)
    memory = state.totalmem[first]
    frag = np.zeros(n)
    for device_memory in np.unique(memory).tolist():  # nodes whose devices have the same memory at once
        on = np.flatnonzero(memory == device_memory)
        classes = classes_on(shapes, int(device_memory))
        part = free[on]
        frag[on] = fragmentation(classes, part.sum(axis=1), below(part, classes.milli), part.max(axis=1, initial=0),
                                 (part >= FULL).sum(axis=1), np.zeros(len(on), dtype=np.int64), model[on])
    totals = free.sum(axis=1)
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for i, node in enumerate(state.nodes):
        key = (node.devices[0].vendor, node.devices[0].type)
        fragmented, free_total = out.get(key, (0.0, 0.0))
        out[key] = (fragmented + float(frag[i]) / FULL, free_total + float(totals[i]) / FULL)
    return out
