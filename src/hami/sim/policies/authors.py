"""The FGD authors' baselines, scored as their simulator scores them (the published figures come
from these): github.com/hkust-adsl/kubernetes-scheduler-simulator, `pkg/simulator/plugin/`.

Each scores every node that fits with an integer (higher wins); ties go to the first node in the
fixed order (kube-scheduler's `selectHost` as the authors edited it: the smallest node name).
On the chosen node a sharing task takes the tightest GPU that fits (the authors' `-gpusel best`,
first index on ties); whole GPUs are any fully free ones (all alike). Resources are normalised
by the cluster's largest node (their `MaxSpecCpu` 128 CPUs and `MaxSpecGpu` 8 GPUs on openb).

- `best-fit-authors` (`best_fit_score.go`): int(100 * (1 - [(cpu_free - cpu) / max_cpu / 2 +
  (gpu_free - gpu) / max_gpu / 2])), gpu_free the node's total free milli-GPU. Their min-max
  normalisation of the scores keeps the order (the range never exceeds 100), so it is left out.
- `dot-product-authors` (`dot_product_score.go`, run with `-dimext merge -norm max`):
  int(100 * (1 - (free . demand) / 2)) over the vectors (CPU, total GPU), each normalised by
  the largest node.
- `gpu-packing-authors` (`gpu_packing_score.go`), the paper's "Packing": a share on an already
  used GPU first (100 - free percent of the GPUs it takes / 10, at least 50), then fully free
  GPUs on a used node (50 - how many, at least 33), then an empty node (33 - its GPU count, at
  least the GPU count: small empty nodes first). CPU-only tasks score 0 everywhere.
"""

from __future__ import annotations

import numpy as np

from hami.model.allocation import PodAllocation
from hami.scheduler.engine import PodContext
from hami.scheduler.state import ClusterState, IntArray
from hami.sim.frag import FULL
from hami.sim.policies.base import Shape, SimContext, fitting_devices, on_node, shape_of, share_on


def best_fit_score(cpu_free: IntArray, gpu_free: IntArray, shape: Shape, max_cpu: int, max_gpu: int) -> IntArray:
    """The authors' BestFit score of nodes with this much free CPU (milli) and GPU (milli, total)."""
    left = (cpu_free - shape.cpu) / max_cpu * 0.5 + (gpu_free - shape.num_gpu * shape.milli) / max_gpu * 0.5
    out: IntArray = ((1.0 - left) * 100.0).astype(np.int64)
    return out


def dot_product_score(cpu_free: IntArray, gpu_free: IntArray, shape: Shape, max_cpu: int, max_gpu: int) -> IntArray:
    """The authors' DotProd score (merged GPU dimension, normalised by the largest node)."""
    dot = (cpu_free / max_cpu) * (shape.cpu / max_cpu) + (gpu_free / max_gpu) * (shape.num_gpu * shape.milli / max_gpu)
    out: IntArray = (100.0 * (1.0 - dot / 2.0)).astype(np.int64)
    return out


def gpu_packing_score(free: IntArray, shape: Shape) -> IntArray:
    """The authors' GpuPacking score of nodes given their GPUs' free milli-GPU (nodes, GPUs; padding
    columns -1). The GPUs a task takes are the tightest that fit, as their score walks them."""
    if shape.num_gpu == 0:
        return np.zeros(len(free), dtype=np.int64)
    real = free >= 0
    gpus = real.sum(axis=1)
    fully_free = (free == FULL).sum(axis=1)
    fits = np.where(free >= shape.milli, free, FULL + 1)
    taken = np.sort(fits, axis=1)[:, : shape.num_gpu]  # the tightest GPUs that fit, ascending
    whole_taken = (taken == FULL).sum(axis=1)
    shared_score = np.maximum(100 - (taken * 100 // FULL).sum(axis=1) // 10, 50)
    used_node_score = np.where(whole_taken > 0, np.maximum(50 - whole_taken, 33), shared_score)
    out: IntArray = np.where(fully_free == gpus, np.maximum(33 - fully_free, fully_free), used_node_score)
    return out


def largest_node(state: ClusterState) -> tuple[int, int]:
    """(CPU milli, GPU milli) of the cluster's largest node, the authors' normalisation."""
    return int(state.node_cpu.max()), int(state.node_core_total.max()) * 10


class _ByNodeScore:
    """Highest node score, first node in the fixed order on ties, then the tightest GPU."""

    def __init__(self, sim: SimContext):
        self.layout = sim.layout

    def scores(self, state: ClusterState, shape: Shape, nodes: IntArray) -> IntArray:
        raise NotImplementedError

    def __call__(self, state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
        if len(fitting) == 0:
            return None
        shape = shape_of(ctx)
        node = int(fitting[np.argmax(self.scores(state, shape, fitting))])
        if not shape.sharing:
            return on_node(state, ctx, node)
        rows = state.rows_of_node(node)
        ok = fitting_devices(state, ctx, np.asarray([node], dtype=np.int64))[rows.start : rows.stop]
        free = (state.totalcore[rows.start : rows.stop] - state.usedcores[rows.start : rows.stop]) * 10
        row = rows.start + int(np.argmin(np.where(ok, free, FULL + 1)))
        return node, share_on(state, ctx, row)


class BestFitAuthors(_ByNodeScore):
    def scores(self, state: ClusterState, shape: Shape, nodes: IntArray) -> IntArray:
        cpu_free = state.node_cpu[nodes] - state.node_cpu_used[nodes]
        gpu_free = (state.node_core_total[nodes] - state.node_usedcores[nodes]) * 10
        return best_fit_score(cpu_free, gpu_free, shape, *largest_node(state))


class DotProductAuthors(_ByNodeScore):
    def scores(self, state: ClusterState, shape: Shape, nodes: IntArray) -> IntArray:
        cpu_free = state.node_cpu[nodes] - state.node_cpu_used[nodes]
        gpu_free = (state.node_core_total[nodes] - state.node_usedcores[nodes]) * 10
        return dot_product_score(cpu_free, gpu_free, shape, *largest_node(state))


class GpuPackingAuthors(_ByNodeScore):
    def scores(self, state: ClusterState, shape: Shape, nodes: IntArray) -> IntArray:
        if shape.num_gpu == 0:
            return np.zeros(len(nodes), dtype=np.int64)
        free = np.append((state.totalcore - state.usedcores) * 10, -1)[self.layout.rows[nodes]]
        return gpu_packing_score(free, shape)
