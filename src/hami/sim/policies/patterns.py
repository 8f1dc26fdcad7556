"""Packing patterns: what a GPU's free share is worth to the workload's sharing tasks.

Which sharing tasks should share a GPU? For a known mix of task sizes that is a linear program,
the cutting-stock LP: place the sharing tasks and whole GPUs that arrive until the demand reaches
the cluster's capacity into its GPUs, as many milli-GPU as possible, each GPU holding one
*pattern* (a multiset of sizes summing to at most 1000, at most `split` tasks). Its dual prices
say what one task of each size costs in the tasks it displaces; a size's *net value* is its
milli-GPU less that price. On openb's gpushare100 a 0.81-GPU task nets all of its 810 (the LP
leaves 0.81s over, so they displace nothing) while a 0.47 nets 405, since two of them fill a
GPU as well as one 0.81 does. The LP's optimum, the milli-GPU it places over the capacity,
bounds every policy from above: no mean allocation at 1.0 x arrived demand can pass it (the LP
drops every other constraint, and its value is concave in the task counts, so the expected
counts give the highest value).

A GPU's free share f with k task slots left is worth the most net value that sizes fitting in f
can add (a knapsack over the sizes): `worth[k, f]`. Placing a task of size s there gives up

    loss = worth[k, f] - worth[k - 1, f - s] - net[s]    (never below 0)

which is zero when the task goes where an optimal pattern puts it (a 0.47 beside a 0.47) and
grows when it spoils a share that other sizes fit better (a 0.47 into the 0.68 left beside a
0.32, where a 0.65 belongs). hami.sim.policies.ours adds the loss to FGD's growth.

The LP is solved by column generation: HiGHS (through scipy) on the patterns found so far, and a
knapsack on the duals for the best pattern to add, until none adds value. The LP ignores GPU
models, node CPU and which node a GPU is on; those are the other costs' business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog

from hami.sim.frag import FULL
from hami.sim.trace import Tasks

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MAX_ROUNDS = 500  # column generation rounds; openb's traces need under 60


@dataclass(frozen=True)
class Patterns:
    sizes: IntArray  # the sharing tasks' sizes in milli-GPU, ascending
    net: FloatArray  # per size: milli-GPU less the LP's price of the size
    worth: FloatArray  # [slots left, free milli-GPU]: the most net value the sizes can add there
    bound: float  # the LP's placed milli-GPU over the capacity: no policy's mean allocation at 1.0 x is higher

    @staticmethod
    def of(tasks: Tasks, capacity_milli: int, split: int) -> Patterns:
        """The LP's prices for `tasks` (the workload the fill draws from) on a cluster of
        `capacity_milli`, with at most `split` tasks per GPU, for the tasks that arrive until
        their demand reaches the capacity (as many of each as expected)."""
        share = (tasks.num_gpu == 1) & (tasks.gpu_milli < FULL)
        # The engine asks for whole percent of a GPU (hami.sim.workload), so sizes are rounded up to 10.
        found, counts = np.unique(-(-tasks.gpu_milli[share] // 10) * 10, return_counts=True)
        sizes = found.astype(np.int64)
        demand = float(tasks.gpu_demand_milli.sum())
        scale = capacity_milli / demand if demand else 0.0  # arrivals until the demand reaches the capacity
        whole = float(tasks.num_gpu[(tasks.num_gpu > 0) & (tasks.gpu_milli >= FULL)].sum()) * scale
        if len(sizes) == 0:  # no sharing tasks: whole GPUs fill the cluster exactly
            return Patterns(sizes, np.zeros(0), np.zeros((split + 1, FULL + 1)), min(whole * FULL, capacity_milli)
                            / capacity_milli)
        prices, placed = solve(sizes, (counts * scale).astype(np.float64), whole, capacity_milli / FULL, split)
        net = sizes - prices
        return Patterns(sizes, net, _knapsack(sizes, net, split)[0], placed / capacity_milli)

    def loss(self, milli: int, free: IntArray, slots: IntArray) -> FloatArray:
        """Per candidate GPU (its free milli-GPU and task slots left): the net value given up by
        placing a task of `milli` there. Zero for a size the workload does not have."""
        k = int(np.searchsorted(self.sizes, milli))
        if k == len(self.sizes) or self.sizes[k] != milli:
            return np.zeros(len(free))
        slots = np.clip(slots, 1, self.worth.shape[0] - 1)
        out: FloatArray = np.maximum(
            self.worth[slots, free] - self.worth[slots - 1, free - milli] - self.net[k], 0.0)
        return out


def _knapsack(sizes: IntArray, value: FloatArray, split: int) -> tuple[FloatArray, IntArray]:
    """(best, took): best[k, f] is the most `value` of at most k tasks whose sizes sum to at most
    f; took[k, f] the size index the best adds last (-1: none, the value comes from fewer tasks)."""
    best = np.zeros((split + 1, FULL + 1))
    took = np.full((split + 1, FULL + 1), -1, dtype=np.int64)
    for k in range(1, split + 1):
        best[k] = best[k - 1]
        for i, (s, v) in enumerate(zip(sizes.tolist(), value.tolist(), strict=True)):
            if v <= 0:
                continue
            gain = best[k - 1, : FULL + 1 - s] + v
            better = gain > best[k, s:] + 1e-9
            best[k, s:] = np.where(better, gain, best[k, s:])
            took[k, s:] = np.where(better, i, took[k, s:])
    return best, took


def _best_pattern(sizes: IntArray, value: FloatArray, split: int) -> tuple[float, IntArray]:
    """The pattern (count per size) of the most `value` in one GPU, read back from the knapsack."""
    best, took = _knapsack(sizes, value, split)
    counts = np.zeros(len(sizes), dtype=np.int64)
    k, f = split, FULL
    while k > 0:
        i = int(took[k, f])
        if i >= 0:
            counts[i] += 1
            f -= int(sizes[i])
        k -= 1
    return float(best[split, FULL]), counts


def solve(sizes: IntArray, available: FloatArray, whole: float, gpus: float, split: int) -> tuple[FloatArray, float]:
    """(dual prices of the sizes, milli-GPU placed) of: maximise the milli-GPU placed, over
    patterns x >= 0 and whole GPUs w in [0, whole], with sum(pattern counts * x) <= available per
    size and sum(x) + w <= gpus."""
    n = len(sizes)
    columns = [np.eye(n, dtype=np.int64)[i] for i in range(n)]  # one task of each size alone
    prices, placed = np.zeros(n), 0.0
    for _ in range(MAX_ROUNDS):
        pats = np.asarray(columns).T  # (sizes, patterns)
        matrix = np.vstack([np.hstack([pats, np.zeros((n, 1))]), np.ones((1, pats.shape[1] + 1))])
        gain = -np.append(sizes @ pats, FULL).astype(np.float64)
        bounds: list[tuple[float | None, float | None]] = [(0.0, None)] * pats.shape[1] + [(0.0, whole)]
        result = linprog(gain, A_ub=matrix, b_ub=np.append(available, gpus), bounds=bounds, method="highs")
        if result.status != 0 or result.fun is None:  # x = 0 is feasible and the gain bounded: a solver fault
            raise RuntimeError(f"packing LP failed: {result.message}")
        duals = -np.asarray(result.ineqlin.marginals, dtype=np.float64)
        prices, gpu_price, placed = duals[:n], float(duals[n]), -float(result.fun)
        value, counts = _best_pattern(sizes, sizes - prices, split)
        if value <= gpu_price + 1e-6:
            break  # no pattern is worth more than a GPU at these prices: the LP is solved
        columns.append(counts)
    return prices, placed
