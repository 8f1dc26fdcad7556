"""Best-fit: the node left with the least free resources (GPU and CPU shares of the node, summed),
and on it the GPU with the least free share that still fits."""

from __future__ import annotations

import numpy as np

from hami.model.allocation import PodAllocation
from hami.scheduler.engine import PodContext
from hami.scheduler.state import ClusterState, IntArray
from hami.sim.policies.base import SimContext, fitting_devices, on_node, shape_of, share_on


class BestFit:
    def __init__(self, sim: SimContext):
        self.sim = sim

    def __call__(self, state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
        if len(fitting) == 0:
            return None
        shape = shape_of(ctx)
        gpu_cap = np.maximum(state.node_core_total[fitting], 1) * 10
        gpu_free = (state.node_core_total[fitting] - state.node_usedcores[fitting]) * 10 - shape.num_gpu * shape.milli
        cpu_cap = np.maximum(state.node_cpu[fitting], 1)
        cpu_free = state.node_cpu[fitting] - state.node_cpu_used[fitting] - shape.cpu
        score = gpu_free / gpu_cap + cpu_free / cpu_cap
        if not shape.sharing:
            return on_node(state, ctx, int(fitting[np.argmin(score)]))
        ok = fitting_devices(state, ctx, fitting)
        free = (state.totalcore - state.usedcores) * 10
        # Node score first, then the tightest GPU on it: one lexicographic key per device row.
        node_score = np.full(len(state.nodes), np.inf)
        node_score[fitting] = score
        key = np.where(ok, node_score[state.dev_node] * 1e4 + free, np.inf)
        row = int(np.argmin(key))
        return int(state.dev_node[row]), share_on(state, ctx, row)


make = BestFit
