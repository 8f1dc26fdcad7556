"""FGD, fragmentation gradient descent (Weng et al., USENIX ATC 2023): place each task where the
expected fragmentation of the cluster (hami.sim.frag) grows least, in two readings.

- `fgd`, as the authors' simulator runs it (github.com/hkust-adsl/kubernetes-scheduler-simulator,
  `pkg/simulator/plugin/fgd_score.go`), which is what produced the published figures: each
  candidate gets the integer score int(100 * sigmoid(-growth / 1000)) (growth in milli-GPU), the
  highest score wins, ties go to the first node in a fixed order (kube-scheduler's `selectHost`,
  edited by the authors to take the smallest node name; our fill orders the nodes the same way)
  and, on that node, to the first GPU index with the top score. One score step is about 40
  milli-GPU of growth near zero, so this is "FGD to within a few hundredths of a GPU, then
  first fit". CPU-only task classes count every free GPU as fragment (hami.sim.frag).
- `fgd-exact`, the paper's text: the least growth exactly, ties to the first candidate, and a
  CPU-only class finds fragment only where it lacks CPU.

Only the chosen node changes, so the growth is F_n(after) - F_n(before) on that node. It is
computed for every candidate at once: every (node, GPU) that fits for a sharing task, every
node for a whole-GPU or CPU-only task (on one node all fully free GPUs are alike). Work is kept
small by caching each node's summaries (recomputed only for nodes whose usage changed) and by
evaluating identical candidates once: GPUs of a node with the same free share, and nodes in
the same state (model, free CPU, free shares, which GPUs fit); the first of each is kept, which
is the one the fixed order prefers.
"""

from __future__ import annotations

import numpy as np

from hami.model.allocation import PodAllocation
from hami.scheduler.engine import PodContext
from hami.scheduler.state import ClusterState, IntArray
from hami.sim.frag import FULL, Classes, FloatArray, below, fragmentation
from hami.sim.policies.base import BoolArray, Shape, SimContext, fitting_devices, on_node, shape_of, share_on

_MIX = np.random.default_rng(20230710).integers(1, 2**62, size=64, dtype=np.int64) | 1


