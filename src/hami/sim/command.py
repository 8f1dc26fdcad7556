"""`hami simulate`: the policies of the engine on a GPU-cluster trace (fill and replay experiments).

Top-level imports stay light: every `hami` invocation imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = "simulation"
DEFAULT_SEEDS = 3  # every policy x 3 seeds: about two minutes on two cores (docs/benchmarks.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", type=Path, metavar="PATH",
                        help="pod list CSV of the openb trace (default: openb_pod_list_default.csv in the shared "
                             "trace folder or $HAMI_TRACE_DIR; without one, the built-in workload model)")
    parser.add_argument("--nodes", type=Path, metavar="PATH",
                        help="node list CSV (default: openb_node_list_gpu_node.csv next to the trace)")
    parser.add_argument("--policy", action="append", metavar="NAME",
                        help="policy to run (repeatable; default: all). See --list-policies")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per policy for the fill (default 3)")
    parser.add_argument("--experiment", choices=["fill", "replay", "all"], default="fill",
                        help="fill (default): tasks arrive until demand reaches --until x capacity; replay: the "
                             "trace's own arrival and deletion times; all: both")
    parser.add_argument("--arrival", choices=["sample", "authors"], default="sample",
                        help="fill: arrival order. sample (default): tasks drawn at random with replacement; "
                             "authors: the FGD authors' order, every trace task once shuffled, then drawn at random")
    parser.add_argument("--until", type=float, default=1.1,
                        help="fill: stop when arrived GPU demand reaches this multiple of capacity (default 1.1)")
    parser.add_argument("--speedup", type=float, default=1.0,
                        help="replay: arrivals this many times denser than in the trace, lifetimes kept "
                             "(the trace alone loads the cluster to about 1%%; default 1)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), metavar="DIR",
                        help=f"where report.json and the plots go (default ./{DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true",
                        help="a small run: 2 seeds on every 8th node of the cluster")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--split-count", type=int, default=10,
                        help="HAMi deviceSplitCount: most tasks sharing one GPU (default 10)")
    parser.add_argument("--list-policies", action="store_true", help="list the policies and exit")
    parser.add_argument("--topology", action="store_true",
                        help="the topology-aware fill instead: link quality of multi-GPU tasks' GPU sets on NVLink "
                             "and PCIe nodes (hami.sim.topology; tasks from --trace, default openb multigpu50)")
    parser.add_argument("--topology-nodes", type=int, default=64, metavar="N", help="--topology: 8-GPU nodes (64)")


_WORKLOAD: Any = None  # the workload, shared with forked workers


_SPEEDUP = 1.0
_ARRIVAL = "sample"


def _fill_job(job: tuple[str, int, float, int]) -> Any:
    from hami.sim.fill import run_fill
    from hami.sim.policies import POLICIES

    name, seed, until, split = job
    return run_fill(_WORKLOAD, POLICIES[name], seed, until=until, split_count=split, arrival=_ARRIVAL)


def _replay_job(job: tuple[str, int, float, int]) -> Any:
    from hami.sim.policies import POLICIES
    from hami.sim.replay import run_replay

    name, seed, _, split = job
    return run_replay(_WORKLOAD, POLICIES[name], seed, split_count=split, speedup=_SPEEDUP)


def _run_jobs(worker: Any, jobs: list[tuple[str, int, float, int]], processes: int, label: str) -> list[Any]:
    import multiprocessing

    from hami.sim.progress import Progress

    progress = Progress(len(jobs), label)
    results = []
    if processes <= 1 or len(jobs) == 1:
        for job in jobs:
            results.append(worker(job))
            progress.advance(f"{job[0]} seed {job[1]}")
        return results
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        for result in pool.imap_unordered(worker, jobs):
            results.append(result)
            progress.advance(f"{result.policy}")
    return results


def _subsample(workload: Any, every: int) -> Any:
    import numpy as np

    from hami.sim.trace import Nodes
    from hami.sim.workload import Workload

    n = workload.nodes
    keep = np.arange(0, len(n.names), every)
    nodes = Nodes(source=n.source, names=[n.names[i] for i in keep], cpu_milli=n.cpu_milli[keep],
                  memory_mib=n.memory_mib[keep], gpus=n.gpus[keep], models=[n.models[i] for i in keep])
    return Workload(nodes=nodes, tasks=workload.tasks, label=f"{workload.label}, every {every}th node (--quick)")


def run(args: argparse.Namespace) -> int:
    global _WORKLOAD, _SPEEDUP, _ARRIVAL
    from hami.errors import HamiError
    from hami.sim import report
    from hami.sim.plot import plot_fill, plot_replay
    from hami.sim.policies import POLICIES, policy
    from hami.sim.trace import default_trace_dir
    from hami.sim.workload import load_workload

    if args.topology:
        from hami.sim.topology_command import run_topology

        return run_topology(args)
    if args.list_policies:
        for spec in POLICIES.values():
            print(f"{spec.name:<14} {spec.summary}")
        return 0
    names = [policy(n).name for n in args.policy] if args.policy else list(POLICIES)
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else DEFAULT_SEEDS)
    if seeds < 1:
        raise HamiError("--seeds must be at least 1")
    if not 0 < args.until <= 3:
        raise HamiError("--until must be in (0, 3]")
    if args.speedup <= 0:
        raise HamiError("--speedup must be positive")
    _SPEEDUP = args.speedup
    _ARRIVAL = args.arrival
    if args.split_count < 1:
        raise HamiError("--split-count must be at least 1")
    trace_dir = None if args.trace else default_trace_dir(Path(__file__).resolve().parent)
    if args.trace is None and trace_dir is None:
        trace_dir = default_trace_dir()
    workload = load_workload(args.trace, args.nodes, trace_dir)
    if args.quick:
        workload = _subsample(workload, 8)
    _WORKLOAD = workload
    processes = args.jobs or os.cpu_count() or 1
    builtin = args.trace is None and workload.tasks.creation is None
    trace_key = "builtin:openb-workload-model" if builtin else workload.tasks.source
    print(f"input: {workload.label}", file=sys.stderr)
    print(f"cluster: {sum(1 for g in workload.nodes.gpus.tolist() if g)} GPU nodes, "
          f"{int(workload.nodes.gpus.sum())} GPUs; workload: {len(workload.tasks)} tasks", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"trace": trace_key, "input": workload.label, "seeds": seeds, "tasks_per_second": 0.0}
    started = time.perf_counter()
    tasks_done = 0
    if args.experiment in ("fill", "all"):
        jobs = [(n, s, args.until, args.split_count) for s in range(seeds) for n in names]
        results = _run_jobs(_fill_job, jobs, processes, "fill")
        policies = {}
        # The built-in model is the default trace's, so its figures compare with the default's.
        published = None if args.quick else "default" if builtin else report.published_trace(workload.tasks.source)
        look_alike = None if args.quick or builtin else report.named_like_published(workload.tasks.source)
        if published is None and look_alike:
            print(f"note: {workload.tasks.source} is named like the FGD authors' trace {look_alike!r} but is not "
                  "the file they ran (its SHA-256 differs): their figures are not shown", file=sys.stderr)
        for n in names:
            mine = sorted((r for r in results if r.policy == n), key=lambda r: r.seed)
            policies[n] = report.fill_summary(mine, args.until)
            tasks_done += policies[n]["tasks"]
            paper = POLICIES[n].paper
            figures = {m: report.published_figure(published, paper, m) for m in report.MULTIPLES}
            if paper and any(figures.values()):
                policies[n]["published_as"] = paper
                policies[n]["published"] = {m: list(v) for m, v in figures.items() if v}
        out["until"] = args.until
        out["arrival"] = args.arrival
        out["published_trace"] = published
        out["policies"] = policies
        print(report.fill_table(policies))
        if published:
            print(f"PAPER: the FGD authors' published figure for trace {published!r} (mean ±sd of their 10 seeds), "
                  "where the policy is theirs")
        plot_fill(policies, f"fill, {seeds} seeds: {trace_key}", args.out / "allocation.png")
    if args.experiment in ("replay", "all"):
        if workload.tasks.creation is None:
            raise HamiError("the replay needs a trace with creation_time and deletion_time (give one with --trace)")
        jobs = [(n, 0, 0.0, args.split_count) for n in names]
        replays = _run_jobs(_replay_job, jobs, processes, "replay")
        summaries = {r.policy: report.replay_summary(r) for r in sorted(replays, key=lambda r: names.index(r.policy))}
        tasks_done += sum(s["tasks"] for s in summaries.values())
        out["replay"] = summaries
        out["replay_speedup"] = args.speedup
        print(report.replay_table(summaries))
        plot_replay(summaries, f"replay x{args.speedup:g}: {trace_key}", args.out / "replay.png")
        if "policies" not in out:
            out["policies"] = {}
    seconds = time.perf_counter() - started
    out["tasks_per_second"] = round(tasks_done / seconds, 1) if seconds else 0.0
    out["seconds"] = round(seconds, 1)
    (args.out / "report.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{tasks_done} tasks in {seconds:.1f}s: {out['tasks_per_second']:.0f} tasks/s; "
          f"report: {args.out / 'report.json'}", file=sys.stderr)
    return 0
