"""Our policy, "fgd-demand": fragmentation gradient descent that sees the whole workload.

FGD (Weng et al., ATC 2023) weighs each task class by how often it arrives and, as the authors'
simulator does, keeps only the most popular classes that cover 95% of the tasks. On the openb
trace that drops the 8-GPU tasks: they are 0.5% of the tasks but 6% of the GPU demand, and FGD
happily breaks up the last empty 8-GPU nodes that only they can use. Two changes:

1. every class counts, each weighted by popularity x (1 + its GPU demand in tenths of a GPU), so
   that fragmentation is measured in what the arriving GPU demand (not the arriving task
   count) could not use;
2. ties (many placements leave fragmentation unchanged) go to the node with the largest share
   of its GPU capacity already allocated, which keeps empty nodes empty for the big tasks.
"""

from __future__ import annotations

import numpy as np

from hami.scheduler.state import ClusterState, IntArray
from hami.sim.frag import Classes, FloatArray
from hami.sim.policies.base import SimContext
from hami.sim.policies.fgd import FGD

NAME = "fgd-demand"
SUMMARY = "ours: FGD over every task class weighted by GPU demand, ties to the fullest node"


class FGDDemand(FGD):
    def __init__(self, sim: SimContext):
        super().__init__(sim, Classes.of(sim.tasks, sim.layout, coverage=1.0, weight="demand"))

    def pick(self, state: ClusterState, growth: FloatArray, nodes: IntArray) -> int:
        tied = np.flatnonzero(growth == growth.min())
        candidates = nodes[tied]
        used = state.node_usedcores[candidates] / np.maximum(state.node_core_total[candidates], 1)
        return int(tied[np.argmax(used)])


make = FGDDemand
