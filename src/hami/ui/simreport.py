"""A `hami simulate` report.json, read back for the Simulator page: its tables and its curves.

The shape is the one hami.sim.report writes (docs/simulation.md). A file of another shape is
refused with one sentence saying what is wrong, never a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hami.errors import HamiError
from hami.sim.report import MULTIPLES

MAX_BYTES = 20 * 2**20


@dataclass(frozen=True)
class FillRow:
    policy: str
    allocation: dict[str, float]  # multiple of capacity ("0.9", "1.0", "1.1") -> ratio
    allocation_std: dict[str, float]
    unallocated: float | None
    fragmentation: float | None


@dataclass(frozen=True)
class ReplayRow:
    policy: str
    mean_allocation: float
    peak_allocation: float
    waited: int
    never_placed: int
    delay_mean: float
    delay_p95: float


@dataclass
class Report:
    trace: str
    input: str
    seeds: int
    fill: list[FillRow] = field(default_factory=list)
    replay: list[ReplayRow] = field(default_factory=list)
    # uPlot data: [x, y(policy 1), y(policy 2), …] and the series names.
    fill_chart: dict[str, Any] = field(default_factory=dict)
    replay_chart: dict[str, Any] = field(default_factory=dict)

    @property
    def multiples(self) -> tuple[str, ...]:
        return MULTIPLES


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HamiError(f"{where} is not a number")
    return float(value)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HamiError(f"{where} is missing or not an object")
    return value


def _series(values: Any, where: str) -> list[float]:
    if not isinstance(values, list):
        raise HamiError(f"{where} is not a list")
    return [_number(v, f"{where}[{i}]") for i, v in enumerate(values)]


def parse(text: str | bytes) -> Report:
    if len(text) > MAX_BYTES:
        raise HamiError(f"the report is larger than {MAX_BYTES // 2**20} MiB")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HamiError(f"the report is not JSON: {exc}") from None
    data = _mapping(data, "the report")
    policies = _mapping(data.get("policies"), "'policies'")
    replay = _mapping(data.get("replay", {}), "'replay'")
    if not policies and not replay:
        raise HamiError("the report has no policies: is it a hami simulate report.json?")
    report = Report(trace=str(data.get("trace", "")), input=str(data.get("input", "")),
                    seeds=int(_number(data.get("seeds", 0), "'seeds'")))
    grid: list[float] | None = None
    curves: list[list[float]] = []
    for name, summary in policies.items():
        where = f"policies.{name}"
        s = _mapping(summary, where)
        alloc = _mapping(s.get("allocation_ratio"), f"{where}.allocation_ratio")
        std = _mapping(s.get("allocation_ratio_std", {}), f"{where}.allocation_ratio_std")
        unalloc = _mapping(s.get("unallocated_gpu_share", {}), f"{where}.unallocated_gpu_share")
        frag = _mapping(s.get("fragmentation_share", {}), f"{where}.fragmentation_share")
        report.fill.append(FillRow(
            policy=str(name),
            allocation={m: _number(v, f"{where}.allocation_ratio.{m}") for m, v in alloc.items()},
            allocation_std={m: _number(v, f"{where}.allocation_ratio_std.{m}") for m, v in std.items()},
            unallocated=_number(unalloc["1.0"], f"{where}.unallocated_gpu_share.1.0") if "1.0" in unalloc else None,
            fragmentation=_number(frag["1.0"], f"{where}.fragmentation_share.1.0") if "1.0" in frag else None,
        ))
        curve = _mapping(s.get("curve"), f"{where}.curve")
        x = _series(curve.get("arrived"), f"{where}.curve.arrived")
        y = _series(curve.get("allocation_ratio"), f"{where}.curve.allocation_ratio")
        if len(x) != len(y):
            raise HamiError(f"{where}.curve: 'arrived' and 'allocation_ratio' differ in length")
        if grid is None:
            grid = x
        elif x != grid:
            raise HamiError(f"{where}.curve: its 'arrived' grid differs from the other policies'")
        curves.append(y)
    if grid is not None:
        report.fill_chart = {"series": [r.policy for r in report.fill], "data": [grid, *curves],
                             "x": "arrived GPU demand (× capacity)", "y": "allocation ratio"}
    times: list[float] | None = None
    replay_curves: list[list[float]] = []
    replay_names = []
    for name, summary in replay.items():
        where = f"replay.{name}"
        s = _mapping(summary, where)
        delay = _mapping(s.get("queueing_delay_s"), f"{where}.queueing_delay_s")
        report.replay.append(ReplayRow(
            policy=str(name),
            mean_allocation=_number(s.get("mean_allocation_ratio"), f"{where}.mean_allocation_ratio"),
            peak_allocation=_number(s.get("peak_allocation_ratio"), f"{where}.peak_allocation_ratio"),
            waited=int(_number(s.get("waited"), f"{where}.waited")),
            never_placed=int(_number(s.get("never_placed"), f"{where}.never_placed")),
            delay_mean=_number(delay.get("mean"), f"{where}.queueing_delay_s.mean"),
            delay_p95=_number(delay.get("p95"), f"{where}.queueing_delay_s.p95"),
        ))
        series = _mapping(s.get("series"), f"{where}.series")
        t = _series(series.get("time_s"), f"{where}.series.time_s")
        y = _series(series.get("allocation_ratio"), f"{where}.series.allocation_ratio")
        if times is None:
            times = t
        if t == times and len(t) == len(y):  # curves on another time grid are left out of the chart
            replay_curves.append(y)
            replay_names.append(str(name))
    if times is not None and replay_curves:
        report.replay_chart = {"series": replay_names, "data": [times, *replay_curves],
                               "x": "time (s)", "y": "allocation ratio"}
    return report
