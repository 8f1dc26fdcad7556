"""Our policy, `fgd-balance`: the authors' FGD plus what its fragmentation measure cannot see.

FGD (Weng et al., ATC 2023, as the authors run it: hami.sim.policies.fgd) scores a placement by
how much the GPU capacity that the typical task cannot use grows. It looks at GPUs, one node at
a time, and keeps only the task classes that make up 95 % of the tasks. We add four costs to
its growth, each in the same unit (milli-GPU), and then take the authors' integer score, so
that near-ties still fall to the first node in the fixed order (which is what packs):

1. **Unfed GPU** (`unfed`). A node whose free CPU or memory runs out first strands its free
   GPUs. The workload's GPU tasks need `cpu_per_gpu` milli-CPU and `mem_per_gpu` MiB per
   milli-GPU; the free GPU that the node's free CPU and memory can feed at those rates is
   min(cpu_free / cpu_per_gpu, mem_free / mem_per_gpu); the rest is unfed. The cost is the
   growth of the unfed GPU, times UNFED_WEIGHT: CPU-hungry tasks (and CPU-only ones) go where
   CPU is plentiful, CPU-light ones where it is short. FGD sees CPU only as a cliff (a node
   that cannot host a class's CPU at all). When the workload's CPU nears the cluster's
   (openb cpu235, cpu300), the CPU-only tasks compete for the same CPU: theirs joins the
   rates, in full once the workload's CPU matches the cluster's (`feed_rates`).
2. **Scarce node kinds** (`Pressure`). FGD is local: it does not know that other tasks can run
   only on some node kinds (a GPU model asked for by name, the only nodes with enough CPU for
   a large task). Every task type spreads its share of the demand over the free capacity of
   the node kinds it can run on; a kind's pressure is the demand it receives per free
   milli-GPU, relative to the cluster's. Placing d milli-GPU costs d * (pressure - the lowest
   pressure among the candidates) * PRESSURE_WEIGHT: flexible tasks leave the contested kinds
   to the tasks that need them, more so as those kinds fill up.
3. **Places for the multi-GPU tasks** (`Pressure.guard`). A multi-GPU task needs a node with
   that many wholly free GPUs and its CPU and memory free; the large ones fit only a few node
   kinds. A placement that takes such a place costs the task's size times the chance that a
   multi-GPU task will then miss one: none while places are plentiful, all of it once there
   are no more of them than the tasks still to come that need them (every type that can only
   use the same kinds counts) plus one. The tasks still to come are those that the free GPU,
   CPU and memory can still host. Any task pays it, CPU-only ones included.
4. **Packing patterns** (`hami.sim.policies.patterns`). FGD asks whether a GPU's free share
   can host the typical task, not whether the shares it leaves add up: a 0.47 GPU beside a
   0.32 leaves 0.21 that almost nothing fills, beside another 0.47 only 0.06. The best mix of
   whole-GPU patterns for the workload's sizes is a linear program; its prices give each free
   share a worth, and a sharing task costs PATTERN_WEIGHT times the worth it gives up beyond
   its own net value. Zero where a best pattern puts it, so FGD decides among those.

Every task class counts (no 95 % cut): the 8-GPU tasks are 0.5 % of the openb tasks but 6 %
of its GPU demand. docs/simulation.md has the measurements, the ablation and what did not work.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hami.scheduler.state import ClusterState, IntArray
from hami.sim.frag import Classes, FloatArray, Layout, wholly_free
from hami.sim.policies.base import Shape, SimContext
from hami.sim.policies.fgd import FGD, first_best
from hami.sim.policies.patterns import Patterns
from hami.sim.trace import Tasks
from hami.sim.workload import task_kind

NAME = "fgd-balance"
SUMMARY = ("ours: FGD over every class + GPU that CPU/memory cannot feed + demand on scarce node kinds "
           "+ the LP's packing patterns")
BoolArray = npt.NDArray[np.bool_]
LOAD_FROM, LOAD_FULL = 0.9, 1.0  # feed_rates: the CPU loads where the CPU-only tasks start and finish joining


def feed_rates(tasks: Tasks, layout: Layout | None = None) -> tuple[float, float]:
    """(milli-CPU, MiB) per milli-GPU that the free GPU will need from its node.

    The GPU tasks' own rates, taken together. When the workload's CPU, CPU-only tasks included,
    nears what the cluster has per GPU (`cpu_load`, given the `layout`), the CPU-only tasks
    compete for the same CPU, so their CPU and memory join the rates: none up to a load of
    LOAD_FROM, all of it from LOAD_FULL on, where the workload needs all of the cluster's CPU
    (all of it at every load refuses multi-GPU tasks early on multigpu30, see docs/simulation.md).
    """
    gpu = tasks.num_gpu > 0
    demand = float(tasks.gpu_demand_milli[gpu].sum())
    if demand == 0:
        return float("inf"), float("inf")
    cpu, mem = float(tasks.cpu_milli[gpu].sum()) / demand, float(tasks.memory_mib[gpu].sum()) / demand
    if layout is None:
        return cpu, mem
    share = float(np.clip((cpu_load(tasks, layout) - LOAD_FROM) / (LOAD_FULL - LOAD_FROM), 0, 1))
    cpu_all, mem_all = workload_rates(tasks)
    return cpu + share * (cpu_all - cpu), mem + share * (mem_all - mem)


def workload_rates(tasks: Tasks) -> tuple[float, float]:
    """(milli-CPU, MiB) per milli-GPU of the whole workload, CPU-only tasks included; (0, 0)
    without GPU demand."""
    demand = float(tasks.gpu_demand_milli.sum())
    if demand == 0:
        return 0.0, 0.0
    return float(tasks.cpu_milli.sum()) / demand, float(tasks.memory_mib.sum()) / demand


def cpu_load(tasks: Tasks, layout: Layout) -> float:
    """The workload's CPU per milli-GPU (every task) over the cluster's: above 1, CPU runs out
    before GPU does."""
    node_cpu = float(np.asarray([layout.kinds[k][2] for k in layout.kind.tolist()], dtype=np.float64).sum())
    if node_cpu == 0:
        return 0.0
    return workload_rates(tasks)[0] / (node_cpu / layout.capacity_milli)


def unfed(gpu_free: FloatArray, cpu_free: FloatArray, mem_free: FloatArray, cpu_per_gpu: float,
          mem_per_gpu: float) -> FloatArray:
    """Free milli-GPU that the free CPU and memory cannot feed at the workload's rates."""
    fed = np.minimum(cpu_free / cpu_per_gpu, mem_free / mem_per_gpu)
    out: FloatArray = np.maximum(0.0, gpu_free - fed)
    return out


