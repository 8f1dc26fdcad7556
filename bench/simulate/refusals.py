"""Which tasks a policy refuses before the cluster is full, per seed (docs/simulation.md).

    python -m bench.simulate.refusals TRACE [--policy fgd-balance] [--seeds 10] [--until 0.9]

TRACE is a name in the shared trace folder (default, cpu200, gpuspec05, ...). For each seed:
the allocation at --until and every refused task's shape (GPUs, share, CPU, memory, GPU
models) with the arrived demand when it came, the first ones first.
"""

from __future__ import annotations

import argparse
import sys

from hami.errors import HamiError
from hami.sim.fill import run_fill
from hami.sim.policies import policy
from hami.sim.trace import DEFAULT_TASKS, default_trace_dir
from hami.sim.workload import load_workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--policy", default="fgd-balance")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--until", type=float, default=0.9)
    parser.add_argument("--show", type=int, default=5, help="refused tasks shown per seed")
    args = parser.parse_args()
    trace_dir = default_trace_dir()
    if trace_dir is None or not (trace_dir / DEFAULT_TASKS).is_file():
        print("no trace folder found: set HAMI_TRACE_DIR", file=sys.stderr)
        return 2
    path = trace_dir / f"openb_pod_list_{args.trace}.csv"
    if not path.is_file():
        print(f"{path}: no such trace", file=sys.stderr)
        return 2
    workload = load_workload(path, None, None)
    tasks = workload.tasks
    try:
        spec = policy(args.policy)
    except HamiError as e:
        print(e, file=sys.stderr)
        return 2
    log: list[tuple[int, float]] = []
    for seed in range(args.seeds):
        log.clear()
        result = run_fill(workload, spec, seed, until=args.until, refused=lambda t, at: log.append((t, at)))
        print(f"seed {seed}: allocation {100 * result.at(args.until)[0]:.2f} % at {args.until} x, "
              f"{len(log)} refused")
        for t, at in log[: args.show]:
            spec_text = tasks.gpu_spec[t] or "any model"
            print(f"  at {at:.3f} x: {tasks.num_gpu[t]} GPU x {tasks.gpu_milli[t]} milli, "
                  f"{tasks.cpu_milli[t]} milli-CPU, {tasks.memory_mib[t]} MiB, {spec_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
