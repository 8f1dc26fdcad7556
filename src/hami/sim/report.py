"""Summaries of the runs: report.json (a fixed shape that other tools read) and the terminal table."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from hami.sim.fill import FillResult
from hami.sim.published import PUBLISHED, TRACE_DIGESTS
from hami.sim.replay import ReplayResult

MULTIPLES = ("0.9", "1.0", "1.1")


def curve(results: list[FillResult], until: float, step: float = 0.01) -> dict[str, list[float]]:
    """Allocation ratio against arrived demand on a common grid: mean, min and max over seeds."""
    grid = np.round(np.arange(step, until + step / 2, step), 4)
    per_seed = np.asarray([[r.at(float(x))[0] for x in grid] for r in results])
    return {
        "arrived": grid.tolist(),
        "allocation_ratio": np.round(per_seed.mean(axis=0), 5).tolist(),
        "min": np.round(per_seed.min(axis=0), 5).tolist(),
        "max": np.round(per_seed.max(axis=0), 5).tolist(),
    }


def fill_summary(results: list[FillResult], until: float) -> dict[str, Any]:
    alloc = {m: [r.at(float(m))[0] for r in results] for m in MULTIPLES if float(m) <= until + 1e-9}
    unalloc = {m: [r.at(float(m))[1] for r in results] for m in MULTIPLES if float(m) <= until + 1e-9}
    frag: dict[str, list[float]] = {}
    for m in alloc:
        k = round(float(m) / 0.01) - 1
        frag[m] = [float(r.frag[min(k, len(r.frag) - 1)]) for r in results if len(r.frag)]
    return {
        "allocation_ratio": {m: round(float(np.mean(v)), 5) for m, v in alloc.items()},
        "allocation_ratio_std": {m: round(float(np.std(v)), 5) for m, v in alloc.items()},
        "unallocated_gpu_share": {m: round(float(np.mean(v)), 5) for m, v in unalloc.items()},
        "fragmentation_share": {m: round(float(np.mean(v)), 5) for m, v in frag.items()},
        "tasks": int(sum(r.tasks for r in results)),
        "seconds_per_seed": round(float(np.mean([r.seconds for r in results])), 2),
        "curve": curve(results, until),
    }


def replay_summary(result: ReplayResult) -> dict[str, Any]:
    return {
        "tasks": result.tasks,
        "waited": result.waited,
        "never_placed": result.never_placed,
        "queueing_delay_s": {k: round(v, 1) for k, v in result.delay_stats().items()},
        "mean_allocation_ratio": round(float(np.mean(result.allocation)) if result.allocation else 0.0, 5),
        "peak_allocation_ratio": round(result.peak, 5),
        "series": {"time_s": [round(t, 1) for t in result.times],
                   "allocation_ratio": [round(a, 5) for a in result.allocation]},
    }


def published_trace(source: str) -> str | None:
    """The name of a trace in the authors' published results ("default", "gpushare40", …) when
    `source` is, byte for byte, the file they ran; whatever it is called."""
    try:
        data = Path(source).read_bytes()
    except OSError:
        return None
    return TRACE_DIGESTS.get(hashlib.sha256(data).hexdigest())


def named_like_published(source: str) -> str | None:
    """The published trace whose file name `source` has (openb_pod_list_<trace>.csv), if any."""
    stem = Path(source).name.removesuffix(".csv")
    name = stem.removeprefix("openb_pod_list_")
    return name if name != stem and name in PUBLISHED else None


def published_figure(trace: str | None, paper_name: str | None, multiple: str = "1.0") -> tuple[float, float] | None:
    """(mean, sd) in % of the authors' published allocation ratio, where they published one."""
    if trace is None or paper_name is None:
        return None
    return PUBLISHED.get(trace, {}).get(paper_name, {}).get(multiple)


def fill_table(policies: dict[str, dict[str, Any]]) -> str:
    head = ["POLICY", "ALLOC@0.9", "ALLOC@1.0", "ALLOC@1.1", "UNALLOC@1.0", "FRAG@1.0", "PAPER@1.0"]
    rows = []
    for name, s in policies.items():
        a, sd = s["allocation_ratio"], s["allocation_ratio_std"]
        cells = [name]
        for m in MULTIPLES:
            cells.append(f"{100 * a[m]:.2f}% ±{100 * sd[m]:.2f}" if m in a else "-")
        u = s["unallocated_gpu_share"].get("1.0")
        f = s["fragmentation_share"].get("1.0")
        cells.append(f"{100 * u:.2f}%" if u is not None else "-")
        cells.append(f"{100 * f:.2f}%" if f is not None else "-")
        paper = s.get("published", {}).get("1.0")
        cells.append(f"{paper[0]:.2f}% ±{paper[1]:.2f} ({s['published_as']})" if paper else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)


def replay_table(policies: dict[str, dict[str, Any]]) -> str:
    head = ["POLICY", "MEAN ALLOC", "PEAK ALLOC", "WAITED", "NEVER PLACED", "DELAY MEAN", "DELAY P95"]
    rows = [
        [name, f"{100 * s['mean_allocation_ratio']:.2f}%", f"{100 * s['peak_allocation_ratio']:.2f}%",
         str(s["waited"]), str(s["never_placed"]), f"{s['queueing_delay_s']['mean']:.0f}s",
         f"{s['queueing_delay_s']['p95']:.0f}s"]
        for name, s in policies.items()
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows])
