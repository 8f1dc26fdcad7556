"""The pure victim search (hami.scheduler.preempt): its rules, case by case, and a property test
that the set it picks is the best by the rules (against a brute force over every subset) and
that the preemptor then fits."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.model import ContainerDevice, ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.model.allocation import PodAllocation
from hami.scheduler.engine import PodContext, PolicyDefaults, fit_pod_on_node, schedule
from hami.scheduler.preempt import NO_PRIORITY, Plan, plan_preemption
from hami.scheduler.state import ClusterState
from tests.unit.engine_helpers import container, gpu, node, place, pod
from tests.unit.mig_helpers import synthetic_a100
from tests.unit.vendor_helpers import ctr, pod_obj, request, state_of
from tests.unit.vendor_helpers import node_obj as vendor_node


def held(*devices: tuple[str, int, int]) -> PodAllocation:
    """One container holding (uuid, MiB, cores) on each device."""
    return (tuple(ContainerDevice(uuid, "NVIDIA", mem, cores) for uuid, mem, cores in devices),)


def cluster(*nodes: NodeDevices, pods: dict[str, tuple[str, PodAllocation]]) -> ClusterState:
    state = ClusterState(list(nodes))
    for key, (where, allocation) in pods.items():
        assert not state.add_pod(key, where, allocation)
    return state


def preempt(state: ClusterState, preemptor: PodRequest, priority: int, priorities: dict[str, int],
            **kw: Any) -> Plan | None:
    return plan_preemption(state, preemptor, priority, priorities, **kw).plan


def fits_without(state: ClusterState, preemptor: PodRequest, victims: tuple[str, ...]) -> bool:
    with state.without(victims):
        return schedule(state, preemptor).node is not None


def test_evicts_the_pod_that_frees_enough() -> None:
    state = cluster(node("n1", gpu("g0")), pods={
        "t/a": ("n1", held(("g0", 10000, 0))), "t/b": ("n1", held(("g0", 10000, 0))),
        "t/c": ("n1", held(("g0", 2000, 0)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=12000)), 10, {"t/a": 1, "t/b": 1, "t/c": 1})
    assert plan is not None and plan.node == "n1"
    assert plan.victims in (("t/a",), ("t/b",))  # one pod, the smaller share loses the tie: equal here
    assert plan.victims == ("t/a",)  # equal in every rule: the first key
    assert plan.allocation[0][0].uuid == "g0"
    assert fits_without(state, pod("p", container(gpu=1, mem=12000)), plan.victims)


def test_lowest_priority_comes_before_fewest_pods() -> None:
    # Freeing 12000 MiB: b alone (priority 5), or a and c together (priority 1).
    state = cluster(node("n1", gpu("g0", mem=26000)), pods={
        "t/a": ("n1", held(("g0", 8000, 0))), "t/b": ("n1", held(("g0", 12000, 0))),
        "t/c": ("n1", held(("g0", 6000, 0)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=12000)), 10, {"t/a": 1, "t/b": 5, "t/c": 1})
    assert plan is not None and plan.victims == ("t/a", "t/c")
    assert plan.key.highest_priority == 1 and plan.key.count == 2


def test_fewest_pods_come_before_least_share() -> None:
    # Same priority: one pod of 12000 beats two of 6000 (less share lost, but two pods).
    state = cluster(node("n1", gpu("g0")), pods={
        "t/big": ("n1", held(("g0", 12000, 0))), "t/s1": ("n1", held(("g0", 6000, 0))),
        "t/s2": ("n1", held(("g0", 6000, 0)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=12000)), 10, dict.fromkeys(("t/big", "t/s1", "t/s2"), 0))
    assert plan is not None and plan.victims == ("t/big",)


def test_least_share_breaks_a_tie_of_priority_and_count() -> None:
    # Either pod frees enough slots (count 2); the one with less memory and compute goes.
    state = cluster(node("n1", gpu("g0", count=2)), pods={
        "t/heavy": ("n1", held(("g0", 9000, 40))), "t/light": ("n1", held(("g0", 1000, 10)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=1000)), 10, {"t/heavy": 0, "t/light": 0})
    assert plan is not None and plan.victims == ("t/light",)
    assert plan.key.share == round((1000 / 24000 + 10 / 100) / 2, 9)


def test_pods_of_equal_or_higher_priority_are_never_victims() -> None:
    state = cluster(node("n1", gpu("g0")), pods={
        "t/same": ("n1", held(("g0", 20000, 0))), "t/higher": ("n1", held(("g0", 4000, 0)))})
    outcome = plan_preemption(state, pod("p", container(gpu=1, mem=8000)), 10, {"t/same": 10, "t/higher": 11})
    assert outcome.plan is None
    assert "n1" in outcome.reasons


def test_nothing_is_planned_when_the_pod_would_still_not_fit() -> None:
    state = cluster(node("n1", gpu("g0"), gpu("g1")), pods={"t/a": ("n1", held(("g0", 20000, 0)))})
    # More memory than any device has; more devices than the node has; a type it does not have.
    for preemptor in (pod("p", container(gpu=1, mem=30000)), pod("p", container(gpu=3, mem=1000)),
                      pod("p", container(gpu=1, mem=1000), annotations={"nvidia.com/use-gputype": "H100"})):
        outcome = plan_preemption(state, preemptor, 10, {"t/a": 0})
        assert outcome.plan is None
        assert outcome.reasons["n1"].startswith("does not fit even without its")


def test_exclusive_ask_empties_the_device_with_the_fewest_pods() -> None:
    state = cluster(node("n1", gpu("g0"), gpu("g1")), pods={
        "t/a1": ("n1", held(("g0", 1000, 10))), "t/a2": ("n1", held(("g0", 1000, 10))),
        "t/b1": ("n1", held(("g1", 1000, 10)))})
    plan = preempt(state, pod("p", container(gpu=1, cores=100)), 10, dict.fromkeys(("t/a1", "t/a2", "t/b1"), 0))
    assert plan is not None and plan.victims == ("t/b1",)
    assert plan.allocation[0][0].uuid == "g1"


def test_a_pod_spanning_two_devices_is_one_victim_for_two() -> None:
    # The preemptor needs two whole GPUs: evicting the one pod on g0 and g1 beats two pods.
    state = cluster(node("n1", gpu("g0"), gpu("g1"), gpu("g2")), pods={
        "t/wide": ("n1", held(("g0", 1000, 0), ("g1", 1000, 0))),
        "t/x": ("n1", held(("g2", 1000, 0))), "t/y": ("n1", held(("g1", 500, 0)))})
    plan = preempt(state, pod("p", container(gpu=2, cores=100)), 10, dict.fromkeys(("t/wide", "t/x", "t/y"), 0))
    assert plan is not None
    # g0+g2: wide and x (2 pods); g0+g1: wide and y (2); g1+g2: wide, y, x (3). Equal counts:
    # the least share lost, wide and y.
    assert plan.victims == ("t/wide", "t/y")


def test_the_node_with_the_lowest_priority_victims_is_chosen() -> None:
    state = cluster(node("a", gpu("a0")), node("b", gpu("b0")), pods={
        "t/on-a": ("a", held(("a0", 20000, 0))), "t/on-b1": ("b", held(("b0", 10000, 0))),
        "t/on-b2": ("b", held(("b0", 10000, 0)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=16000)), 10, {"t/on-a": 3, "t/on-b1": 1, "t/on-b2": 2})
    assert plan is not None and plan.node == "b" and plan.victims == ("t/on-b1", "t/on-b2")
    plan = preempt(state, pod("p", container(gpu=1, mem=16000)), 10, {"t/on-a": 2, "t/on-b1": 1, "t/on-b2": 2})
    assert plan is not None and plan.node == "a" and plan.victims == ("t/on-a",)  # fewer pods at priority 2


def test_only_the_nodes_given_are_considered() -> None:
    state = cluster(node("a", gpu("a0")), node("b", gpu("b0")), pods={
        "t/on-a": ("a", held(("a0", 20000, 0))), "t/on-b": ("b", held(("b0", 20000, 0)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=16000)), 10, {"t/on-a": 0, "t/on-b": 5}, nodes=["b"])
    assert plan is not None and plan.node == "b"


def test_pods_already_going_free_their_share_without_new_victims() -> None:
    state = cluster(node("n1", gpu("g0")), pods={
        "t/leaving": ("n1", held(("g0", 20000, 0))), "t/a": ("n1", held(("g0", 4000, 0)))})
    plan = preempt(state, pod("p", container(gpu=1, mem=16000)), 10, {"t/a": 0}, gone=["t/leaving"])
    assert plan is not None and plan.victims == () and plan.key.highest_priority == NO_PRIORITY
    assert state.pods["t/leaving"].node == 0  # the state is left as it was
    assert int(state.usedmem[0]) == 24000


def test_a_snapshot_moves_without_the_live_state() -> None:
    state = cluster(node("n1", gpu("g0")), pods={"t/a": ("n1", held(("g0", 20000, 0)))})
    copy = state.snapshot()
    copy.remove_pod("t/a")
    copy.add_pod("t/b", "n1", held(("g0", 1000, 10)))
    with copy.without(["t/b"]):
        assert int(copy.usedmem[0]) == 0
    assert int(state.usedmem[0]) == 20000 and int(state.usedcores[0]) == 0 and set(state.pods) == {"t/a"}
    assert int(copy.usedmem[0]) == 1000 and int(copy.node_usedcores[0]) == 10
    # MIG partitions too.
    mig = ClusterState([node("n", synthetic_a100())])
    place(mig, pod("two", container(gpu=1, mem=10000)))
    copy = mig.snapshot()
    copy.remove_pod("t/two")
    assert copy.parts_of(0) == [] and len(mig.parts_of(0)) == 1


def test_a_hold_counts_so_a_second_preemptor_evicts_for_itself() -> None:
    # The first preemptor's hold takes what its victim frees; the second needs its own victim.
    state = cluster(node("n1", gpu("g0"), gpu("g1")), pods={
        "t/v0": ("n1", held(("g0", 20000, 0))), "t/v1": ("n1", held(("g1", 20000, 0))),
        "t/hold-p1": ("n1", held(("g0", 16000, 0)))})
    plan = preempt(state, pod("p2", container(gpu=1, mem=16000)), 10, {"t/v0": 0, "t/v1": 0}, gone=["t/v0"])
    assert plan is not None and plan.victims == ("t/v1",)


def test_forced_victims_are_kept_and_completed() -> None:
    # kube-scheduler chose t/cpu (no devices here) for CPU; the pod also needs g0's memory.
    state = cluster(node("n1", gpu("g0")), pods={"t/a": ("n1", held(("g0", 20000, 0)))})
    outcome = plan_preemption(state, pod("p", container(gpu=1, mem=16000)), 10, {"t/a": 0},
                              forced={"n1": ["t/cpu"]})
    assert outcome.plan is not None and outcome.plan.victims == ("t/a", "t/cpu")


def test_slices_on_a_topology_vendor() -> None:
    # Ascend 910B3: 8 NPUs in two network groups; an ask of 4 whole NPUs wants one group.
    devices = [{"id": f"npu-{i}", "index": i, "count": 4, "devmem": 65536, "devcore": 20, "type": "Ascend910B3",
                "health": True, "custominfo": {"NetworkID": 0 if i < 4 else 1}} for i in range(8)]
    state = state_of(vendor_node("n1", {"hami.io/node-register-Ascend910B3": json.dumps(devices)}))
    priorities = {}
    for i in range(8):
        key = f"t/s{i}"
        allocation: PodAllocation = ((ContainerDevice(f"npu-{i}", "Ascend910B3", 16384, 0),),)
        assert not state.add_pod(key, "n1", allocation)
        priorities[key] = 0 if i in (1, 2, 5) else 3
    whole = request(pod_obj("p", ctr(**{"huawei.com/Ascend910B3": 4})))
    plan = plan_preemption(state, whole, 10, priorities).plan
    assert plan is not None
    # Four NPUs must be emptied (the engine takes them across groups when it must); only three
    # pods have priority 0, so one of priority 3 goes too: the least priority summed keeps the
    # three of priority 0, and the first name of the rest breaks the tie.
    assert plan.key.highest_priority == 3 and plan.key.count == 4 and plan.key.priority_sum == 3
    assert set(plan.victims) == {"t/s0", "t/s1", "t/s2", "t/s5"}
    assert plan.exact
    assert fits_without(state, whole, plan.victims)


def test_mig_partitions_are_freed_by_the_victims() -> None:
    # Three 2g instances fill the A100's placements; a 3g needs two neighbouring 2g ones gone.
    state = ClusterState([node("n", synthetic_a100())])
    priorities = {}
    for i, level in enumerate((0, 1, 2)):
        assert place(state, pod(f"two{i}", container(gpu=1, mem=10000))).node == "n"
        priorities[f"t/two{i}"] = level
    big = pod("p", container(gpu=1, mem=20000))
    assert schedule(state, big).node is None
    plan = plan_preemption(state, big, 10, priorities).plan
    assert plan is not None and plan.allocation[0][0].part is not None
    assert plan.allocation[0][0].part.profile == "3g.20gb"
    # A 3g takes slices 0-3 (the pods of priority 0 and 1) or 4-7 (the one of priority 2): the
    # lowest highest priority wins over the fewest pods.
    assert plan.victims == ("t/two0", "t/two1") and plan.allocation[0][0].part.start == 0
    assert fits_without(state, big, plan.victims)
    assert all(not fits_without(state, big, tuple(v for v in plan.victims if v != gone)) for gone in plan.victims)


# ---- the property: best by the rules, and the preemptor fits -----------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ClusterState, PodRequest, int, dict[str, int], list[str]]:
    """Nodes whose devices are mostly full of pods of a few priorities (some spanning two
    devices, some already terminating), and a preemptor that usually does not fit."""
    nodes = []
    for n in range(draw(st.integers(1, 3))):
        devices = tuple(DeviceInfo(id=f"n{n}-g{i}", count=draw(st.integers(2, 4)),
                                   devmem=draw(st.sampled_from([8000, 16000])), devcore=100,
                                   type="NVIDIA-A10", index=i)
                        for i in range(draw(st.integers(1, 3))))
        nodes.append(NodeDevices(name=f"n{n}", devices=devices))
    state = ClusterState(nodes)
    priorities: dict[str, int] = {}
    gone: list[str] = []
    number = itertools.count()
    for spec in nodes:
        for d in spec.devices:
            # Fill the device with up to `count` pods of a few sizes; a pod may also take the
            # next device of its node (a two-device pod).
            for _ in range(draw(st.integers(1, d.count))):
                share = draw(st.sampled_from([4, 3, 2]))
                others = [o for o in spec.devices if o.index == d.index + 1 and draw(st.integers(0, 3)) == 0]
                allocation = (tuple(ContainerDevice(x.id, "NVIDIA", x.devmem // share, draw(st.sampled_from([0, 20])))
                                    for x in (d, *others)),)
                key = f"t/v{next(number)}"
                state.add_pod(key, spec.name, allocation)
                if (state.used > state.count).any() or (state.usedmem > state.totalmem).any() or \
                        (state.usedcores > state.totalcore).any():
                    state.remove_pod(key)  # only pods that fit, as the scheduler would have placed them
                    continue
                if draw(st.integers(0, 7)) == 0:
                    gone.append(key)
                else:
                    priorities[key] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        # One container, one ask: the exact device search.
        nums, cores = draw(st.integers(1, 2)), draw(st.sampled_from([0, 30, 60, 100]))
        if draw(st.booleans()):
            ask = ContainerRequest(nums=nums, memreq=draw(st.sampled_from([4000, 7000, 10000])), coresreq=cores)
        else:
            ask = ContainerRequest(nums=nums, mem_percentage=draw(st.sampled_from([50, 100])), coresreq=cores)
        preemptor = PodRequest(key="t/p", containers=(ask,))
    else:
        # Two app containers that compete for devices: the search by subsets.
        first = ContainerRequest(nums=1, memreq=draw(st.sampled_from([3000, 6000])), coresreq=30)
        second = ContainerRequest(nums=draw(st.integers(1, 2)), memreq=draw(st.sampled_from([3000, 6000])),
                                  coresreq=draw(st.sampled_from([0, 60])))
        preemptor = PodRequest(key="t/p", containers=(first, second))
    return state, preemptor, draw(st.integers(1, 4)), priorities, gone


def brute_force(state: ClusterState, preemptor: PodRequest, priority: int, priorities: dict[str, int],
                gone: list[str]) -> tuple[Any, ...] | None:
    """The best (highest priority, count, share, priority sum, node, victims) over every subset of
    every node's lower-priority pods, computed independently of the search."""
    ctx = PodContext.of(preemptor, PolicyDefaults())
    best = None
    with state.without(gone):
        static = ctx.static_codes(state)
        for n, name in enumerate(state.names):
            pool = sorted(k for k, p in priorities.items() if p < priority and state.pods[k].node == n)
            for size in range(len(pool) + 1):
                for victims in itertools.combinations(pool, size):
                    with state.without(victims):
                        if fit_pod_on_node(state, n, ctx, static)[0] is None:
                            continue
                    share = 0.0
                    for key in victims:
                        f = state.pods[key]
                        for row, mem, cores in zip(f.rows, f.mem, f.cores, strict=True):
                            share += (mem / state.totalmem[row] + cores / state.totalcore[row]) / 2
                    levels = [priorities[k] for k in victims]
                    key_ = (max(levels) if levels else NO_PRIORITY, size, round(share, 9), sum(levels), name, victims)
                    best = key_ if best is None or key_ < best else best
    return best


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_victims_are_the_best_set_by_the_rules_and_the_preemptor_fits(
        scenario: tuple[ClusterState, PodRequest, int, dict[str, int], list[str]]) -> None:
    state, preemptor, priority, priorities, gone = scenario
    usage = state.used.copy(), state.usedmem.copy(), state.usedcores.copy()
    outcome = plan_preemption(state, preemptor, priority, priorities, gone=gone)
    # The state is as it was.
    assert (state.used == usage[0]).all() and (state.usedmem == usage[1]).all() and \
           (state.usedcores == usage[2]).all()
    expected = brute_force(state, preemptor, priority, priorities, gone)
    if expected is None:
        assert outcome.plan is None
        return
    plan = outcome.plan
    assert plan is not None
    assert all(priorities[k] < priority for k in plan.victims)
    with state.without([*gone, *plan.victims]):
        ctx = PodContext.of(preemptor, PolicyDefaults())
        node_index = state.names.index(plan.node)
        assert fit_pod_on_node(state, node_index, ctx, ctx.static_codes(state))[0] == plan.allocation
    got = (plan.key.highest_priority, plan.key.count, plan.key.share, plan.key.priority_sum, plan.node,
           plan.victims)
    assert plan.exact
    assert got == expected