class FGD:
    def __init__(self, sim: SimContext, classes: Classes | None = None):
        self.layout = sim.layout
        self.classes = classes if classes is not None else sim.classes
        n, w = self.layout.rows.shape
        k = len(self.classes.p)
        self._used = np.zeros(0, dtype=np.int64)  # the GPUs' usage at the last refresh
        self._cpu = np.full(n, -1, dtype=np.int64)  # -1 forces the first refresh of every node
        self._free = np.zeros((n, w), dtype=np.int64)
        self._below = np.zeros((n, k), dtype=np.int64)
        self._frag = np.zeros(n)
        self._total = np.zeros(n, dtype=np.int64)
        self._max = np.zeros(n, dtype=np.int64)
        self._top2 = np.zeros(n, dtype=np.int64)
        self._argmax = np.zeros(n, dtype=np.int64)
        self._full = np.zeros(n, dtype=np.int64)
        self._partial = np.zeros(n, dtype=np.int64)
        self._hash = np.zeros(n, dtype=np.int64)

    def refresh(self, state: ClusterState) -> None:
        """Recompute the summaries of the nodes whose GPU usage or free CPU changed."""
        layout = self.layout
        cpu = layout.cpu_free(state)
        changed_cpu = cpu != self._cpu
        if len(self._used) == len(state.usedcores):
            rows = np.flatnonzero(state.usedcores != self._used)
            changed_cpu[state.dev_node[rows]] = True
        changed = np.flatnonzero(changed_cpu)
        self._used = state.usedcores.copy()
        if len(changed) == 0:
            return
        f = np.append((state.totalcore - state.usedcores) * 10, 0)[layout.rows[changed]]
        self._free[changed] = f
        self._cpu[changed] = cpu[changed]
        order = np.sort(f, axis=1)
        self._total[changed] = f.sum(axis=1)
        self._max[changed] = order[:, -1]
        self._top2[changed] = order[:, -2] if f.shape[1] > 1 else 0
        self._argmax[changed] = f.argmax(axis=1)
        self._full[changed] = (f >= FULL).sum(axis=1)
        self._partial[changed] = np.where(f < FULL, f, 0).max(axis=1, initial=0)
        self._below[changed] = below(f, self.classes.milli)
        self._frag[changed] = fragmentation(
            self.classes, self._total[changed], self._below[changed], self._max[changed], self._full[changed],
            cpu[changed], layout.model[changed],
        )
        mix = _MIX[: f.shape[1] + 2]
        self._hash[changed] = order @ mix[:-2] + cpu[changed] * mix[-2] + layout.kind[changed] * mix[-1]

    def growth(
        self, state: ClusterState, ctx: PodContext, shape: Shape, fitting: IntArray
    ) -> tuple[FloatArray, IntArray, IntArray]:
        """(growth of F per distinct candidate, its node, its device row or -1), in node order."""
        self.refresh(state)
        layout, classes = self.layout, self.classes
        if shape.sharing:
            ok_rows = np.append(fitting_devices(state, ctx, fitting), False)
            ok: BoolArray = ok_rows[layout.rows[fitting]]
            free = self._free[fitting]
            # Nodes in the same state (kind, free CPU, free shares, which GPUs fit) are alike:
            # keep the first of each.
            key = self._hash[fitting] ^ (ok @ _MIX[: ok.shape[1]])
            _, first = np.unique(key, return_index=True)
            first.sort()
            nodes = fitting[first]
            ok, free = ok[first], free[first]
            # GPUs of one node with the same free share are alike: keep the first of each.
            w = free.shape[1]
            same = (free[:, :, None] == free[:, None, :]) & ok[:, None, :] & np.tri(w, k=-1, dtype=bool)[None]
            ok &= ~same.any(axis=2)
            i, g = np.nonzero(ok)
            node = nodes[i]
            f = free[i, g]
            after_free = f - shape.milli
            max_other = np.where(g == self._argmax[node], self._top2[node], self._max[node])
            m = classes.milli
            s_after = (
                self._below[node]
                - np.where(f[:, None] < m, f[:, None], 0)
                + np.where(after_free[:, None] < m, after_free[:, None], 0)
            )
            after = fragmentation(
                classes, self._total[node] - shape.milli, s_after, np.maximum(max_other, after_free),
                self._full[node] - (f >= FULL), self._cpu[node] - shape.cpu, layout.model[node],
            )
            return after - self._frag[node], node, layout.rows[node, g]
        _, first = np.unique(self._hash[fitting], return_index=True)
        first.sort()
        node = fitting[first]
        cpu_after = self._cpu[node] - shape.cpu
        if shape.num_gpu > 0:
            full_after = self._full[node] - shape.num_gpu
            after = fragmentation(
                classes, self._total[node] - shape.num_gpu * FULL, self._below[node],
                np.where(full_after > 0, FULL, self._partial[node]), full_after, cpu_after, layout.model[node],
            )
        else:
            after = fragmentation(classes, self._total[node], self._below[node], self._max[node], self._full[node],
                                  cpu_after, layout.model[node])
        return after - self._frag[node], node, np.full(len(node), -1, dtype=np.int64)

    def pick(self, state: ClusterState, shape: Shape, growth: FloatArray, nodes: IntArray, rows: IntArray) -> int:
        """The candidate with the highest integer score (the first one in node, GPU order on ties)."""
        return first_best(growth)

    def __call__(self, state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
        if len(fitting) == 0:
            return None
        shape = shape_of(ctx)
        growth, nodes, rows = self.growth(state, ctx, shape, fitting)
        if len(growth) == 0:
            return None
        k = self.pick(state, shape, growth, nodes, rows)
        node, row = int(nodes[k]), int(rows[k])
        if row < 0:
            return on_node(state, ctx, node)
        return node, share_on(state, ctx, row)


class FGDExact(FGD):
    """The paper's text: least growth exactly; a CPU-only class sees fragment only where it lacks CPU."""

    def __init__(self, sim: SimContext):
        super().__init__(sim, Classes.of(sim.tasks, sim.layout, cpu_only_rule="exact"))

    def pick(self, state: ClusterState, shape: Shape, growth: FloatArray, nodes: IntArray, rows: IntArray) -> int:
        return int(np.argmin(growth))


def fgd_score(growth: FloatArray) -> IntArray:
    """The authors' node score: int64(100 * sigmoid((F_before - F_after) / 1000)), F in milli-GPU.

    Written in the order of their Go code (sigmoid first, then times 100, truncated) so that
    values on a step boundary round the same way.
    """
    sigmoid = 1.0 / (1.0 + np.exp(growth / 1000.0))
    out: IntArray = (sigmoid * 100.0).astype(np.int64)
    return out


def first_best(growth: FloatArray) -> int:
    """The authors' choice among candidates in node order: the first with the highest score."""
    return int(np.argmax(fgd_score(growth)))


make = FGD
make_exact = FGDExact
