"""The simulator's experiment tables (docs/simulation.md), each printed by one command.

    python -m bench.simulate.tables variants  [--seeds 10] [--traces default,gpushare40,...]
        faithful FGD against our policy on the default trace and every variant, at 0.9 and
        1.0 x arrived demand, with the authors' published FGD figure where there is one and
        the packing LP's bound (no policy's mean at 1.0 x can pass it);
    python -m bench.simulate.tables compare TRACE/report.json MODEL/report.json
        every policy of two `hami simulate` reports side by side (the trace against the
        built-in workload model: run `hami simulate --seeds 10 --out TRACE`, then the same
        with HAMI_TRACE_DIR pointing to a folder without the trace, --out MODEL);
    python -m bench.simulate.tables ablation  [--seeds 10] [--traces ...]
        our policy with each of its parts taken out.

Traces are read from --trace-dir (default: the shared trace folder, as `hami simulate` finds
it). Runs go to worker processes (--jobs, default: CPU count) and take minutes to hours: a
run of one policy on one seed to 1.0 x takes 5-15 s on an idle core. Figures are the mean and
standard deviation over seeds 0..N-1 (the same seeds for every policy, so differences are
paired: the "±" after a difference is the standard deviation of the per-seed differences).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hami.scheduler.engine import PolicyDefaults
from hami.scheduler.state import ClusterState
from hami.sim.fill import run_fill
from hami.sim.frag import Layout
from hami.sim.policies import POLICIES
from hami.sim.policies.base import PolicySpec
from hami.sim.policies.ours import FGDBalance, with_weights
from hami.sim.policies.patterns import Patterns
from hami.sim.published import PUBLISHED
from hami.sim.trace import DEFAULT_TASKS, default_trace_dir
from hami.sim.workload import Workload, build_cluster, builtin_workload, load_workload

MULTIPLES = (0.9, 1.0, 1.1)


def ablation_specs() -> dict[str, PolicySpec]:
    """Our policy with one part taken out at a time (registered under names of their own)."""
    w = FGDBalance.UNFED_WEIGHT, FGDBalance.PRESSURE_WEIGHT, FGDBalance.GUARD_WEIGHT, FGDBalance.PATTERN_WEIGHT
    variants = {
        "no packing patterns": with_weights(w[0], w[1], w[2], 0.0),
        "no unfed GPU": with_weights(0.0, w[1], w[2], w[3]),
        "unfed: CPU only": with_weights(*w, memory=False),
        "no CPU-only tasks in the rates": with_weights(*w, cpu_only=False),
        "no kind pressure": with_weights(w[0], 0.0, w[2], w[3]),
        "no multi-GPU guard": with_weights(w[0], w[1], 0.0, w[3]),
        "guard: all free GPU gets tasks": with_weights(*w, hosted=False),
        "95% of classes": with_weights(*w, every_class=False),
    }
    return {name: PolicySpec(name, name, PolicyDefaults(), make) for name, make in variants.items()}


_WORKLOADS: dict[str, Workload] = {}
_SPECS: dict[str, PolicySpec] = {}


def _job(job: tuple[str, str, int, float]) -> tuple[str, str, int, list[float]]:
    trace, name, seed, until = job
    result = run_fill(_WORKLOADS[trace], _SPECS[name], seed, until=until)
    return trace, name, seed, [result.at(m)[0] * 100 for m in MULTIPLES if m <= until + 1e-9]


def run_all(traces: list[str], names: list[str], seeds: int, until: float, jobs: int) -> dict[tuple[str, str], Any]:
    """(trace, policy) -> array (seeds x multiples), row k from seed k for every policy, so that
    differences between policies pair the same seed (the runs finish in any order)."""
    work = [(t, n, s, until) for t in traces for n in names for s in range(seeds)]
    done: dict[tuple[str, str], dict[int, list[float]]] = {}
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs) as pool:
        for k, (trace, name, seed, values) in enumerate(pool.imap_unordered(_job, work), 1):
            done.setdefault((trace, name), {})[seed] = values
            print(f"\r{k}/{len(work)} runs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {key: by_seed(runs) for key, runs in done.items()}


def by_seed(runs: dict[int, list[float]]) -> Any:
    """The runs of one (trace, policy) as rows in seed order."""
    return np.asarray([runs[seed] for seed in sorted(runs)])


def lp_bound(workload: Workload, split_count: int = 10) -> float:
    """The packing LP's bound on the mean allocation at 1.0 x (hami.sim.policies.patterns)."""
    capacity = Layout.of(ClusterState(build_cluster(workload.nodes, split_count))).capacity_milli
    return Patterns.of(workload.tasks, capacity, split_count).bound


