"""Packing patterns (hami.sim.policies.patterns): the LP's prices by hand, its column generation
against every pattern, the loss, and the placement it changes in fgd-balance."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from hami.scheduler.engine import PolicyDefaults
from hami.sim.fill import run_sequence
from hami.sim.policies import POLICIES
from hami.sim.policies.base import PolicySpec
from hami.sim.policies.ours import FGDBalance, with_weights
from hami.sim.policies.patterns import Patterns, solve
from hami.sim.workload import Workload, load_workload


def workload(tmp_path: Path, gpus: int, shares: list[int]) -> Workload:
    (tmp_path / "nodes.csv").write_text(f"sn,cpu_milli,memory_mib,gpu,model\na,96000,786432,{gpus},T4\n")
    pods = "".join(f"p{i},1000,1024,1,{m},\n" for i, m in enumerate(shares))
    (tmp_path / "pods.csv").write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + pods)
    return load_workload(tmp_path / "pods.csv", tmp_path / "nodes.csv", None)


SHARES = [810, 470, 470, 650, 320]  # one trace "set": 2,720 milli-GPU


def test_prices_by_hand(tmp_path: Path) -> None:
    # 4 GPUs take 4,000 / 2,720 = 1.47 sets. The best GPUs hold two 0.47s (940) or a 0.65 and a
    # 0.32 (970): 1.47 GPUs of each, and the 1.06 GPUs left take one 0.81 each (810), so 0.81s
    # are left over. Prices: a GPU is worth 810 (one more would hold a 0.81), a 0.81 nothing (it
    # is surplus); two 0.47s fill a GPU worth 810, so each nets 405; a 0.65 and a 0.32 net 810
    # together (how the LP splits it between them is its choice).
    w = workload(tmp_path, 4, SHARES)
    p = Patterns.of(w.tasks, 4000, 10)
    net = dict(zip(p.sizes.tolist(), p.net.tolist(), strict=True))
    assert net[470] == pytest.approx(405)
    assert net[810] == pytest.approx(810)
    assert net[650] + net[320] == pytest.approx(810)
    sets = 4000 / 2720
    _, placed = solve(p.sizes, np.asarray([sets, 2 * sets, sets, sets]), 0.0, 4.0, 10)
    assert placed == pytest.approx(940 * sets + 970 * sets + 810 * (4 - 2 * sets))
    # What a free share is worth: an empty GPU 810; the 0.53 beside a 0.47 another 0.47's 405;
    # the 0.19 beside a 0.81 nothing (no size fits).
    assert p.worth[10, 1000] == pytest.approx(810)
    assert p.worth[9, 530] == pytest.approx(405)
    assert p.worth[9, 190] == 0


def test_loss_by_hand(tmp_path: Path) -> None:
    p = Patterns.of(workload(tmp_path, 4, SHARES).tasks, 4000, 10)
    free = np.asarray([1000, 530, 680, 190], dtype=np.int64)
    slots = np.asarray([10, 9, 9, 9], dtype=np.int64)
    # A 0.47: on an empty GPU or beside another 0.47 it starts or ends a best pattern (no loss).
    # Into the 0.68 beside a 0.32 it gives up that share's worth (a 0.65, a 0.47 or two 0.32s,
    # whichever nets most) for its own 405, and leaves 0.21 that nothing fills.
    net = dict(zip(p.sizes.tolist(), p.net.tolist(), strict=True))
    loss = p.loss(470, free[:3], slots[:3])
    assert loss[:2].tolist() == pytest.approx([0.0, 0.0])
    assert loss[2] == pytest.approx(p.worth[9, 680] - 405)
    assert loss[2] == pytest.approx(max(net[650], 405, 2 * net[320]) - 405)
    assert loss[2] > 0
    # A 0.32 beside a 0.47 spoils a share worth 405 for a task that nets net(0.32).
    assert p.loss(320, free[1:2], slots[1:2])[0] == pytest.approx(405 - net[320])
    # A size the workload does not have costs nothing; no loss is ever below zero.
    assert p.loss(500, free, slots).tolist() == [0.0] * 4
    for size in p.sizes.tolist():
        ok = free >= size
        assert (p.loss(size, free[ok], slots[ok]) >= 0).all()


def test_patterns_decide_which_gpu_a_share_joins(tmp_path: Path) -> None:
    # 0.47, then 0.32, then 0.47 on one 4-GPU node. Without patterns the 0.32 joins the first
    # 0.47 (0.21 left, which no task fills) and the second 0.47 opens a GPU; with them the 0.32
    # opens a GPU (a 0.65 fits beside it) and the two 0.47s share one.
    w = workload(tmp_path, 4, SHARES)
    weights = FGDBalance.UNFED_WEIGHT, FGDBalance.PRESSURE_WEIGHT, FGDBalance.GUARD_WEIGHT
    without = PolicySpec("off", "off", PolicyDefaults(), with_weights(*weights, 0.0))
    state, _ = run_sequence(w, without, [1, 4, 2])
    assert state.usedcores.tolist() == [79, 47, 0, 0]
    state, _ = run_sequence(w, POLICIES["fgd-balance"], [1, 4, 2])
    assert state.usedcores.tolist() == [94, 32, 0, 0]


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(5, 99).map(lambda s: s * 10), min_size=1, max_size=5, unique=True),
    weights=st.lists(st.floats(0.5, 20.0), min_size=5, max_size=5),
    gpus=st.floats(1.0, 50.0),
    whole=st.floats(0.0, 20.0),
)
def test_column_generation_finds_the_lp_over_every_pattern(sizes: list[int], weights: list[float], gpus: float,
                                                           whole: float) -> None:
    sizes.sort()
    available = np.asarray(weights[: len(sizes)])
    split = 4
    patterns = [c for c in itertools.product(*(range(min(split, 1000 // s) + 1) for s in sizes))
                if 0 < sum(c) <= split and sum(k * s for k, s in zip(c, sizes, strict=True)) <= 1000]
    matrix = np.vstack([np.asarray(patterns).T, np.ones(len(patterns))])
    matrix = np.hstack([matrix, np.append(np.zeros(len(sizes)), 1.0)[:, None]])
    gain = -np.append([sum(k * s for k, s in zip(c, sizes, strict=True)) for c in patterns], 1000.0)
    bounds: list[tuple[float | None, float | None]] = [(0.0, None)] * len(patterns) + [(0.0, whole)]
    every = linprog(gain, A_ub=matrix, b_ub=np.append(available, gpus), bounds=bounds, method="highs")
    _, placed = solve(np.asarray(sizes, dtype=np.int64), available, whole, gpus, split)
    assert every.fun is not None
    assert placed == pytest.approx(-every.fun, rel=1e-6)


def test_bound_and_whole_gpu_workloads(tmp_path: Path) -> None:
    # The sets of test_prices_by_hand: the LP places 940, 970 and 810 milli-GPU per GPU.
    sets = 4000 / 2720
    assert Patterns.of(workload(tmp_path, 4, SHARES).tasks, 4000, 10).bound == pytest.approx(
        (940 * sets + 970 * sets + 810 * (4 - 2 * sets)) / 4000)
    # Whole GPUs only: nothing to price, and whole GPUs fill the cluster.
    w = workload(tmp_path, 4, [1000, 1000])
    p = Patterns.of(w.tasks, 4000, 10)
    assert p.bound == pytest.approx(1.0)
    assert p.loss(500, np.asarray([1000], dtype=np.int64), np.asarray([10], dtype=np.int64)).tolist() == [0.0]
