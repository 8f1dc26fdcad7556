"""`hami simulate --topology`: arguments to hami.sim.topology."""

from __future__ import annotations

import argparse
from pathlib import Path

from hami.errors import HamiError

MULTIGPU_TRACE = "openb_pod_list_multigpu50.csv"


def run_topology(args: argparse.Namespace) -> int:
    from hami.sim.topology import run_experiment
    from hami.sim.trace import default_trace_dir, read_tasks
    from hami.sim.workload import builtin_workload

    if args.topology_nodes < 1:
        raise HamiError("--topology-nodes must be at least 1")
    if not 0 < args.until <= 3:
        raise HamiError("--until must be in (0, 3]")
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    if seeds < 1:
        raise HamiError("--seeds must be at least 1")
    trace: Path | None = args.trace
    if trace is None:
        folder = default_trace_dir(Path(__file__).resolve().parent) or default_trace_dir()
        if folder is not None and (folder / MULTIGPU_TRACE).is_file():
            trace = folder / MULTIGPU_TRACE
    if trace is not None:
        tasks, label = read_tasks(trace), f"trace {trace}"
    else:
        tasks, label = builtin_workload().tasks, "built-in openb workload model (no multigpu trace found)"
    nodes = max(args.topology_nodes // 8, 2) if args.quick else args.topology_nodes
    run_experiment(tasks, label, nodes, seeds, args.until, args.split_count, args.out)
    return 0
