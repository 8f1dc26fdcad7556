"""Fragmentation as "Beware of Fragmentation" (Weng et al., USENIX ATC 2023) defines it, vectorised.

The workload is a set of task classes m with popularity p_m (num_gpu, gpu_milli per GPU, allowed
models, CPU). For a node n and a class m, the node's free GPU capacity (in milli-GPU) counts as
fragment when the class cannot use it:
- if m cannot run on n at all (model not allowed, too little free CPU, no GPU with enough free
  share, too few fully free GPUs): every free milli-GPU of n is fragment;
- else the free capacity of each GPU whose free share is below what m takes from one GPU
  (gpu_milli for a sharing task, 1000 for a whole-GPU task).
A CPU-only class uses no GPU at all, so to it every free milli-GPU is fragment, whatever the
node's CPU (the rule of the authors' simulator, `GetNodePodFrag`: its published figures, the
FRAG metric included, count it so). `Classes.of(..., cpu_only_rule="exact")` gives the reading
we used before: a CPU-only class finds fragment only where it lacks CPU.
F_n(M) = sum over m of p_m * F_n(m).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hami.scheduler.state import ClusterState
from hami.sim.trace import Tasks
from hami.sim.workload import device_type

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
FULL = 1000


def wholly_free(state: ClusterState, gpus: IntArray | slice = slice(None)) -> npt.NDArray[np.bool_]:
    """Per GPU (of `gpus`, rows of the state): all of its FULL milli-GPU free, what FGD counts as
    a full GPU."""
    out: npt.NDArray[np.bool_] = (state.totalcore[gpus] - state.usedcores[gpus]) * 10 >= FULL
    return out


@dataclass(frozen=True)
class Layout:
    """Per node: its GPU rows padded to the widest node (pad row = an always-empty extra row)."""

    rows: IntArray  # (nodes, width) device rows, pad = n_devices
    model: IntArray  # (nodes,) model id
    models: list[str]
    capacity_milli: int
    kind: IntArray  # (nodes,) node kind id: same model, GPU count, CPU and memory capacity
    kinds: list[tuple[int, int, int, int]]  # per kind: (model id, GPUs, CPU milli, memory MiB)

    @staticmethod
    def of(state: ClusterState) -> Layout:
        n = len(state.nodes)
        width = int(state.sizes.max()) if n else 0
        rows = np.full((n, width), len(state.uuids), dtype=np.int64)
        for i in range(n):
            k = int(state.sizes[i])
            rows[i, :k] = np.arange(int(state.starts[i]), int(state.starts[i]) + k)
        types = [state.types[int(state.starts[i])] for i in range(n)]
        models = sorted(set(types))
        model = np.asarray([models.index(t) for t in types], dtype=np.int64)
        names = [t.removeprefix("openb/").rstrip("/") for t in models]
        keys = list(zip(model.tolist(), state.sizes.tolist(), state.node_cpu.tolist(), state.node_memory.tolist(),
                        strict=True))
        kinds = sorted(set(keys))
        index = {k: i for i, k in enumerate(kinds)}
        return Layout(rows=rows, model=model, models=names, capacity_milli=int(state.totalcore.sum()) * 10,
                      kind=np.asarray([index[k] for k in keys], dtype=np.int64), kinds=kinds)

    def free_milli(self, state: ClusterState) -> IntArray:
        """(nodes, width) free milli-GPU of every GPU (0 for padding)."""
        free = np.append((state.totalcore - state.usedcores) * 10, 0)
        out: IntArray = free[self.rows]
        return out

    def cpu_free(self, state: ClusterState) -> IntArray:
        out: IntArray = state.node_cpu - state.node_cpu_used
        return out


@dataclass(frozen=True)
class Classes:
    """The task classes of the workload with their popularity (sums to 1)."""

    num_gpu: IntArray
    milli: IntArray  # what one GPU must have free for the class: gpu_milli, 1000, or 0 (CPU-only)
    cpu: IntArray
    access: npt.NDArray[np.bool_]  # (classes, models): may the class run on that model
    weight: IntArray  # popularity as integer weights, so that equal fragmentations compare equal
    total: int
    cpu_only_all_free: bool = True  # the authors' rule: every free GPU is fragment to a CPU-only class
    # Derived once, for `fragmentation`: which classes share one GPU, which use none, access
    # by model as (models, classes), and the weights as floats (integer sums stay exact).
    share: npt.NDArray[np.bool_] = field(init=False, repr=False, compare=False)
    cpu_only: npt.NDArray[np.bool_] = field(init=False, repr=False, compare=False)
    access_by_model: npt.NDArray[np.bool_] = field(init=False, repr=False, compare=False)
    weight_f: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "share", (self.num_gpu == 1) & (self.milli < FULL))
        object.__setattr__(self, "cpu_only", self.num_gpu == 0)
        object.__setattr__(self, "access_by_model", np.ascontiguousarray(self.access.T))
        object.__setattr__(self, "weight_f", self.weight.astype(np.float64))

    @property
    def p(self) -> FloatArray:
        out: FloatArray = self.weight / self.total
        return out

    @staticmethod
    def of(
        tasks: Tasks, layout: Layout, coverage: float = 0.95, weight: str = "count", cpu_only_rule: str = "authors"
    ) -> Classes:
        """The most popular classes that cover `coverage` of the tasks (as the authors' simulator does:
        classes keyed by CPU, share, GPU count and models, most popular first, ties in a fixed order).

        weight "count" is the paper's popularity; "demand" weighs each class by its GPU demand too.
        cpu_only_rule "authors" counts every free GPU as fragment to a CPU-only class; "exact"
        only when the node lacks the class's CPU.
        """
        counts: dict[tuple[int, int, str, int], int] = {}
        for key in zip(tasks.num_gpu.tolist(), tasks.gpu_milli.tolist(), tasks.gpu_spec,
                       tasks.cpu_milli.tolist(), strict=True):
            w = 1 if weight == "count" else 1 + key[0] * key[1] // 100
            counts[key] = counts.get(key, 0) + w
        # Most popular first; ties as the authors' sort.Reverse order them: larger CPU, share,
        # GPU count, model string first. The order decides which classes make the cut.
        ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0][3], kv[0][1], kv[0][0], kv[0][2]), reverse=True)
        total = sum(counts.values())
        chosen: list[tuple[tuple[int, int, str, int], int]] = []
        cum = 0
        for key, c in ordered:
            chosen.append((key, c))
            cum += c
            if cum >= coverage * total:
                break
        type_names = [device_type(m) for m in layout.models]
        access = np.ones((len(chosen), len(layout.models)), dtype=bool)
        for k, ((_, _, spec, _), _) in enumerate(chosen):
            if spec:
                allowed = {device_type(m) for m in spec.split("|")}
                access[k] = [t in allowed for t in type_names]
        weights = np.asarray([c for _, c in chosen], dtype=np.int64)
        return Classes(
            num_gpu=np.asarray([k[0] for k, _ in chosen], dtype=np.int64),
            milli=np.asarray([0 if k[0] == 0 else (k[1] if k[0] == 1 else FULL) for k, _ in chosen], dtype=np.int64),
            cpu=np.asarray([k[3] for k, _ in chosen], dtype=np.int64),
            access=access,
            weight=weights,
            total=int(weights.sum()),
            cpu_only_all_free=cpu_only_rule == "authors",
        )


def below(free: IntArray, milli: IntArray) -> IntArray:
    """(…, classes): free capacity of GPUs whose free share is below each class's need, summed over GPUs."""
    f = free[..., None]
    out: IntArray = np.where(f < milli, f, 0).sum(axis=-2)
    return out


