"""Reading the openb trace (Alibaba cluster-trace-gpu-v2023) into plain arrays, with validation.

Nodes: `sn,cpu_milli,memory_mib,gpu,model`. Tasks: `name,cpu_milli,memory_mib,num_gpu,gpu_milli`
plus the optional `gpu_spec` (allowed models, `|`-separated), `creation_time`, `deletion_time`
(needed by the replay only). Every problem is reported with the file and the row.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hami.errors import HamiError

IntArray = npt.NDArray[np.int64]

# GPU memory per model in MiB. G2 and G3 are undisclosed internal models: we assume 32 GiB
# (the trace places them in 8-GPU training nodes next to V100M32); G1 is assumed like G2.
GPU_MEMORY_MIB: dict[str, int] = {
    "P100": 16 * 1024,
    "T4": 16 * 1024,
    "V100M16": 16 * 1024,
    "V100M32": 32 * 1024,
    "A10": 24 * 1024,
    "G1": 32 * 1024,
    "G2": 32 * 1024,
    "G3": 32 * 1024,
}

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
TASK_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
DEFAULT_NODES = "openb_node_list_gpu_node.csv"
DEFAULT_TASKS = "openb_pod_list_default.csv"
TRACE_DIR_ENV = "HAMI_TRACE_DIR"


@dataclass(frozen=True)
class Nodes:
    """The cluster: one entry per node."""

    source: str
    names: list[str]
    cpu_milli: IntArray
    memory_mib: IntArray
    gpus: IntArray
    models: list[str]  # "" for a node without GPUs


@dataclass(frozen=True)
class Tasks:
    """The workload: one entry per task. gpu_milli is per GPU (1000 for whole GPUs, 0 for CPU-only)."""

    source: str
    names: list[str]
    cpu_milli: IntArray
    memory_mib: IntArray
    num_gpu: IntArray
    gpu_milli: IntArray
    gpu_spec: list[str]  # "" = any model; else models joined by "|", sorted
    creation: IntArray | None = None
    deletion: IntArray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def gpu_demand_milli(self) -> IntArray:
        """GPU capacity each task asks for, in thousandths of a GPU."""
        demand: IntArray = self.num_gpu * self.gpu_milli
        return demand

    def take(self, rows: IntArray) -> Tasks:
        return Tasks(
            source=self.source,
            names=[self.names[i] for i in rows.tolist()],
            cpu_milli=self.cpu_milli[rows],
            memory_mib=self.memory_mib[rows],
            num_gpu=self.num_gpu[rows],
            gpu_milli=self.gpu_milli[rows],
            gpu_spec=[self.gpu_spec[i] for i in rows.tolist()],
            creation=None if self.creation is None else self.creation[rows],
            deletion=None if self.deletion is None else self.deletion[rows],
        )


def default_trace_dir(start: Path | None = None) -> Path | None:
    """The trace folder: $HAMI_TRACE_DIR, else ../shared/traces/openb next to the project (or above)."""
    env = os.environ.get(TRACE_DIR_ENV)
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for base in [here, *here.parents]:
        candidate = base / "shared" / "traces" / "openb"
        if (candidate / DEFAULT_TASKS).is_file():
            return candidate
        candidate = base.parent / "shared" / "traces" / "openb"
        if (candidate / DEFAULT_TASKS).is_file():
            return candidate
    return None


def _rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise HamiError(f"{path}: empty file (expected a header with {', '.join(required)})")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise HamiError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
            return header, list(reader)
    except OSError as exc:
        raise HamiError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _int(path: Path, line: int, column: str, text: str, minimum: int = 0) -> int:
    text = text.strip()
    try:
        value = int(float(text)) if text else 0
    except ValueError:
        raise HamiError(f"{path}: row {line}: {column} is not a number: {text!r}") from None
    if value < minimum:
        raise HamiError(f"{path}: row {line}: {column} must be >= {minimum}, got {value}")
    return value


def read_nodes(path: Path) -> Nodes:
    header, rows = _rows(path, NODE_COLUMNS)
    col = {name: header.index(name) for name in NODE_COLUMNS}
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    gpus: list[int] = []
    models: list[str] = []
    seen: set[str] = set()
    for k, row in enumerate(rows):
        line = k + 2  # the header is line 1
        if len(row) < len(header):
            raise HamiError(f"{path}: row {line}: {len(row)} fields, expected {len(header)}")
        name = row[col["sn"]].strip()
        if not name:
            raise HamiError(f"{path}: row {line}: empty node name (sn)")
        if name in seen:
            raise HamiError(f"{path}: row {line}: node {name} given twice")
        seen.add(name)
        count = _int(path, line, "gpu", row[col["gpu"]])
        model = row[col["model"]].strip()
        if model.lower() == "nan":
            model = ""
        if count > 0 and model not in GPU_MEMORY_MIB:
            known = ", ".join(sorted(GPU_MEMORY_MIB))
            raise HamiError(f"{path}: row {line}: unknown GPU model {model!r} (known: {known})")
        names.append(name)
        cpu.append(_int(path, line, "cpu_milli", row[col["cpu_milli"]]))
        mem.append(_int(path, line, "memory_mib", row[col["memory_mib"]]))
        gpus.append(count)
        models.append(model if count > 0 else "")
    if not names:
        raise HamiError(f"{path}: no nodes")
    return Nodes(
        source=str(path),
        names=names,
        cpu_milli=np.asarray(cpu, dtype=np.int64),
        memory_mib=np.asarray(mem, dtype=np.int64),
        gpus=np.asarray(gpus, dtype=np.int64),
        models=models,
    )


def read_tasks(path: Path, known_models: set[str] | None = None) -> Tasks:
    """Read a pod list. gpu_spec models must be in `known_models` (default: every model we know)."""
    known = known_models if known_models is not None else set(GPU_MEMORY_MIB)
    header, rows = _rows(path, TASK_COLUMNS)
    col = {name: header.index(name) for name in header}
    has_spec = "gpu_spec" in col
    has_times = "creation_time" in col and "deletion_time" in col
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    num: list[int] = []
    milli: list[int] = []
    spec: list[str] = []
    created: list[int] = []
    deleted: list[int] = []
    for k, row in enumerate(rows):
        line = k + 2
        if len(row) < len(header):
            raise HamiError(f"{path}: row {line}: {len(row)} fields, expected {len(header)}")
        n = _int(path, line, "num_gpu", row[col["num_gpu"]])
        m = _int(path, line, "gpu_milli", row[col["gpu_milli"]])
        if n > 0 and not 0 < m <= 1000:
            raise HamiError(f"{path}: row {line}: gpu_milli must be 1-1000 for a GPU task, got {m}")
        if n > 1 and m != 1000:
            raise HamiError(f"{path}: row {line}: a task on {n} GPUs must take whole GPUs (gpu_milli 1000), got {m}")
        models = ""
        if has_spec:
            text = row[col["gpu_spec"]].strip()
            if text and text.lower() != "nan":
                wanted = sorted({t.strip() for t in text.split("|") if t.strip()})
                unknown = [t for t in wanted if t not in known]
                if unknown:
                    raise HamiError(
                        f"{path}: row {line}: unknown GPU model {', '.join(unknown)} in gpu_spec "
                        f"(the cluster has: {', '.join(sorted(known))})"
                    )
                models = "|".join(wanted)
        names.append(row[col["name"]].strip() or f"row-{line}")
        cpu.append(_int(path, line, "cpu_milli", row[col["cpu_milli"]]))
        mem.append(_int(path, line, "memory_mib", row[col["memory_mib"]]))
        num.append(n)
        milli.append(m if n > 0 else 0)
        spec.append(models)
        if has_times:
            c = _int(path, line, "creation_time", row[col["creation_time"]])
            d = _int(path, line, "deletion_time", row[col["deletion_time"]])
            if d < c:
                raise HamiError(f"{path}: row {line}: deletion_time {d} is before creation_time {c}")
            created.append(c)
            deleted.append(d)
    if not names:
        raise HamiError(f"{path}: no tasks")
    return Tasks(
        source=str(path),
        names=names,
        cpu_milli=np.asarray(cpu, dtype=np.int64),
        memory_mib=np.asarray(mem, dtype=np.int64),
        num_gpu=np.asarray(num, dtype=np.int64),
        gpu_milli=np.asarray(milli, dtype=np.int64),
        gpu_spec=spec,
        creation=np.asarray(created, dtype=np.int64) if has_times else None,
        deletion=np.asarray(deleted, dtype=np.int64) if has_times else None,
    )
