"""Free device capacity that no typical pod of the cluster could use, by the simulator's definition.

The definition is the one `hami simulate` reports (Weng et al., ATC 2023; hami.sim.frag), with the
cluster's own pods as the workload: their requests grouped into classes (devices per container,
share of one device, which device types they accept), weighted by how many pods ask that way, the
most popular classes covering 95 % of the containers. A device's free share is the smaller of its
free compute and free memory (none when its task slots are full, or it is unhealthy or cordoned).
A class needs from one device the larger of its compute and its memory share of that device,
rounded up to whole percents as the trace's shares are, or the whole device when it asks for
several devices or all of one's compute (the simulator's multi-GPU tasks are whole GPUs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hami.model.requests import NO_PERCENTAGE, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults
from hami.scheduler.state import ClusterState
from hami.sim.frag import FULL, Classes, below, fragmentation

COVERAGE = 0.95


# A request shape: (devices per container, cores, MiB, memory percentage).
Shape = tuple[int, int, int, int]


def workload(pods: Iterable[PodRequest], models: list[tuple[str, str]], defaults: PolicyDefaults
             ) -> dict[tuple[Shape, tuple[bool, ...]], int]:
    """How many vendor asks of containers ask each way, with the (vendor, type) models they accept."""
    counts: dict[tuple[Shape, tuple[bool, ...]], int] = {}
    access_of: dict[tuple[tuple[str, str], ...], tuple[bool, ...] | None] = {}
    own: dict[tuple[tuple[bool, ...], str], tuple[bool, ...]] = {}
    for pod in pods:
        # Most pods share their selectors: decode each set once. HAMi's own hami.io/ annotations
        # (decisions, bind phase, policies) never narrow the device types.
        notes = tuple(sorted(kv for kv in pod.annotations.items() if not kv[0].startswith("hami.io/")))
        if notes not in access_of:
            try:
                ctx = PodContext.of(pod, defaults)
                access_of[notes] = tuple(ctx.selectors_for(vendor).type_allowed(dtype) for vendor, dtype in models)
            except Exception:  # noqa: BLE001 - a pod with malformed annotations is no typical pod
                access_of[notes] = None
        access = access_of[notes]
        if access is None:
            continue
        for container in pod.containers:
            for c in container.asks:  # an ask may run only on its own vendor's devices
                allowed = own.get((access, c.vendor))
                if allowed is None:
                    allowed = own[(access, c.vendor)] = tuple(
                        ok and vendor == c.vendor for ok, (vendor, _) in zip(access, models, strict=True))
                key = ((c.nums, c.coresreq, c.memreq, c.mem_percentage), allowed)
                counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass(frozen=True)
class Shapes:
    """workload() as arrays, one entry per distinct shape."""

    nums: np.ndarray
    cores: np.ndarray
    memreq: np.ndarray
    percentage: np.ndarray
    access_id: np.ndarray
    accesses: np.ndarray  # (distinct accesses, models)
    count: np.ndarray

    @staticmethod
    def of(counts: dict[tuple[Shape, tuple[bool, ...]], int], models: int) -> Shapes:
        accesses = sorted({access for _, access in counts})
        index = {a: i for i, a in enumerate(accesses)}
        shapes = np.asarray([shape for shape, _ in counts], dtype=np.int64).reshape(-1, 4)
        return Shapes(nums=shapes[:, 0], cores=shapes[:, 1], memreq=shapes[:, 2], percentage=shapes[:, 3],
                      access_id=np.asarray([index[a] for _, a in counts], dtype=np.int64),
                      accesses=np.asarray(accesses, dtype=bool).reshape(len(accesses), models),
                      count=np.asarray(list(counts.values()), dtype=np.int64))


def classes_on(shapes: Shapes, device_memory: int) -> Classes:
    """The simulator's task classes on devices with this much memory: the most popular, covering
    95 % of the containers. A share is the larger of compute and memory, rounded up to whole
    percents as the trace's are; several devices, or all of a device's compute, count as whole
    devices (as the simulator's multi-GPU tasks)."""
    memory = np.where(shapes.percentage != NO_PERCENTAGE, shapes.percentage * 10,
                      -(-shapes.memreq * FULL // max(device_memory, 1)))
    share = np.minimum(FULL, np.maximum(np.maximum(shapes.cores * 10, memory), 1))
    share = -(-share // 10) * 10
    milli = np.where((shapes.nums > 1) | (shapes.cores >= 100), FULL, share)
    # One integer per (devices, share, accesses): a flat unique is much faster than by rows.
    width = len(shapes.accesses)
    codes = (shapes.nums * (FULL + 1) + milli) * width + shapes.access_id
    distinct, inverse = np.unique(codes, return_inverse=True)
    weight = np.bincount(inverse.reshape(-1), weights=shapes.count, minlength=len(distinct)).astype(np.int64)
    access_id, rest = distinct % width, distinct // width
    nums, share = rest // (FULL + 1), rest % (FULL + 1)
    order = np.lexsort((share, nums, -weight))
    covered = np.cumsum(weight[order])
    keep = order[: int(np.searchsorted(covered, COVERAGE * covered[-1])) + 1]
    return Classes(
        num_gpu=nums[keep], milli=share[keep], cpu=np.zeros(len(keep), dtype=np.int64),
        access=shapes.accesses[access_id[keep]], weight=weight[keep], total=int(weight[keep].sum()),
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
    models = sorted({(state.devices[r].vendor, state.types[r]) for r in first})
    counts = workload(pods, models, defaults)
    if not counts:
        return {}
    shapes = Shapes.of(counts, len(models))
    width = int(state.sizes.max())
    rows = np.full((n, width), len(state.uuids), dtype=np.int64)
    for i in range(n):
        rows[i, : int(state.sizes[i])] = np.arange(int(state.starts[i]), int(state.starts[i + 1]))
    free = np.append(free_milli(state), 0)[rows]
    model = np.asarray([models.index((state.devices[r].vendor, state.types[r])) for r in first], dtype=np.int64)
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