def fragmentation(
    classes: Classes,
    total: IntArray,
    below_sum: IntArray,
    max_free: IntArray,
    full_free: IntArray,
    cpu_free: IntArray,
    model: IntArray,
) -> FloatArray:
    """F(M) per entry, from per-entry summaries: total free, per-class sum below need, the largest
    free share of one GPU, the number of fully free GPUs, free CPU and the GPU model."""
    gpu_ok = np.where(classes.share, max_free[:, None] >= classes.milli, full_free[:, None] >= classes.num_gpu)
    if classes.cpu_only_all_free:
        gpu_ok &= ~classes.cpu_only
    ok = classes.access_by_model[model] & (cpu_free[:, None] >= classes.cpu) & gpu_ok
    # Integer amounts, summed exactly in floating point (they stay far below 2**53): equal
    # fragmentations compare equal.
    frag = np.where(ok, below_sum, total[:, None]).astype(np.float64)
    out: FloatArray = (frag @ classes.weight_f) / classes.total
    return out


def node_fragmentation(state: ClusterState, layout: Layout, classes: Classes) -> FloatArray:
    """F_n(M) of every node, in milli-GPU."""
    free = layout.free_milli(state)
    return fragmentation(
        classes, free.sum(axis=1), below(free, classes.milli), free.max(axis=1, initial=0),
        (free >= FULL).sum(axis=1), layout.cpu_free(state), layout.model,
    )
