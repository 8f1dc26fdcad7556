"""The fill experiment of "Beware of Fragmentation": tasks drawn from the workload arrive one by
one, nothing leaves, until the arrived GPU demand reaches a multiple of the cluster's capacity.

Arrival order, per seed: "sample" (default) draws every task at random from the workload's
tasks, with replacement (from the tasks sorted by kind, so that the trace and the built-in model,
its frequency tables, draw the same tasks from the same seed); "authors" is the authors'
simulator's order: every task of the trace once, shuffled, then tasks drawn at random (their
`--shuffle-pod` and workload tuning).
The cluster's nodes are in a random order per seed as well (`ordered_nodes`), which is the
fixed order that policies break ties by.

After every arrival: allocation ratio (allocated GPU capacity / total) and the share of arrived GPU
demand that could not be placed; at every 1% of capacity also the fragmentation (hami.sim.frag).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hami.scheduler.engine import commit, schedule
from hami.scheduler.state import ClusterState
from hami.sim.frag import Classes, Layout, node_fragmentation
from hami.sim.policies.base import PolicySpec, SimContext
from hami.sim.workload import Placer, Workload, build_cluster, ordered_nodes, pod_request, tasks_by_kind

FloatArray = npt.NDArray[np.float64]
STEP = 0.01  # checkpoints every 1% of cluster GPU capacity
ARRIVALS = ("sample", "authors")


@dataclass
class FillResult:
    policy: str
    seed: int
    arrived: FloatArray  # after each arrival: arrived GPU demand / capacity
    allocated: FloatArray  # after each arrival: allocated GPU capacity / capacity
    unallocated: FloatArray  # after each arrival: unplaced GPU demand / arrived GPU demand
    checkpoints: FloatArray  # 0.01, 0.02, ...
    frag: FloatArray  # fragmentation / capacity at each checkpoint
    tasks: int
    seconds: float

    def at(self, multiple: float) -> tuple[float, float]:
        """(allocation ratio, unallocated share) right after the arrival that reached `multiple`."""
        k = int(np.searchsorted(self.arrived, multiple - 1e-9))
        k = min(k, len(self.arrived) - 1)
        return float(self.allocated[k]), float(self.unallocated[k])


def run_fill(
    workload: Workload,
    spec: PolicySpec,
    seed: int,
    until: float = 1.1,
    split_count: int = 10,
    check: Callable[[ClusterState], None] | None = None,
    arrival: str = "sample",
    refused: Callable[[int, float], None] | None = None,
) -> FillResult:
    """Fill until the arrived GPU demand reaches `until` x capacity. `check(state)` runs after
    every arrival; `refused(task, arrived)` for every task that fits nowhere (its index in the
    workload, the arrived demand over capacity before it)."""
    started = time.perf_counter()
    state = ClusterState(build_cluster(ordered_nodes(workload.nodes, seed), split_count))
    layout = Layout.of(state)
    by_kind = tasks_by_kind(workload.tasks)
    tasks = workload.tasks.take(by_kind)  # a trace and its built-in model: the same tasks, in the same order
    classes = Classes.of(tasks, layout)
    chooser = spec.chooser(
        SimContext(layout=layout, classes=classes, tasks=tasks, rng=np.random.default_rng([seed, 1]))
    )
    placer = Placer(state, tasks, spec.defaults, chooser)
    arrivals = arrival_order(len(tasks), seed, arrival)
    capacity = layout.capacity_milli
    demand_of = tasks.gpu_demand_milli
    arrived_l: list[float] = []
    allocated_l: list[float] = []
    unallocated_l: list[float] = []
    frag_l: list[float] = []
    arrived = failed = 0
    next_checkpoint = STEP
    n = 0
    while arrived < until * capacity:
        for t in next(arrivals):
            if arrived >= until * capacity:
                break
            placed = placer.place(f"t{n}", t)
            n += 1
            demand = int(demand_of[t])
            arrived += demand
            if not placed:
                failed += demand
                if refused is not None:
                    refused(int(by_kind[t]), (arrived - demand) / capacity)
            if check is not None:
                check(state)
            arrived_l.append(arrived / capacity)
            allocated_l.append(int(state.usedcores.sum()) * 10 / capacity)
            unallocated_l.append(failed / arrived if arrived else 0.0)
            while arrived >= next_checkpoint * capacity:
                frag_l.append(float(node_fragmentation(state, layout, classes).sum()) / capacity)
                next_checkpoint = round(next_checkpoint + STEP, 10)
    return FillResult(
        policy=spec.name,
        seed=seed,
        arrived=np.asarray(arrived_l),
        allocated=np.asarray(allocated_l),
        unallocated=np.asarray(unallocated_l),
        checkpoints=STEP * np.arange(1, len(frag_l) + 1, dtype=np.float64),
        frag=np.asarray(frag_l),
        tasks=n,
        seconds=time.perf_counter() - started,
    )


def arrival_order(n: int, seed: int, arrival: str = "sample") -> Iterator[list[int]]:
    """Batches of task indices in the order they arrive (endless)."""
    draw = np.random.default_rng(seed)
    if arrival == "authors":
        yield draw.permutation(n).tolist()
    elif arrival != "sample":
        raise ValueError(f"unknown arrival order {arrival!r} (choose from: {', '.join(ARRIVALS)})")
    while True:
        yield draw.integers(n, size=256).tolist()


def run_sequence(
    workload: Workload, spec: PolicySpec, order: list[int], split_count: int = 10, seed: int = 0,
    node_seed: int | None = None,
) -> tuple[ClusterState, list[str | None]]:
    """Place the workload's tasks in the given order (no departures); the final state and each
    task's node (None when it could not be placed). For checks by hand: the nodes stay in the
    list's order unless `node_seed` orders them as the fill with that seed does."""
    nodes = workload.nodes if node_seed is None else ordered_nodes(workload.nodes, node_seed)
    state = ClusterState(build_cluster(nodes, split_count))
    layout = Layout.of(state)
    classes = Classes.of(workload.tasks, layout)
    chooser = spec.chooser(
        SimContext(layout=layout, classes=classes, tasks=workload.tasks, rng=np.random.default_rng([seed, 1]))
    )
    tasks = workload.tasks
    placed: list[str | None] = []
    for n, t in enumerate(order):
        pod = pod_request(f"t{n}", int(tasks.num_gpu[t]), int(tasks.gpu_milli[t]), tasks.gpu_spec[t],
                          int(tasks.cpu_milli[t]), int(tasks.memory_mib[t]))
        decision = schedule(state, pod, spec.defaults, explain=False, chooser=chooser)
        if decision.node is not None:
            commit(state, pod, decision)
        placed.append(decision.node)
    return state, placed
