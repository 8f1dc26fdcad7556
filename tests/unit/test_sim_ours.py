"""Our policy, fgd-balance: its two terms computed by hand, and the placements they change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hami.scheduler.state import ClusterState, IntArray
from hami.sim.fill import run_sequence
from hami.sim.frag import Layout
from hami.sim.policies import POLICIES
from hami.sim.policies.ours import Pressure, cpu_load, feed_rates, unfed
from hami.sim.workload import Workload, build_cluster, load_workload


def workload(tmp_path: Path, nodes: str, pods: str) -> Workload:
    (tmp_path / "nodes.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\n" + nodes)
    (tmp_path / "pods.csv").write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + pods)
    return load_workload(tmp_path / "pods.csv", tmp_path / "nodes.csv", None)


def test_unfed_gpu_by_hand() -> None:
    # 8 milli-CPU and 4 MiB per milli-GPU. 2,000 free milli-GPU with 12 CPUs: CPU feeds 1,500,
    # memory (16 GiB) 4,096: 500 unfed. With 20 CPUs and 4 GiB memory feeds only 1,024: 976.
    # Plenty of both: nothing unfed.
    gpu = np.asarray([2000.0, 2000.0, 2000.0])
    cpu = np.asarray([12000.0, 20000.0, 64000.0])
    mem = np.asarray([16384.0, 4096.0, 65536.0])
    assert unfed(gpu, cpu, mem, 8.0, 4.0).tolist() == [500.0, 976.0, 0.0]


def test_feed_rates_count_gpu_tasks_only(tmp_path: Path) -> None:
    # GPU tasks: 4 CPUs and 2 GiB for 500 milli-GPU, 12 CPUs and 6 GiB for 1,000: 16,000 milli-CPU
    # and 8,192 MiB for 1,500 milli-GPU. The CPU-only task does not count.
    w = workload(tmp_path, "A,64000,65536,2,T4\n",
                 "p,4000,2048,1,500,\nq,12000,6144,1,1000,\nc,32000,1024,0,0,\n")
    assert feed_rates(w.tasks) == pytest.approx((16000 / 1500, 8192 / 1500))



def test_cpu_only_tasks_join_the_feed_rates_when_cpu_runs_short(tmp_path: Path) -> None:
    # One node: 2 GPUs and 16 CPUs, 8 milli-CPU per milli-GPU. A GPU task: 4 CPUs and 1 GiB for
    # 1,000 milli-GPU. With a CPU-only task of 20 CPUs (and 3 GiB) the workload needs 24 milli-CPU
    # per milli-GPU, 3 times what the cluster has: all of the CPU-only task's CPU and memory
    # joins the rates, 4 + 20 = 24 and 1.024 + 3.072 = 4.096. A CPU-only task of 2 CPUs makes the
    # load 6 / 8 = 0.75, under 0.9: the GPU tasks' rates alone. One of 3.6 CPUs makes it 7.6 / 8 =
    # 0.95, halfway from 0.9 to 1.0: half of it joins, 4 + 1.8 = 5.8 and 1.024 + 1.536 = 2.56.
    heavy = workload(tmp_path, "A,16000,65536,2,T4\n", "g,4000,1024,1,1000,\nc,20000,3072,0,0,\n")
    layout = Layout.of(ClusterState(build_cluster(heavy.nodes)))
    assert cpu_load(heavy.tasks, layout) == pytest.approx(3.0)
    assert feed_rates(heavy.tasks, layout) == pytest.approx((24.0, 4.096))
    light = workload(tmp_path, "A,16000,65536,2,T4\n", "g,4000,1024,1,1000,\nc,2000,3072,0,0,\n")
    assert cpu_load(light.tasks, layout) == pytest.approx(0.75)
    assert feed_rates(light.tasks, layout) == pytest.approx((4.0, 1.024))
    ramp = workload(tmp_path, "A,16000,65536,2,T4\n", "g,4000,1024,1,1000,\nc,3600,3072,0,0,\n")
    assert cpu_load(ramp.tasks, layout) == pytest.approx(0.95)
    assert feed_rates(ramp.tasks, layout) == pytest.approx((5.8, 2.56))

def test_kind_pressure_by_hand(tmp_path: Path) -> None:
    # Kinds: T4 (two 2-GPU nodes, 4,000 milli) and V100M32 (one 8-GPU node, 8,000). A task that
    # may run anywhere spreads 1,000 as 1/12 per milli on both; a T4-only task puts 1,000/4,000
    # on T4. Loads 1/3 and 1/12, the average 2,000/12,000 = 1/6: pressures 2.0 and 0.5.
    w = workload(tmp_path, "a,64000,65536,2,T4\nb,64000,65536,2,T4\nv,64000,65536,8,V100M32\n",
                 "p,1000,1024,1,1000,\nq,1000,1024,1,1000,T4\n")
    state = ClusterState(build_cluster(w.nodes))
    layout = Layout.of(state)
    pressure = Pressure(layout, w.tasks).per_node(state)
    assert pressure.tolist() == pytest.approx([2.0, 2.0, 0.5])
    # As T4 fills up its pressure rises. One T4 GPU left (9,000 milli free in all): the T4-only
    # half of the demand lands on 1,000, the other half on 9,000; against the average (all of it
    # on 9,000) T4 gets 1/2 * 9 + 1/2 = 5.0 and V100M32 still 0.5.
    state.node_usedcores[:2] = [200, 100]
    assert Pressure(layout, w.tasks).per_node(state).tolist() == pytest.approx([5.0, 5.0, 0.5])
    # A kind too small for a task gets none of its demand: 4-GPU tasks fit only the V100M32 node.
    w = workload(tmp_path, "a,64000,65536,2,T4\nv,64000,65536,8,V100M32\n", "p,1000,1024,4,1000,\n")
    state = ClusterState(build_cluster(w.nodes))
    assert Pressure(Layout.of(state), w.tasks).per_node(state).tolist() == pytest.approx([0.0, 1.25])


def test_cpu_only_task_goes_where_cpu_is_plentiful(tmp_path: Path) -> None:
    # A (first in order): 2 GPUs, 16 CPUs; B: 2 GPUs, 104 CPUs. GPU tasks need 8 CPUs per GPU.
    # A CPU-only task of 8 CPUs leaves A able to host the GPU tasks (FGD sees no growth and
    # takes the first node, A), but then A's 8 CPUs feed only one of its two GPUs: 1,000
    # milli-GPU unfed. On B nothing becomes unfed: fgd-balance takes B.
    w = workload(tmp_path, "A,16000,65536,2,T4\nB,104000,65536,2,T4\n", "g,8000,1024,1,1000,\nc,8000,1024,0,0,\n")
    _, placed = run_sequence(w, POLICIES["fgd"], [1])
    assert placed == ["A"]
    _, placed = run_sequence(w, POLICIES["fgd-balance"], [1])
    assert placed == ["B"]


def test_flexible_task_leaves_the_contested_model(tmp_path: Path) -> None:
    # A T4 node first in order, then another T4 and a V100M32 node. Tasks: any model, T4 only,
    # V100M32 only, a third each. For a task that may run anywhere FGD sees the same growth on
    # both models (each is off limits to one constrained class of the same popularity) and takes
    # the first node. Pressure: T4 (4,000 milli) gets 1/12 + 1/4, V100M32 (8,000) 1/12 + 1/8;
    # over the average 1/4: 4/3 and 5/6. On T4 the task costs 1,000 x (4/3 - 5/6) x 0.5 = 250
    # milli more: fgd-balance takes the V100M32.
    w = workload(tmp_path, "a,64000,65536,2,T4\nb,64000,65536,2,T4\nv,64000,65536,8,V100M32\n",
                 "p,1000,1024,1,1000,\nq,1000,1024,1,1000,T4\nr,1000,1024,1,1000,V100M32\n")
    _, placed = run_sequence(w, POLICIES["fgd"], [0])
    assert placed == ["a"]
    _, placed = run_sequence(w, POLICIES["fgd-balance"], [0])
    assert placed == ["v"]
    _, placed = run_sequence(w, POLICIES["fgd-balance"], [1])  # the T4-only task has no choice
    assert placed == ["a"]


def test_guard_keeps_places_for_multi_gpu_tasks(tmp_path: Path) -> None:
    # 8-GPU nodes; the demand: sixteen 1-GPU tasks and one 8-GPU task (a third of the GPU
    # demand). Node 0 has one GPU taken, so it has no place for the 8-GPU task. With three nodes
    # 23,000 milli are free: the 8-GPU tasks would get a third, 0.96 tasks, so N = 1.96; two
    # places: taking one is missed with chance (2N - 2) / N = 0.979: it costs 0.979 x 8,000
    # milli. With ten nodes (79,000 free, N = 4.29, nine places) there are enough: no cost.
    # A node without a place never costs.
    pods = "".join(f"s{i},1000,1024,1,1000,\n" for i in range(16)) + "big,8000,8192,8,1000,\n"
    for count, expected in ((3, 8000 * (2 * (1 + 23 / 24) - 2) / (1 + 23 / 24)), (10, 0.0)):
        nodes = "".join(f"n{i},96000,786432,8,V100M32\n" for i in range(count))
        w = workload(tmp_path, nodes, pods)
        state = ClusterState(build_cluster(w.nodes))
        state.usedcores[0] = state.node_usedcores[0] = 100
        taken = np.asarray([1, 1], dtype=np.int64)
        guard = Pressure(Layout.of(state), w.tasks).guard(state, np.asarray([0, 1], dtype=np.int64), taken, 1000, 1024)
        assert guard.tolist() == pytest.approx([0.0, expected]), count


def test_guard_expects_fewer_tasks_when_cpu_runs_short(tmp_path: Path) -> None:
    # The guard's first case, with 1-GPU tasks of 12 CPUs: the workload needs 200,000 milli-CPU
    # for 24,000 milli-GPU, 25/3 per milli-GPU. Node 0 (a GPU taken) has 1 CPU left, node 2 only
    # the 8 CPUs of one 8-GPU task. The 105,000 free milli-CPU bring tasks to 12,600 of the 23,000
    # free milli-GPU, a third of it to the 8-GPU tasks: N = 1 + 0.525 = 1.525 (not 1.96), two places,
    # so taking one on node 1 misses with chance (2N - 2) / N = 0.689 (not 0.979).
    pods = "".join(f"s{i},12000,1024,1,1000,\n" for i in range(16)) + "big,8000,8192,8,1000,\n"
    w = workload(tmp_path, "".join(f"n{i},96000,786432,8,V100M32\n" for i in range(3)), pods)
    state = ClusterState(build_cluster(w.nodes))
    state.usedcores[0] = state.node_usedcores[0] = 100
    state.node_cpu_used[0], state.node_cpu_used[2] = 95000, 88000
    pressure = Pressure(Layout.of(state), w.tasks)
    guard = pressure.guard(state, np.asarray([0, 1], dtype=np.int64), np.asarray([1, 1], dtype=np.int64), 1000, 1024)
    expected = 1 + 105000 * 3 / 25 / 3 / 8000
    assert guard.tolist() == pytest.approx([0.0, 8000 * (2 * expected - 2) / expected])
    # The ablation's switch: without the bound all of the free GPU brings tasks, N = 1 + 23/24.
    pressure.hosted = False
    guard = pressure.guard(state, np.asarray([1], dtype=np.int64), np.asarray([1], dtype=np.int64), 1000, 1024)
    assert guard.tolist() == pytest.approx([8000 * (2 * (1 + 23 / 24) - 2) / (1 + 23 / 24)])
    pressure.hosted = True
    # With the CPU free again, the free GPU bounds what comes: the first case's 0.979.
    state.node_cpu_used[0], state.node_cpu_used[2] = 0, 88000
    guard = pressure.guard(state, np.asarray([1], dtype=np.int64), np.asarray([1], dtype=np.int64), 1000, 1024)
    assert guard.tolist() == pytest.approx([8000 * (2 * (1 + 23 / 24) - 2) / (1 + 23 / 24)])


def test_guard_counts_cpu_and_the_tasks_that_need_the_same_nodes(tmp_path: Path) -> None:
    # Two G3 nodes with 128 CPUs, two V100M32 nodes with 96. A "huge" 8-GPU task needs 120 CPUs
    # (G3 only), a "wide" 8-GPU task 8 CPUs (anywhere), sixteen 1-GPU tasks; each 8-GPU type is a
    # quarter of the demand. All 32,000 milli free: huge N = 1 + 8000/8000 = 2 with 2 places,
    # missed (4 - 2) / 2 = 1; wide also counts the huge tasks, which can only go where it can:
    # N = 1 + 1 + 1 = 3 with 4 places, missed (6 - 4) / 3 = 2/3.
    nodes = "g0,128000,786432,8,G3\nv0,96000,393216,8,V100M32\ng1,128000,786432,8,G3\nv1,96000,393216,8,V100M32\n"
    pods = ("huge,120000,655360,8,1000,\nwide,8000,65536,8,1000,\n"
            + "".join(f"s{i},4000,8192,1,1000,\n" for i in range(16)))
    w = workload(tmp_path, nodes, pods)
    state = ClusterState(build_cluster(w.nodes))
    pressure = Pressure(Layout.of(state), w.tasks)
    candidates = np.asarray([state.names.index("g0"), state.names.index("v0")], dtype=np.int64)
    none = np.zeros(2, dtype=np.int64)
    # A CPU-only task of 16 CPUs leaves a G3 node 112: no place for the huge task there, though
    # every GPU is free. On the V100M32 node it takes no place.
    assert pressure.guard(state, candidates, none, 16000, 8192).tolist() == pytest.approx([8000.0, 0.0])
    # A 1-GPU task takes a place for both types; the huge type's cost is the larger.
    one = np.ones(2, dtype=np.int64)
    assert pressure.guard(state, candidates, one, 4000, 8192).tolist() == pytest.approx([8000.0, 8000 * 2 / 3])
    # Once g0's CPU is in use it has no place for the huge task (which now misses for sure: one
    # place left), so taking its GPU costs only the wide type's 2/3; a CPU-only task costs nothing.
    state.node_cpu_used[candidates[0]] = 16000
    assert pressure.guard(state, candidates, none, 4000, 8192).tolist() == pytest.approx([0.0, 0.0])
    assert pressure.guard(state, candidates, one, 4000, 8192).tolist() == pytest.approx([8000 * 2 / 3] * 2)


def test_places_kept_per_node_match_a_full_recount(tmp_path: Path) -> None:
    # total_places recounts only the nodes whose free capacity changed since its last call; after
    # any sequence of changes it must equal counting every node again.
    nodes = "".join(f"n{i},{(96 + 32 * (i % 2)) * 1000},786432,8,{'G3' if i % 2 else 'V100M32'}\n" for i in range(6))
    pods = ("huge,120000,655360,8,1000,\nwide,8000,65536,4,1000,\n"
            + "".join(f"s{i},4000,8192,1,1000,\n" for i in range(8)))
    w = workload(tmp_path, nodes, pods)
    state = ClusterState(build_cluster(w.nodes))
    pressure = Pressure(Layout.of(state), w.tasks)
    rng = np.random.default_rng(0)

    def free() -> tuple[IntArray, IntArray, IntArray]:
        whole = np.add.reduceat((state.usedcores == 0).astype(np.int64), state.starts[:-1])
        return whole, state.node_cpu - state.node_cpu_used, state.node_memory - state.node_memory_used

    totals = []
    for _ in range(40):
        node = int(rng.integers(len(state.names)))
        gpu = int(state.starts[node] + rng.integers(8))
        state.usedcores[gpu] = int(rng.choice([0, 0, 50, 100]))
        state.node_cpu_used[node] = int(rng.integers(0, int(state.node_cpu[node]) + 1))
        state.node_memory_used[node] = int(rng.integers(0, int(state.node_memory[node]) + 1))
        whole, cpu, mem = free()
        kept = pressure.total_places(whole, cpu, mem)
        assert kept.tolist() == pressure.places(pressure.kind, whole, cpu, mem).sum(axis=1).tolist()
        totals.append(kept.tolist())
    assert len({tuple(t) for t in totals}) > 3  # the changes did move the places
