"""The FGD authors' rules, each checked on cases computed by hand: the quantised FGD score, the
CPU-only fragment rule, ties in node order and on the first GPU, their BestFit, DotProd and
GpuPacking scores, the per-seed node order and their arrival order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hami.scheduler.state import ClusterState
from hami.sim.fill import arrival_order, run_fill, run_sequence
from hami.sim.frag import Classes, Layout, node_fragmentation
from hami.sim.policies import POLICIES
from hami.sim.policies.authors import best_fit_score, dot_product_score, gpu_packing_score
from hami.sim.policies.base import Shape
from hami.sim.policies.fgd import fgd_score, first_best
from hami.sim.workload import Workload, build_cluster, load_workload, ordered_nodes


def workload(tmp_path: Path, nodes: str, pods: str) -> Workload:
    (tmp_path / "nodes.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\n" + nodes)
    (tmp_path / "pods.csv").write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n" + pods)
    return load_workload(tmp_path / "pods.csv", tmp_path / "nodes.csv", None)


def usage(state: ClusterState) -> dict[str, int]:
    return {uuid: int(c) for uuid, c in zip(state.uuids, state.usedcores.tolist(), strict=True) if c}


def test_fgd_score_is_the_authors_integer_sigmoid() -> None:
    # int64(100 * sigmoid(-growth / 1000)): 50 at no growth; one point up needs 41 milli-GPU less
    # (sigmoid(0.040) = 0.50999 -> 50, sigmoid(0.041) = 0.51025 -> 51); 1,000 less gives
    # 100 * 0.7311 -> 73; growth of 4,500 still scores 1 (1.098), 4,600 scores 0 (0.995).
    growth = np.asarray([0.0, -40.0, -41.0, -1000.0, 4500.0, 4600.0, 1000.0])
    assert fgd_score(growth).tolist() == [50, 50, 51, 73, 1, 0, 26]


def test_cpu_only_classes_see_every_free_gpu_as_fragment(tmp_path: Path) -> None:
    # Classes: a 500 share and a CPU-only task, half each. Node A: GPUs free 1000 and 300.
    # Authors: F = 1/2 * 300 (the share cannot use the 300) + 1/2 * 1300 (the CPU-only class
    # uses no GPU: all of it) = 800. The exact reading: the CPU-only class finds no fragment
    # while it has CPU: 150; once A lacks its CPU, all 1300: 1/2 * 1300 + 1/2 * 1300.
    w = workload(tmp_path, "A,8000,65536,2,T4\n", "p,1000,1024,1,500\nq,2000,1024,0,0\n")
    state = ClusterState(build_cluster(w.nodes))
    layout = Layout.of(state)
    state.usedcores[1] = 70
    authors = Classes.of(w.tasks, layout)
    exact = Classes.of(w.tasks, layout, cpu_only_rule="exact")
    assert node_fragmentation(state, layout, authors).tolist() == [800.0]
    assert node_fragmentation(state, layout, exact).tolist() == [150.0]
    state.node_cpu_used[0] = 7500
    assert node_fragmentation(state, layout, exact).tolist() == [1300.0]
    assert node_fragmentation(state, layout, authors).tolist() == [1300.0]


def test_classes_cut_at_95_percent_in_the_authors_order(tmp_path: Path) -> None:
    # 20 tasks: 9 shares of 500, 9 whole GPUs and 1 each of two 4-GPU kinds. Most popular first;
    # the two tied classes in the authors' order (larger CPU first), added until >= 95% (19 of
    # 20): the 4-GPU task with 8 CPUs makes the cut, the one with 4 CPUs does not.
    pods = "".join(f"s{i},1000,1,1,500\n" for i in range(9)) + "".join(f"w{i},2000,1,1,1000\n" for i in range(9))
    pods += "a,4000,1,4,1000\nb,8000,1,4,1000\n"
    w = workload(tmp_path, "A,64000,65536,4,T4\n", pods)
    classes = Classes.of(w.tasks, Layout.of(ClusterState(build_cluster(w.nodes))))
    assert classes.weight.tolist() == [9, 9, 1]
    assert classes.cpu.tolist() == [2000, 1000, 8000]  # ties: larger CPU first
    assert classes.total == 19


def test_fgd_ties_go_to_the_first_node_and_the_first_gpu(tmp_path: Path) -> None:
    # Two empty nodes and a 300 share: every GPU scores the same (growth 0 for a workload of
    # 300 shares). The authors take the first node in the fixed order and its first GPU index;
    # the next 300 goes on top of it (its growth is also 0, and it comes first).
    w = workload(tmp_path, "A,8000,65536,2,T4\nB,8000,65536,2,T4\n", "p,1000,1024,1,300\n")
    state, placed = run_sequence(w, POLICIES["fgd"], [0, 0])
    assert placed == ["A", "A"]
    assert usage(state) == {"A/gpu0": 60}
    # In the per-seed order the first node is the one the permutation puts first.
    first = ordered_nodes(w.nodes, 7).names[0]
    _, placed = run_sequence(w, POLICIES["fgd"], [0], node_seed=7)
    assert placed == [first]


def test_fgd_takes_the_first_highest_score_not_the_least_growth() -> None:
    # Growth -10 and -30 milli-GPU both score 50: the first candidate wins although the second
    # shrinks fragmentation more; -50 scores 51 and wins.
    assert first_best(np.asarray([-10.0, -30.0])) == 0
    assert first_best(np.asarray([-10.0, -50.0])) == 1
    assert first_best(np.asarray([20.0, 0.0, 0.0])) == 1


def test_authors_best_fit_score_by_hand() -> None:
    # Free 64 CPUs and 2 GPUs, a whole GPU with 8 CPUs, largest node 128 CPUs / 8 GPUs:
    # 1 - (56/128 / 2 + 1/8 / 2) = 0.71875 -> 71. A node with 8 CPUs and 1 GPU left: 1 - 0 -> 100.
    shape = Shape(num_gpu=1, milli=1000, cpu=8000)
    cpu = np.asarray([64000, 8000])
    gpu = np.asarray([2000, 1000])
    assert best_fit_score(cpu, gpu, shape, 128000, 8000).tolist() == [71, 100]


def test_authors_dot_product_score_by_hand() -> None:
    # (64/128 * 8/128 + 2/8 * 1/8) / 2 = (0.03125 + 0.03125) / 2 = 0.03125 -> 96.875 -> 96.
    shape = Shape(num_gpu=1, milli=1000, cpu=8000)
    assert dot_product_score(np.asarray([64000]), np.asarray([2000]), shape, 128000, 8000).tolist() == [96]


def test_authors_gpu_packing_score_by_hand() -> None:
    free = np.asarray([
        [1000, 1000, -1, -1],   # empty 2-GPU node: 33 - 2 = 31
        [300, 1000, -1, -1],    # a 200 share on the used GPU with 300 free: 100 - 30 / 10 = 97
        [100, 1000, -1, -1],    # only the free GPU fits: 50 - 1 = 49
        [1000, 1000, 1000, 1000],  # empty 4-GPU node: 29
    ])
    assert gpu_packing_score(free, Shape(1, 200, 1000)).tolist() == [31, 97, 49, 29]
    # Two whole GPUs: a used node with three free GPUs takes two of them: 50 - 2 = 48.
    assert gpu_packing_score(np.asarray([[1000, 1000, 1000, 500]]), Shape(2, 1000, 1000)).tolist() == [48]
    assert gpu_packing_score(free, Shape(0, 0, 1000)).tolist() == [0, 0, 0, 0]


def test_authors_baselines_place_by_hand(tmp_path: Path) -> None:
    # A: 2 GPUs, 32 CPUs; B: 1 GPU, 8 CPUs (the largest node: 32 CPUs, 2 GPUs). A 400 share, then
    # a 500 share, 2 CPUs each.
    # BestFit, 400: A 1 - (30/32 + 1.6/2) / 2 = 0.131 -> 13, B 1 - (6/32 + 0.6/2) / 2 = 0.756 -> 75:
    # B. 500: B 1 - (4/32 + 0.1/2) / 2 -> 91, A -> 15: B again.
    # GpuPacking, 400: empty nodes score 33 - GPUs: B 32, A 31. 500: B's used GPU with 600 free
    # scores 100 - 60 / 10 = 94: B. Both end on one GPU of B, 90 percent used.
    # DotProd, 400: A 1 - (32/32 * 2/32 + 2/2 * 0.4/2) / 2 -> 86, B 1 - (8/32 * 2/32 + 1/2 * 0.4/2) / 2 -> 94.
    w = workload(tmp_path, "A,32000,65536,2,T4\nB,8000,65536,1,T4\n", "p,2000,10,1,400\nq,2000,10,1,500\n")
    for name in ("best-fit-authors", "gpu-packing-authors"):
        state, placed = run_sequence(w, POLICIES[name], [0, 1])
        assert placed == ["B", "B"] and usage(state) == {"B/gpu0": 90}, name
    _, placed = run_sequence(w, POLICIES["dot-product-authors"], [0])
    assert placed == ["B"]


def test_node_order_is_a_seeded_permutation_with_name_prefixes(tmp_path: Path) -> None:
    nodes = "".join(f"n{i},8000,65536,1,T4\n" for i in range(12))
    w = workload(tmp_path, nodes, "p,1000,1024,1,300\n")
    a, b, c = ordered_nodes(w.nodes, 1), ordered_nodes(w.nodes, 1), ordered_nodes(w.nodes, 2)
    assert a.names == b.names and a.names != c.names
    assert [n.split("-", 1)[0] for n in a.names] == [f"{i:04d}" for i in range(12)]
    assert sorted(n.split("-", 1)[1] for n in a.names) == sorted(w.nodes.names)
    assert a.names != [f"{i:04d}-{n}" for i, n in enumerate(w.nodes.names)]  # not the list's order
    # HAMi's binpack breaks ties by name, so in the fill its first task lands on the first node.
    state, placed = run_sequence(w, POLICIES["hami-binpack"], [0], node_seed=1)
    assert placed == [a.names[0]]


def test_authors_arrival_order_is_every_task_once_then_draws() -> None:
    batches = arrival_order(50, seed=3, arrival="authors")
    first = next(batches)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    later = next(batches)
    assert len(later) == 256 and all(0 <= t < 50 for t in later)
    assert len(set(later)) < len(later)  # drawn with replacement
    assert next(arrival_order(50, seed=3, arrival="sample")) != first
    with pytest.raises(ValueError, match="unknown arrival order"):
        next(arrival_order(50, seed=3, arrival="bogus"))


def test_fill_with_authors_arrival_places_each_trace_task_first(tmp_path: Path) -> None:
    w = workload(tmp_path, "A,64000,262144,8,T4\n", "".join(f"p{i},1000,10,1,{100 * (i + 1)}\n" for i in range(5)))
    r = run_fill(w, POLICIES["fgd"], seed=0, until=1.0, arrival="authors")
    # Demand of the five tasks: 1,500 of 8,000; then draws. After five arrivals exactly 1.5 GPUs.
    assert r.arrived[4] == pytest.approx(1500 / 8000)
