"""The simulated cluster and workload: nodes as the engine registers them, tasks as engine requests.

Mapping of a trace task to a HAMi request (one container):
- num_gpu == 1 and gpu_milli m < 1000: one shared GPU, gpucores = ceil(m / 10) percent and
  gpumem-percentage = the same percent of the chosen GPU's memory;
- num_gpu == n >= 1 with gpu_milli 1000: n whole GPUs (gpucores 100, gpumem-percentage 100);
- num_gpu == 0: a CPU-only task, no device request (it still needs node CPU and memory);
- gpu_spec "A|B" → annotation nvidia.com/use-gputype: the device types of models A and B;
- cpu_milli, memory_mib → the pod's CPU and memory, checked against the node's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hami.annotations import keys
from hami.errors import HamiError
from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import Chooser, PodContext, PolicyDefaults, feasible_nodes
from hami.scheduler.state import ClusterState
from hami.sim.trace import (
    DEFAULT_NODES,
    DEFAULT_TASKS,
    GPU_MEMORY_MIB,
    IntArray,
    Nodes,
    Tasks,
    read_nodes,
    read_tasks,
)

BUILTIN_MODEL = "sim-openb-workload.json"
SPLIT_COUNT = 10  # HAMi's default deviceSplitCount: at most 10 tasks share one GPU


def device_type(model: str) -> str:
    """The registered type of a GPU of this model; delimited so that no model matches another."""
    return f"openb/{model}/"


def build_cluster(nodes: Nodes, split_count: int = SPLIT_COUNT) -> list[NodeDevices]:
    """Nodes with their GPUs (nodes without GPUs are left out: the engine holds nodes with devices)."""
    cluster = []
    for name, cpu, mem, count, model in zip(
        nodes.names, nodes.cpu_milli.tolist(), nodes.memory_mib.tolist(), nodes.gpus.tolist(), nodes.models,
        strict=True,
    ):
        if count == 0:
            continue
        devices = tuple(
            DeviceInfo(id=f"{name}/gpu{i}", count=split_count, devmem=GPU_MEMORY_MIB[model], devcore=100,
                       type=device_type(model), index=i)
            for i in range(count)
        )
        cluster.append(NodeDevices(name=name, devices=devices, cpu_milli=cpu, memory_mib=mem))
    return cluster


def ordered_nodes(nodes: Nodes, seed: int) -> Nodes:
    """The GPU nodes in a random order drawn from `seed`, each name prefixed with its place ("0042-…").

    The authors' simulator does the same (`syncClusterResourceList`: a random permutation as a
    `%04d-` prefix), and every tie between nodes then falls to the smallest name: a fixed random
    priority. Without it ties follow the node list's order, which the trace sorts by GPU model
    and a rebuilt cluster groups by node kind, and policies that break ties by order would
    measure the list rather than themselves. The permutation applies to the nodes sorted by
    kind (model, GPUs, CPU, memory), so that a trace and its frequency tables (the built-in
    model) get the same order from the same seed.
    """
    kinds = [(nodes.models[i], int(nodes.gpus[i]), int(nodes.cpu_milli[i]), int(nodes.memory_mib[i]))
             for i in range(len(nodes.names))]
    by_kind = np.asarray(sorted((i for i in range(len(kinds)) if kinds[i][1] > 0), key=kinds.__getitem__),
                         dtype=np.int64)
    n = len(by_kind)
    order = by_kind[np.random.default_rng([seed, 2]).permutation(n)] if n else by_kind
    width = max(4, len(str(n - 1)))
    keep = order.tolist()
    return Nodes(
        source=nodes.source,
        names=[f"{place:0{width}d}-{nodes.names[i]}" for place, i in enumerate(keep)],
        cpu_milli=nodes.cpu_milli[order],
        memory_mib=nodes.memory_mib[order],
        gpus=nodes.gpus[order],
        models=[nodes.models[i] for i in keep],
    )


def task_kind(tasks: Tasks, t: int) -> tuple[int, int, str, int, int]:
    """What the simulator sees of a task: (GPUs, milli-GPU each, GPU models, milli-CPU, MiB)."""
    return (int(tasks.num_gpu[t]), int(tasks.gpu_milli[t]), tasks.gpu_spec[t], int(tasks.cpu_milli[t]),
            int(tasks.memory_mib[t]))


def tasks_by_kind(tasks: Tasks) -> IntArray:
    """Task indices sorted by kind (stable): the order the fill draws from, so that a trace and its
    frequency tables (the built-in model, whose tasks come in this order) draw the same tasks."""
    return np.asarray(sorted(range(len(tasks)), key=lambda t: task_kind(tasks, t)), dtype=np.int64)


def share_percent(gpu_milli: int) -> int:
    """gpu_milli of one GPU → HAMi gpucores (and gpumem-percentage): ceil(m / 10) percent."""
    return -(-gpu_milli // 10)


def pod_request(key: str, num_gpu: int, gpu_milli: int, gpu_spec: str, cpu_milli: int, memory_mib: int) -> PodRequest:
    if num_gpu == 0:
        container = ContainerRequest(nums=0)
    elif gpu_milli < 1000:
        pct = share_percent(gpu_milli)
        container = ContainerRequest(nums=1, mem_percentage=pct, coresreq=pct)
    else:
        container = ContainerRequest(nums=num_gpu, mem_percentage=100, coresreq=100)
    annotations = {}
    if gpu_spec and num_gpu > 0:
        annotations[keys.USE_GPUTYPE] = ",".join(device_type(m) for m in gpu_spec.split("|"))
    return PodRequest(key=key, containers=(container,), annotations=annotations, cpu_milli=cpu_milli,
                      memory_mib=memory_mib)


@dataclass(frozen=True)
class Workload:
    nodes: Nodes
    tasks: Tasks
    label: str  # what ran, for the output: the trace file or the built-in model


def load_workload(trace: Path | None, nodes_path: Path | None, trace_dir: Path | None) -> Workload:
    """The trace given, else the shared trace folder's default trace, else the built-in model."""
    if trace is None and trace_dir is not None and (trace_dir / DEFAULT_TASKS).is_file():
        trace = trace_dir / DEFAULT_TASKS
    if trace is None:
        if nodes_path is not None:
            raise HamiError("--nodes needs --trace (the built-in model carries its own node mix)")
        return builtin_workload()
    if nodes_path is None:
        nodes_path = trace.parent / DEFAULT_NODES
        if not nodes_path.is_file():
            raise HamiError(f"{trace}: no node list next to it ({DEFAULT_NODES}); give one with --nodes")
    nodes = read_nodes(nodes_path)
    known = {m for m in nodes.models if m}
    tasks = read_tasks(trace, known_models=known)
    return Workload(nodes=nodes, tasks=tasks, label=f"trace {trace} (nodes {nodes_path})")


