"""What every simulator policy shares: the task's shape and the devices that fit it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hami.annotations.selectors import Policy
from hami.model.allocation import ContainerDevice, PodAllocation
from hami.scheduler.engine import Chooser, PodContext, PolicyDefaults, fit_pod_on_node, usage_codes
from hami.scheduler.state import ClusterState, IntArray
from hami.sim.frag import Classes, Layout
from hami.sim.trace import Tasks

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SimContext:
    """What a policy may know beyond the engine state: the cluster layout and the workload's classes."""

    layout: Layout
    classes: Classes  # the workload's classes as FGD defines them
    tasks: Tasks  # the workload the tasks are drawn from
    rng: np.random.Generator


@dataclass(frozen=True)
class Shape:
    num_gpu: int
    milli: int  # per GPU: share for a sharing task, 1000 for whole GPUs, 0 for CPU-only
    cpu: int
    memory: int = 0  # MiB of node memory

    @property
    def sharing(self) -> bool:
        return self.num_gpu == 1 and self.milli < 1000


def shape_of(ctx: PodContext) -> Shape:
    requests = [c for c in ctx.pod.containers if c.wants_devices]
    if not requests:
        return Shape(0, 0, ctx.pod.cpu_milli, ctx.pod.memory_mib)
    r = requests[0]
    return Shape(r.nums, min(r.coresreq, 100) * 10, ctx.pod.cpu_milli, ctx.pod.memory_mib)


def fitting_devices(state: ClusterState, ctx: PodContext, fitting: IntArray) -> BoolArray:
    """Per device row: it can take the (single-container) request and its node fits the pod."""
    request = next(c for c in ctx.pod.containers if c.wants_devices)
    codes = usage_codes(request, state.used, state.count, state.usedmem, state.totalmem, state.usedcores,
                        state.totalcore)
    ok: BoolArray = (ctx.static_codes(state) == 0) & (codes == 0)
    node_ok = np.zeros(len(state.nodes), dtype=bool)
    node_ok[fitting] = True
    result: BoolArray = ok & node_ok[state.dev_node]
    return result


def share_on(state: ClusterState, ctx: PodContext, row: int) -> PodAllocation:
    """The allocation of a single-container, one-device pod on device `row`."""
    allocation: list[tuple[ContainerDevice, ...]] = []
    for request in ctx.pod.containers:
        if not request.wants_devices:
            allocation.append(())
            continue
        mem = request.memory_on(int(state.totalmem[row]))
        allocation.append((ContainerDevice(state.uuids[row], request.vendor, mem, request.coresreq),))
    return tuple(allocation)


def on_node(state: ClusterState, ctx: PodContext, node: int) -> tuple[int, PodAllocation] | None:
    """The pod on `node`, devices chosen by HAMi's rules (any free GPUs are equal for whole GPUs)."""
    allocation, _ = fit_pod_on_node(state, node, ctx, ctx.static_codes(state))
    return None if allocation is None else (node, allocation)


@dataclass(frozen=True)
class PolicySpec:
    """A policy: the engine's defaults it runs with and a factory for its chooser."""

    name: str
    summary: str
    defaults: PolicyDefaults
    make: Callable[[SimContext], Chooser]
    paper: str | None = None  # the policy's name in the FGD authors' published results, if it is theirs

    def chooser(self, sim: SimContext) -> Chooser:
        return self.make(sim)


BINPACK = PolicyDefaults(Policy.BINPACK, Policy.BINPACK)
SPREAD = PolicyDefaults(Policy.SPREAD, Policy.SPREAD)
