"""The simulator benchmark: the full default fill (every policy x 3 seeds) timed end to end.

Run from the repository root with the venv's python: `python -m bench.simulate.run [--out DIR]`.
It runs `hami simulate` as a user would (default trace, all policies, its default seeds) and prints the
wall time, the tasks per second and the allocation table; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hami.cli import main
from hami.sim.command import DEFAULT_SEEDS


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("simulation-bench"))
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    args = parser.parse_args()
    started = time.perf_counter()
    code = main(["simulate", "--seeds", str(args.seeds), "--out", str(args.out)])
    seconds = time.perf_counter() - started
    if code:
        return code
    report = json.loads((args.out / "report.json").read_text())
    print(f"\ncores: {os.cpu_count()}  policies: {len(report['policies'])}  seeds: {report['seeds']}")
    print(f"wall time: {seconds:.0f} s  tasks/s: {report['tasks_per_second']:.0f}  trace: {report['trace']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