def load(trace_dir: Path, trace: str) -> Workload:
    if trace == "model":
        return builtin_workload()
    return load_workload(trace_dir / f"openb_pod_list_{trace}.csv", None, None)


def cell(values: Any, column: int) -> str:
    return f"{values[:, column].mean():.2f} ±{values[:, column].std():.2f}"


def diff(a: Any, b: Any, column: int) -> str:
    d = a[:, column] - b[:, column]
    return f"{d.mean():+.2f} ±{d.std():.2f}"


def compare(reports: list[Path]) -> int:
    """Two `hami simulate` reports side by side: every policy's mean at 0.9, 1.0 and 1.1 x."""
    if len(reports) != 2:
        print("compare needs two report.json files", file=sys.stderr)
        return 2
    a, b = (json.loads(p.read_text())["policies"] for p in reports)
    print(f"| policy | {reports[0].parent.name} @0.9 | {reports[1].parent.name} @0.9 | @1.0 | @1.0 | @1.1 | @1.1 "
          "| largest gap |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in a:
        if name not in b:
            continue
        x, y = a[name]["allocation_ratio"], b[name]["allocation_ratio"]
        gap = max(abs(100 * (y[m] - x[m])) for m in x if m in y)
        cells = " | ".join(f"{100 * x[m]:.2f} | {100 * y[m]:.2f}" for m in ("0.9", "1.0", "1.1"))
        print(f"| {name} | {cells} | {gap:.2f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["variants", "ablation", "compare"])
    parser.add_argument("reports", nargs="*", type=Path, help="compare: two report.json files")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--traces", default=None, help="comma-separated trace names (default: all in the folder)")
    parser.add_argument("--trace-dir", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.table == "compare":
        return compare(args.reports)
    trace_dir = args.trace_dir or default_trace_dir()
    if trace_dir is None or not (trace_dir / DEFAULT_TASKS).is_file():
        print("no trace folder found: give --trace-dir", file=sys.stderr)
        return 2
    every = sorted(p.name.removeprefix("openb_pod_list_").removesuffix(".csv")
                   for p in trace_dir.glob("openb_pod_list_*.csv"))
    traces = args.traces.split(",") if args.traces else every
    _SPECS.update(POLICIES)
    if args.table == "variants":
        for t in traces:
            _WORKLOADS[t] = load(trace_dir, t)
        r = run_all(traces, ["fgd", "fgd-balance"], args.seeds, 1.0, args.jobs)
        print("| trace | FGD published @1.0 | fgd @0.9 | fgd-balance @0.9 | fgd @1.0 | fgd-balance @1.0 "
              "| difference @1.0 | LP bound @1.0 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t in traces:
            a, b = r[(t, "fgd")], r[(t, "fgd-balance")]
            paper = PUBLISHED.get(t, {}).get("FGD", {}).get("1.0")
            published = f"{paper[0]:.2f} ±{paper[1]:.2f}" if paper else "–"
            print(f"| {t} | {published} | {cell(a, 0)} | {cell(b, 0)} | {cell(a, 1)} | {cell(b, 1)} "
                  f"| {diff(b, a, 1)} | {100 * lp_bound(_WORKLOADS[t]):.2f} |")
    else:
        for t in traces:
            _WORKLOADS[t] = load(trace_dir, t)
        specs = ablation_specs()
        _SPECS.update(specs)
        names = ["fgd", "fgd-balance", *specs]
        r = run_all(traces, names, args.seeds, 1.0, args.jobs)
        print("| trace | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for t in traces:
            print(f"| {t} | " + " | ".join(cell(r[(t, n)], 1) for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
