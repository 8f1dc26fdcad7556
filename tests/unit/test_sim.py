"""The simulator: hand-computed placements, invariants at every step, determinism, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hami.cli import main
from hami.errors import HamiError
from hami.scheduler.state import ClusterState
from hami.sim.fill import run_fill, run_sequence
from hami.sim.frag import Classes, Layout, node_fragmentation
from hami.sim.policies import POLICIES
from hami.sim.trace import read_nodes, read_tasks
from hami.sim.workload import (
    Workload,
    build_cluster,
    builtin_workload,
    load_workload,
    pod_request,
    summarize,
    tasks_by_kind,
    workload_from_model,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "openb-sample"


def handmade() -> Workload:
    return load_workload(SAMPLE / "handmade_pods.csv", SAMPLE / "handmade_nodes.csv", None)


def sample() -> Workload:
    return load_workload(SAMPLE / "openb_pod_list_default.csv", None, None)


def usage(state: ClusterState) -> dict[str, int]:
    return {uuid: int(c) for uuid, c in zip(state.uuids, state.usedcores.tolist(), strict=True) if c}


def test_binpack_by_hand() -> None:
    # share50 -> n1 (all equal: first name), gpu1 (ties: higher index); share30 -> fullest node n1,
    # fullest GPU gpu1 (80%); whole2 needs two free GPUs: only n2; cpu-hog asks 20 CPUs of 16.
    state, placed = run_sequence(handmade(), POLICIES["hami-binpack"], [0, 1, 2, 3])
    assert placed == ["n1", "n1", "n2", None]
    assert usage(state) == {"n1/gpu1": 80, "n2/gpu0": 100, "n2/gpu1": 100}
    assert int(state.usedcores.sum()) * 10 / (int(state.totalcore.sum()) * 10) == pytest.approx(0.7)
    assert state.node_cpu_used.tolist() == [2000, 2000]


def test_spread_by_hand() -> None:
    # share50 -> n1/gpu1; share30 -> the emptier node n2, gpu1; whole2 finds no node with two
    # free GPUs: spreading lost 200 of 400 placeable milli-GPU that binpack placed.
    state, placed = run_sequence(handmade(), POLICIES["hami-spread"], [0, 1, 2, 3])
    assert placed == ["n1", "n2", None, None]
    assert usage(state) == {"n1/gpu1": 50, "n2/gpu1": 30}
    assert int(state.usedmem.sum()) == 16384 * 50 // 100 + 16384 * 30 // 100


def test_request_mapping() -> None:
    share = pod_request("a", 1, 470, "", 4000, 1024).containers[0]
    assert (share.nums, share.coresreq, share.mem_percentage) == (1, 47, 47)
    odd = pod_request("b", 1, 55, "", 0, 0).containers[0]
    assert odd.coresreq == 6  # ceil: never less than asked
    whole = pod_request("c", 8, 1000, "V100M16|V100M32", 0, 0)
    assert (whole.containers[0].nums, whole.containers[0].coresreq) == (8, 100)
    assert whole.annotations["nvidia.com/use-gputype"] == "openb/V100M16/,openb/V100M32/"
    assert not pod_request("d", 0, 0, "", 1000, 0).wants_devices


def test_gpu_spec_is_honoured_and_v100m16_is_not_v100m32() -> None:
    w = sample()
    tasks = w.tasks
    constrained = [i for i, s in enumerate(tasks.gpu_spec) if s and tasks.num_gpu[i] > 0]
    assert constrained
    state, placed = run_sequence(w, POLICIES["hami-spread"], constrained)
    models = dict(zip(w.nodes.names, w.nodes.models, strict=True))
    for i, node in zip(constrained, placed, strict=True):
        if node is not None:
            assert models[node] in tasks.gpu_spec[i].split("|")
    assert any(p is not None for p in placed)


def overcommit_check(seen: list[int]) -> object:
    def check(state: ClusterState) -> None:
        seen.append(1)
        assert (state.used <= state.count).all()
        assert (state.usedcores <= state.totalcore).all()
        assert (state.usedmem <= state.totalmem).all()
        assert (state.node_cpu_used <= state.node_cpu).all()
        assert (state.node_memory_used <= state.node_memory).all()
        assert (state.used >= 0).all() and (state.usedcores >= 0).all()
    return check


@pytest.mark.parametrize("name", list(POLICIES))
def test_no_overcommit_at_any_step_and_ratio_at_most_one(name: str) -> None:
    seen: list[int] = []
    result = run_fill(sample(), POLICIES[name], seed=3, until=1.3, check=overcommit_check(seen))  # type: ignore[arg-type]
    assert len(seen) == result.tasks > 20
    assert (result.allocated <= 1.0).all() and (result.allocated >= 0).all()
    assert (np.diff(result.allocated) >= -1e-12).all()  # nothing leaves in the fill
    assert result.arrived[-1] >= 1.3
    # What is allocated never exceeds what arrived, and the shares add up.
    placed_share = result.arrived * (1 - result.unallocated)
    assert np.allclose(placed_share, result.allocated, atol=0.01 * result.arrived.max())
    assert (result.frag >= 0).all() and (result.frag <= 1).all()


def test_refused_tasks_are_reported_with_the_demand_before_them() -> None:
    w = sample()
    log: list[tuple[int, float]] = []
    result = run_fill(w, POLICIES["fgd"], seed=3, until=1.3, refused=lambda t, at: log.append((t, at)))
    assert log, "the sample cluster is full at 1.3 x: some tasks must be refused"
    demand = w.tasks.gpu_demand_milli
    capacity = Layout.of(ClusterState(build_cluster(w.nodes))).capacity_milli
    # The refused tasks' demand is what the unallocated share counts, and the arrival points
    # are where the arrived demand stood before each one.
    refused = sum(int(demand[t]) for t, _ in log)
    assert refused / capacity == pytest.approx(result.unallocated[-1] * result.arrived[-1], rel=1e-9)
    points = [at for _, at in log]
    assert points == sorted(points) and 0 <= points[0] < 1.3


@pytest.mark.parametrize("name", ["random", "fgd", "fgd-balance"])
def test_same_seed_same_run(name: str) -> None:
    a = run_fill(sample(), POLICIES[name], seed=5)
    b = run_fill(sample(), POLICIES[name], seed=5)
    assert np.array_equal(a.allocated, b.allocated) and np.array_equal(a.arrived, b.arrived)
    c = run_fill(sample(), POLICIES[name], seed=6)
    assert not np.array_equal(a.arrived, c.arrived)


def test_fragmentation_by_hand(tmp_path: Path) -> None:
    # One class: a 500 milli share. Node A: GPUs free 1000 and 300 -> 300 is fragment.
    (tmp_path / "nodes.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nA,8000,65536,2,T4\nB,8000,65536,1,T4\n")
    (tmp_path / "pods.csv").write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,1024,1,500\n")
    w = load_workload(tmp_path / "pods.csv", tmp_path / "nodes.csv", None)
    state = ClusterState(build_cluster(w.nodes))
    layout = Layout.of(state)
    classes = Classes.of(w.tasks, layout)
    state.usedcores[1] = 70  # A/gpu1 has 300 free
    state.usedcores[2] = 60  # B/gpu0 has 400 free: the whole node is fragment for a 500 share
    assert node_fragmentation(state, layout, classes).tolist() == [300.0, 400.0]
    state.node_cpu_used[0] = 7500  # A cannot host the class's CPU any more: all 1300 free is fragment
    assert node_fragmentation(state, layout, classes).tolist() == [1300.0, 400.0]


def test_fgd_picks_the_gpu_that_leaves_no_fragment(tmp_path: Path) -> None:
    # Workload: 500 and 200 shares, half each. A 200 task is placed first (on either GPU); then
    # a 500 task. On the GPU with 800 free it would leave 300 there: a fragment for the 500 class
    # (weight 1/2 x 300) while the other GPU stays whole. On the empty GPU it leaves 500 and 800:
    # no fragment for either class. FGD must take the empty GPU; binpack stacks them.
    (tmp_path / "nodes.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nA,8000,65536,2,T4\n")
    (tmp_path / "pods.csv").write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,100,10,1,500\nq,100,10,1,200\n"
    )
    w = load_workload(tmp_path / "pods.csv", tmp_path / "nodes.csv", None)
    for name in ("fgd", "fgd-exact", "fgd-balance"):  # 150 milli of growth is 4 score points
        state, placed = run_sequence(w, POLICIES[name], [1, 0])
        assert placed == ["A", "A"]
        assert sorted(usage(state).values()) == [20, 50], name  # not 70 on one GPU
    state, _ = run_sequence(w, POLICIES["hami-binpack"], [1, 0])
    assert sorted(usage(state).values()) == [70]  # binpack stacks them


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name,cpu_milli,memory_mib,num_gpu\np,1,1,1\n", ["pods.csv", "missing column", "gpu_milli"]),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,1,500\nq,-4,1,1,500\n",
         ["pods.csv", "row 3", "cpu_milli", ">= 0"]),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np,1,1,1,500,T4|H100\n",
         ["pods.csv", "row 2", "unknown GPU model H100"]),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,1,2000\n", ["row 2", "gpu_milli"]),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,x,1,1,500\n", ["row 2", "not a number"]),
    ],
)
def test_bad_tasks_name_file_and_row(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(text)
    with pytest.raises(HamiError) as err:
        read_tasks(path, known_models={"T4"})
    for word in words:
        assert word in str(err.value)


def test_bad_nodes(tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text("sn,cpu_milli,memory_mib,gpu,model\na,1000,1000,2,X9\n")
    with pytest.raises(HamiError, match=r"nodes.csv: row 2: unknown GPU model 'X9'"):
        read_nodes(path)


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np,1,1,1,500,Z1\n")
    code = main(["simulate", "--trace", str(path), "--nodes", str(SAMPLE / "handmade_nodes.csv"),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hami simulate: error: {path}: row 2: unknown GPU model Z1 in gpu_spec (the cluster has: T4)"]


def test_simulate_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["simulate", "--trace", str(SAMPLE / "openb_pod_list_default.csv"), "--seeds", "2", "--jobs", "1",
                 "--experiment", "all", "--policy", "hami-binpack", "--policy", "fgd", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["trace"].endswith("openb_pod_list_default.csv") and report["seeds"] == 2
    assert report["tasks_per_second"] > 0
    assert set(report["policies"]) == {"hami-binpack", "fgd"}
    for p in report["policies"].values():
        assert set(p["allocation_ratio"]) == {"0.9", "1.0", "1.1"}
        assert all(0 < r <= 1 for r in p["allocation_ratio"].values())
        assert 0 <= p["unallocated_gpu_share"]["1.0"] < 1
    assert set(report["replay"]) == {"hami-binpack", "fgd"}
    assert report["replay"]["fgd"]["tasks"] == 40
    assert (out / "allocation.png").stat().st_size > 1000 and (out / "replay.png").stat().st_size > 1000
    printed = capsys.readouterr()
    assert "ALLOC@1.0" in printed.out and "input: trace" in printed.err
    # The sample is named like the authors' default trace but is 40 of its tasks: no paper figures.
    assert report["published_trace"] is None and "published" not in report["policies"]["fgd"]
    assert "is named like the FGD authors' trace 'default' but is not the file they ran" in printed.err


def test_builtin_model_matches_the_trace_mix() -> None:
    w = builtin_workload()
    assert "built-in" in w.label
    assert len(w.tasks) == 8152 and int(w.nodes.gpus.sum()) == 6212 and len(w.nodes.names) == 1213
    assert w.tasks.creation is None
    shares = w.tasks.gpu_milli[(w.tasks.num_gpu == 1) & (w.tasks.gpu_milli < 1000)]
    assert 0 < len(shares) < len(w.tasks)
    result = run_fill(w, POLICIES["hami-binpack"], seed=0, until=0.02)
    assert result.allocated[-1] > 0


@pytest.mark.parametrize("name", ["random", "hami-binpack", "fgd", "fgd-balance"])
def test_a_trace_and_its_frequency_tables_fill_alike(name: str) -> None:
    # The built-in model keeps counts, not rows; the fill draws from the tasks sorted by kind and
    # orders the nodes sorted by kind, so the same seed gives the same run on both.
    trace = sample()
    assert tasks_by_kind(trace.tasks).tolist() != list(range(len(trace.tasks)))  # rows not in kind order
    model = workload_from_model(json.loads(json.dumps(summarize(trace.nodes, trace.tasks))), "model")
    a, b = (run_fill(w, POLICIES[name], seed=3, until=1.0) for w in (trace, model))
    assert np.array_equal(a.allocated, b.allocated) and np.array_equal(a.frag, b.frag)
    assert not np.array_equal(a.allocated, run_fill(trace, POLICIES[name], seed=4, until=1.0).allocated)


def test_unknown_policy() -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--bogus"])
    assert main(["simulate", "--policy", "nope", "--trace", str(SAMPLE / "openb_pod_list_default.csv")]) == 2


@pytest.mark.parametrize("name", ["hami-binpack", "fgd", "fgd-balance"])
def test_fill_places_as_engine_schedule_does(name: str) -> None:
    # The fill's fast path (one PodContext per task class) must decide exactly as engine.schedule.
    w = sample()
    result = run_fill(w, POLICIES[name], seed=11, until=1.2)
    draw = np.random.default_rng(11)
    by_kind = tasks_by_kind(w.tasks)  # the fill draws from the tasks in kind order
    order: list[int] = []
    while len(order) < result.tasks:
        order += by_kind[draw.integers(len(w.tasks), size=256)].tolist()
    state, placed = run_sequence(w, POLICIES[name], order[: result.tasks], seed=11, node_seed=11)
    assert int(state.usedcores.sum()) * 10 / (int(state.totalcore.sum()) * 10) == pytest.approx(result.allocated[-1])
    assert sum(p is None for p in placed) > 0  # the run goes past full: some tasks fail


def test_engine_names_cpu_and_memory_shortage() -> None:
    # The node CPU/memory checks the simulator relies on, with and without reason texts.
    from hami.scheduler.engine import PolicyDefaults, schedule

    state = ClusterState(build_cluster(handmade().nodes))
    state.node_memory_used[1] = 65536 - 100
    big_cpu = pod_request("a", 1, 500, "", 17000, 10)
    assert schedule(state, big_cpu).reasons == {"n1": "NodeInsufficientCPU", "n2": "NodeInsufficientCPU"}
    big_mem = pod_request("b", 1, 500, "", 1000, 200)
    d = schedule(state, big_mem, PolicyDefaults())
    assert d.node == "n1" and d.reasons == {"n2": "NodeInsufficientMemory"}
    quiet = schedule(state, big_mem, explain=False)
    assert quiet.node == "n1" and quiet.reasons == {}


def test_replay_by_hand() -> None:
    from hami.sim.replay import run_replay

    # Spread puts share50 (t=0..100) on n1 and share30 (t=10..100) on n2; whole2 (t=20) finds no
    # node with two free GPUs and waits until t=100; cpu-hog (20 CPUs of 16) never starts.
    spread = run_replay(handmade(), POLICIES["hami-spread"])
    assert (spread.waited, spread.delays, spread.never_placed) == (1, [80.0], 1)
    binpack = run_replay(handmade(), POLICIES["hami-binpack"])
    assert (binpack.waited, binpack.never_placed) == (0, 1)
    assert max(binpack.allocation) == pytest.approx(0.7)
    # Ten times denser arrivals (lifetimes kept): share30 runs t=1..91 on n2 and whole2, arrived
    # at t=2, starts there when it leaves.
    dense = run_replay(handmade(), POLICIES["hami-spread"], speedup=10)
    assert dense.delays == [89.0]
