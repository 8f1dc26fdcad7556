"""Dot-product (the Tetris heuristic as the FGD authors' simulator scores it): the placement with
the smallest dot product of the task's demand and the node's free resources, both as shares of
the node's capacity: min over (node, GPU) of cpu_demand/cpu_cap * cpu_free/cpu_cap +
gpu_demand * gpu_free (GPU shares). Small products favour nodes where the task's dimensions
are already scarce, which packs."""

from __future__ import annotations

import numpy as np

from hami.model.allocation import PodAllocation
from hami.scheduler.engine import PodContext
from hami.scheduler.state import ClusterState, IntArray
from hami.sim.policies.base import SimContext, fitting_devices, on_node, shape_of, share_on


class DotProduct:
    def __init__(self, sim: SimContext):
        self.sim = sim

    def __call__(self, state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
        if len(fitting) == 0:
            return None
        shape = shape_of(ctx)
        cpu_cap = np.maximum(state.node_cpu, 1).astype(np.float64)
        cpu_term = (shape.cpu / cpu_cap) * ((state.node_cpu - state.node_cpu_used) / cpu_cap)
        if not shape.sharing:
            gpu_free = (state.node_core_total - state.node_usedcores) / np.maximum(state.node_core_total, 1)
            score = cpu_term[fitting] + shape.num_gpu * gpu_free[fitting]
            return on_node(state, ctx, int(fitting[np.argmin(score)]))
        ok = fitting_devices(state, ctx, fitting)
        gpu_free = (state.totalcore - state.usedcores) / 100
        key = np.where(ok, cpu_term[state.dev_node] + (shape.milli / 1000) * gpu_free, np.inf)
        row = int(np.argmin(key))
        return int(state.dev_node[row]), share_on(state, ctx, row)


make = DotProduct