def summarize(nodes: Nodes, tasks: Tasks) -> dict[str, Any]:
    """The frequency tables of the built-in model: node mix and task mix, counts not rows."""
    node_mix: dict[tuple[str, int, int, int], int] = {}
    for model, g, c, m in zip(nodes.models, nodes.gpus.tolist(), nodes.cpu_milli.tolist(),
                              nodes.memory_mib.tolist(), strict=True):
        if g > 0:
            node_mix[(model, g, c, m)] = node_mix.get((model, g, c, m), 0) + 1
    task_mix: dict[tuple[int, int, str, int, int], int] = {}
    for t in range(len(tasks)):
        key = task_kind(tasks, t)
        task_mix[key] = task_mix.get(key, 0) + 1
    return {
        "source": "Alibaba cluster-trace-gpu-v2023 (openb): openb_node_list_gpu_node.csv and "
                  "openb_pod_list_default.csv, summarised as frequency tables",
        "node_columns": ["model", "gpu", "cpu_milli", "memory_mib", "count"],
        "nodes": [[*k, v] for k, v in sorted(node_mix.items())],
        "task_columns": ["num_gpu", "gpu_milli", "gpu_spec", "cpu_milli", "memory_mib", "count"],
        "tasks": [[*k, v] for k, v in sorted(task_mix.items())],
    }


def workload_from_model(model: dict[str, Any], label: str) -> Workload:
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    gpus: list[int] = []
    models: list[str] = []
    for gpu_model, g, c, m, count in model["nodes"]:
        for _ in range(int(count)):
            names.append(f"model-node-{len(names):04d}")
            models.append(str(gpu_model))
            gpus.append(int(g))
            cpu.append(int(c))
            mem.append(int(m))
    nodes = Nodes(source=label, names=names, cpu_milli=np.asarray(cpu, dtype=np.int64),
                  memory_mib=np.asarray(mem, dtype=np.int64), gpus=np.asarray(gpus, dtype=np.int64), models=models)
    rows = [r for r in model["tasks"] for _ in range(int(r[5]))]
    tasks = Tasks(
        source=label,
        names=[f"model-task-{i:05d}" for i in range(len(rows))],
        cpu_milli=np.asarray([r[3] for r in rows], dtype=np.int64),
        memory_mib=np.asarray([r[4] for r in rows], dtype=np.int64),
        num_gpu=np.asarray([r[0] for r in rows], dtype=np.int64),
        gpu_milli=np.asarray([r[1] for r in rows], dtype=np.int64),
        gpu_spec=[str(r[2]) for r in rows],
    )
    return Workload(nodes=nodes, tasks=tasks, label=label)


def builtin_workload() -> Workload:
    text = resources.files("hami").joinpath("data", BUILTIN_MODEL).read_text()
    return workload_from_model(json.loads(text), label="built-in openb workload model (frequency tables, "
                                                         "no trace found; give one with --trace)")


def write_builtin_model(trace_dir: Path, out: Path) -> None:
    """Regenerate the built-in model from the shared trace folder (used when the trace changes)."""
    nodes = read_nodes(trace_dir / DEFAULT_NODES)
    tasks = read_tasks(trace_dir / DEFAULT_TASKS)
    out.write_text(json.dumps(summarize(nodes, tasks), indent=None, separators=(",", ":")) + "\n")


class Placer:
    """Places tasks with the engine: feasibility (engine.feasible_nodes) then the policy's chooser,
    then the state counts the pod. The same steps as engine.schedule + engine.commit without the
    per-node reason texts, with each task class decoded once (PodContext per class)."""

    def __init__(self, state: ClusterState, tasks: Tasks, defaults: PolicyDefaults, chooser: Chooser):
        self.state = state
        self.tasks = tasks
        self.defaults = defaults
        self.chooser = chooser
        self.all_nodes = np.arange(len(state.nodes), dtype=np.int64)
        self._contexts: dict[tuple[int, int, str, int, int], PodContext] = {}

    def context(self, t: int) -> PodContext:
        key = task_kind(self.tasks, t)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = PodContext.of(pod_request("class", *key), self.defaults)
        return ctx

    def place(self, key: str, t: int) -> bool:
        """Place task t as pod `key`; False when no node takes it."""
        state = self.state
        ctx = self.context(t)
        feasibility = feasible_nodes(state, ctx, self.all_nodes, ctx.static_codes(state), explain=False)
        choice = self.chooser(state, ctx, self.all_nodes[feasibility.fits])
        if choice is None:
            return False
        node, allocation = choice
        pod = ctx.pod
        state.add_pod(key, state.names[node], allocation, pod.init_count, pod.cpu_milli, pod.memory_mib)
        return True