class Pressure:
    """Demand on node kinds against their free capacity, from the workload's task types."""

    def __init__(self, layout: Layout, tasks: Tasks):
        kinds = layout.kinds
        model = np.asarray([k[0] for k in kinds])
        gpus = np.asarray([k[1] for k in kinds])
        cpu = np.asarray([k[2] for k in kinds])
        memory = np.asarray([k[3] for k in kinds])
        types: dict[tuple[int, int, str, int, int], int] = {}
        for t in range(len(tasks)):
            key = task_kind(tasks, t)
            types[key] = types.get(key, 0) + 1
        total = float(tasks.gpu_demand_milli.sum()) or 1.0
        access: list[BoolArray] = []
        rate: list[float] = []
        size: list[float] = []
        need: list[tuple[int, int, int]] = []  # (GPUs, milli-CPU, MiB) of one task
        for (n, milli, spec, c, mem), times in types.items():
            if n == 0:
                continue
            allowed: BoolArray = np.ones(len(kinds), dtype=bool)
            if spec:
                allowed = np.isin(model, [layout.models.index(m) for m in spec.split("|") if m in layout.models])
            can = allowed & (gpus >= n) & (cpu >= c) & (memory >= mem)
            if can.any():
                access.append(can)
                rate.append(n * milli * times / total)
                size.append(float(n * milli))
                need.append((n, c, mem))
        self.kind = layout.kind
        self.kinds = len(kinds)
        self.access = np.asarray(access, dtype=np.float64).reshape(-1, len(kinds))  # (task types, kinds)
        self.rate = np.asarray(rate)  # each type's share of the GPU demand
        # The whole workload's milli-CPU and MiB per milli-GPU: how much of the free GPU the free
        # CPU and memory can still bring tasks to.
        self.workload_cpu_per_gpu, self.workload_mem_per_gpu = workload_rates(tasks)
        self.hosted = True  # the ablation's switch: False expects tasks for all of the free GPU
        self.size = np.asarray(size)  # milli-GPU of one task of the type
        # The multi-GPU types, for the guard: they need nodes with that many wholly free GPUs.
        multi = np.asarray([n >= 2 for n, _, _ in need], dtype=bool)
        self.multi_access = self.access[multi] > 0  # (multi-GPU types, kinds)
        self.multi_rate, self.multi_size = self.rate[multi], self.size[multi]
        columns = np.asarray([need[i] for i in np.flatnonzero(multi)], dtype=np.int64).reshape(-1, 3)
        self.multi_need = np.maximum(columns, 1).T[:, :, None]  # (GPUs / CPU / memory, types, 1)
        # within[w, v]: type v may run only on kinds that type w may use, so wherever a task of
        # v goes it takes one of w's places (v = w included).
        access_int = self.multi_access.astype(np.int64)
        shared = access_int @ access_int.T
        self.within = (shared == access_int.sum(axis=1)[:, None]).T.astype(np.float64)
        # total_places' memory: the free capacity it last saw, per node, and its places there.
        self._free: IntArray | None = None
        self._per_node: IntArray = np.zeros((0, 0), dtype=np.int64)
        self._totals: IntArray = np.zeros(0, dtype=np.int64)

    def per_node(self, state: ClusterState) -> FloatArray:
        """Each node kind's pressure now (1.0 = the cluster's), per node."""
        free = ((state.node_core_total - state.node_usedcores) * 10).astype(np.float64)
        by_kind = np.bincount(self.kind, weights=free, minlength=self.kinds).astype(np.float64)
        return kind_pressure(self.access, self.rate, by_kind)[self.kind]

    def places(self, kind: IntArray, whole_free: IntArray, cpu_free: IntArray, mem_free: IntArray) -> IntArray:
        """(multi-GPU types, nodes): how many tasks of each type fit in each node's wholly free
        GPUs, free CPU and free memory (none on kinds the type may not use)."""
        gpus, cpu, mem = self.multi_need
        fit = np.minimum(np.minimum(whole_free[None, :] // gpus, cpu_free[None, :] // cpu), mem_free[None, :] // mem)
        out: IntArray = np.where(self.multi_access[:, kind], fit, 0)
        return out

    def total_places(self, whole_free: IntArray, cpu_free: IntArray, mem_free: IntArray) -> IntArray:
        """Per multi-GPU type, its places over all nodes. Kept per node between calls: a placement
        changes one node, so only the nodes whose free GPUs, CPU or memory changed are recounted
        (recounting types x nodes before every placement was a fifth of fgd-balance's time)."""
        free = np.stack([whole_free, cpu_free, mem_free])
        if self._free is None or self._free.shape != free.shape:
            self._per_node = self.places(self.kind, whole_free, cpu_free, mem_free)
            self._totals = self._per_node.sum(axis=1)
        else:
            changed = np.flatnonzero((free != self._free).any(axis=0))
            if changed.size:
                fresh = self.places(self.kind[changed], whole_free[changed], cpu_free[changed], mem_free[changed])
                self._totals = self._totals + (fresh - self._per_node[:, changed]).sum(axis=1)
                self._per_node[:, changed] = fresh
        self._free = free
        return self._totals

    def guard(self, state: ClusterState, nodes: IntArray, gpus_taken: IntArray, cpu: int, memory: int) -> FloatArray:
        """Per candidate node: the milli-GPU that a placement there taking `gpus_taken` wholly free
        GPUs, `cpu` milli-CPU and `memory` MiB may take from the multi-GPU tasks.

        A multi-GPU type w has P places (`places`, over all nodes). N = 1 + how many tasks the
        remaining free capacity would receive, at their share of the demand, of the types that can
        run only where w can (w included: they take w's places wherever they go). That capacity is
        the free GPU, or less where the free CPU or memory, at the workload's rates, can bring tasks
        to less of it (when CPU runs short, fewer tasks still come). The chance that
        one place fewer is missed is (2N - P) / N, clipped to [0, 1]: none while P >= 2N, certain
        once P <= N. The cost is, for the type it hurts most, that chance times the places the
        placement takes times the type's size."""
        if not len(self.multi_size):
            return np.zeros(len(nodes))
        whole_free = np.add.reduceat(wholly_free(state).astype(np.int64), state.starts[:-1])
        cpu_free = state.node_cpu - state.node_cpu_used
        mem_free = state.node_memory - state.node_memory_used
        places = self.total_places(whole_free, cpu_free, mem_free)
        free_total = float(((state.node_core_total - state.node_usedcores) * 10).sum())
        if self.hosted and self.workload_cpu_per_gpu > 0:  # 0: tasks that ask no CPU
            free_total = min(free_total, float(cpu_free.sum()) / self.workload_cpu_per_gpu)
        if self.hosted and self.workload_mem_per_gpu > 0:
            free_total = min(free_total, float(mem_free.sum()) / self.workload_mem_per_gpu)
        expected = 1.0 + self.within @ (self.multi_rate * free_total / self.multi_size)
        missed = np.clip((2.0 * expected - places) / expected, 0.0, 1.0)
        if not missed.any():
            return np.zeros(len(nodes))
        kind = self.kind[nodes]
        before = self.places(kind, whole_free[nodes], cpu_free[nodes], mem_free[nodes])
        after = self.places(kind, whole_free[nodes] - gpus_taken, cpu_free[nodes] - cpu, mem_free[nodes] - memory)
        out: FloatArray = ((before - after) * (missed * self.multi_size)[:, None]).max(axis=0)
        return out


def kind_pressure(access: FloatArray, rate: FloatArray, free: FloatArray) -> FloatArray:
    """Per kind: the demand share it receives per unit of free capacity when every task type
    spreads its `rate` over the free capacity of the kinds it may use (`access`, types x kinds),
    relative to the cluster's (total rate of the types that still fit / total free)."""
    reach = access @ free
    live = reach > 0
    load = access.T @ np.where(live, rate / np.maximum(reach, 1.0), 0.0)
    spread = float(rate[live].sum())
    if spread == 0:
        return np.ones(len(free))
    out: FloatArray = load / (spread / max(float(free.sum()), 1.0))
    return out


class FGDBalance(FGD):
    UNFED_WEIGHT = 2.0
    PRESSURE_WEIGHT = 1.0
    GUARD_WEIGHT = 1.0
    PATTERN_WEIGHT = 16.0

    def __init__(self, sim: SimContext, classes: Classes | None = None):
        super().__init__(sim, classes if classes is not None else Classes.of(sim.tasks, sim.layout, coverage=1.0))
        self.cpu_per_gpu, self.mem_per_gpu = feed_rates(sim.tasks, sim.layout)
        self.pressure = Pressure(sim.layout, sim.tasks)
        self.tasks = sim.tasks
        self.patterns: Patterns | None = None  # solved at the first sharing task: it needs the split count

    def pick(self, state: ClusterState, shape: Shape, growth: FloatArray, nodes: IntArray, rows: IntArray) -> int:
        demand = shape.num_gpu * shape.milli
        gpu = ((state.node_core_total[nodes] - state.node_usedcores[nodes]) * 10).astype(np.float64)
        cpu = (state.node_cpu[nodes] - state.node_cpu_used[nodes]).astype(np.float64)
        mem = (state.node_memory[nodes] - state.node_memory_used[nodes]).astype(np.float64)
        rates = self.cpu_per_gpu, self.mem_per_gpu
        unfed_growth = unfed(gpu - demand, cpu - shape.cpu, mem - shape.memory, *rates) - unfed(gpu, cpu, mem, *rates)
        cost = growth + self.UNFED_WEIGHT * unfed_growth
        if shape.sharing and self.PATTERN_WEIGHT:
            cost += self.PATTERN_WEIGHT * self.pattern_loss(state, shape.milli, rows)
        if demand:
            pressure = self.pressure.per_node(state)[nodes]
            cost += self.PRESSURE_WEIGHT * demand * (pressure - pressure.min())
        if self.GUARD_WEIGHT:
            # A share takes a wholly free GPU only if it lands on one; whole GPUs are whole.
            taken = (wholly_free(state, rows).astype(np.int64) if shape.sharing
                     else np.full(len(nodes), shape.num_gpu, dtype=np.int64))
            cost += self.GUARD_WEIGHT * self.pressure.guard(state, nodes, taken, shape.cpu, shape.memory)
        return first_best(cost)

    def pattern_loss(self, state: ClusterState, milli: int, rows: IntArray) -> FloatArray:
        if self.patterns is None:
            self.patterns = Patterns.of(self.tasks, int(state.totalcore.sum()) * 10, int(state.count.max()))
        free = ((state.totalcore[rows] - state.usedcores[rows]) * 10).astype(np.int64)
        return self.patterns.loss(milli, free, (state.count[rows] - state.used[rows]).astype(np.int64))


def with_weights(unfed_weight: float, pressure_weight: float, guard_weight: float, pattern_weight: float,
                 every_class: bool = True, memory: bool = True, cpu_only: bool = True,
                 hosted: bool = True) -> type[FGDBalance]:
    """The policy with other weights (0 turns a part off): for the ablation."""

    class Variant(FGDBalance):
        UNFED_WEIGHT = unfed_weight
        PRESSURE_WEIGHT = pressure_weight
        GUARD_WEIGHT = guard_weight
        PATTERN_WEIGHT = pattern_weight

        def __init__(self, sim: SimContext):
            super().__init__(sim, None if every_class else sim.classes)
            if not cpu_only:
                self.cpu_per_gpu, self.mem_per_gpu = feed_rates(sim.tasks)
            if not memory:
                self.mem_per_gpu = float("inf")
            self.pressure.hosted = hosted

    return Variant


make = FGDBalance
