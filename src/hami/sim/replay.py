"""Trace replay: tasks arrive at their creation time and leave after their lifetime
(deletion_time - creation_time, counted from when they start); a task that does not fit waits
in a FIFO queue and is retried as resources are freed.

The openb trace is a sample of a cluster's tasks over about 150 days: at its own pace it
loads the cluster to about 1 % (66 GPUs at the peak). `speedup` K makes arrivals K times
denser (creation times divided by K from the first one, lifetimes kept), which multiplies the
load by about K.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from hami.errors import HamiError
from hami.scheduler.state import ClusterState
from hami.sim.frag import Classes, Layout
from hami.sim.policies.base import PolicySpec, SimContext
from hami.sim.workload import Placer, Workload, build_cluster

RETRIES_PER_DEPARTURE = 32  # queued tasks tried after each departure (bounded work per event)
SERIES_POINTS = 200


@dataclass
class ReplayResult:
    policy: str
    times: list[float]  # seconds since the first arrival, SERIES_POINTS samples up to the last arrival
    allocation: list[float]  # allocated GPU capacity / total at those times
    peak: float  # the highest allocation ratio at any moment
    tasks: int
    waited: int  # tasks that could not start at once but did start later
    delays: list[float]  # their queueing delays, seconds
    never_placed: int
    seconds: float

    def delay_stats(self) -> dict[str, float]:
        d = np.asarray(self.delays) if self.delays else np.zeros(1)
        return {"mean": float(d.mean()), "p50": float(np.percentile(d, 50)), "p95": float(np.percentile(d, 95)),
                "max": float(d.max())}


def run_replay(
    workload: Workload, spec: PolicySpec, seed: int = 0, split_count: int = 10, speedup: float = 1.0
) -> ReplayResult:
    tasks = workload.tasks
    if tasks.creation is None or tasks.deletion is None:
        raise HamiError(f"{tasks.source}: the replay needs creation_time and deletion_time columns")
    started = time.perf_counter()
    state = ClusterState(build_cluster(workload.nodes, split_count))
    layout = Layout.of(state)
    classes = Classes.of(tasks, layout)
    chooser = spec.chooser(SimContext(layout=layout, classes=classes, tasks=tasks,
                                      rng=np.random.default_rng([seed, 1])))
    placer = Placer(state, tasks, spec.defaults, chooser)
    capacity = layout.capacity_milli
    lifetime = tasks.deletion - tasks.creation
    t0 = int(tasks.creation.min())
    creation = t0 + ((tasks.creation - t0) / speedup).astype(np.int64)
    # (time, kind, task): departures (kind 0) before arrivals (kind 1) at the same second.
    events: list[tuple[int, int, int]] = [(int(c), 1, i) for i, c in enumerate(creation.tolist())]
    heapq.heapify(events)
    queue: list[int] = []
    series_t: list[float] = []
    series_a: list[float] = []
    delays: list[float] = []

    def start(i: int, now: int) -> bool:
        if not placer.place(f"t{i}", i):
            return False
        heapq.heappush(events, (now + int(lifetime[i]), 0, i))
        return True

    while events:
        now, kind, i = heapq.heappop(events)
        if kind == 0:
            state.remove_pod(f"t{i}")
            kept: list[int] = []
            tries = 0
            for j in queue:
                if tries < RETRIES_PER_DEPARTURE:
                    tries += 1
                    if start(j, now):
                        delays.append(float(now - int(creation[j])))
                        continue
                kept.append(j)
            queue = kept
        elif not start(i, now):
            queue.append(i)
        series_t.append(float(now - t0))
        series_a.append(int(state.usedcores.sum()) * 10 / capacity)
    # The series covers the arrivals (the tail after the last arrival only drains the cluster).
    grid = np.linspace(0.0, float(creation.max() - t0), SERIES_POINTS)
    idx = np.clip(np.searchsorted(np.asarray(series_t), grid, side="right") - 1, 0, max(len(series_t) - 1, 0))
    allocation = [series_a[k] for k in idx.tolist()] if series_a else []
    return ReplayResult(
        policy=spec.name, times=grid.tolist(), allocation=allocation, peak=max(series_a, default=0.0),
        tasks=len(tasks), waited=len(delays),
        delays=delays, never_placed=len(queue), seconds=time.perf_counter() - started,
    )
