"""Random-fit: a uniformly random node among those that fit, and a random GPU on it that fits."""

from __future__ import annotations

import numpy as np

from hami.model.allocation import PodAllocation
from hami.scheduler.engine import PodContext
from hami.scheduler.state import ClusterState, IntArray
from hami.sim.policies.base import SimContext, fitting_devices, on_node, shape_of, share_on


class RandomFit:
    def __init__(self, sim: SimContext):
        self.rng = sim.rng

    def __call__(self, state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
        if len(fitting) == 0:
            return None
        node = int(fitting[self.rng.integers(len(fitting))])
        if not shape_of(ctx).sharing:
            return on_node(state, ctx, node)
        ok = fitting_devices(state, ctx, fitting)
        rows = np.flatnonzero(ok[int(state.starts[node]) : int(state.starts[node + 1])]) + int(state.starts[node])
        row = int(rows[self.rng.integers(len(rows))])
        return node, share_on(state, ctx, row)


make = RandomFit
