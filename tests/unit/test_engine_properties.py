"""Properties over random clusters and pods: nothing is ever over-committed, a placed pod fits,
and the vectorised feasibility agrees with HAMi's exact per-node walk on every node."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.model.requests import NO_PERCENTAGE
from hami.scheduler.engine import (
    PodContext,
    PolicyDefaults,
    commit,
    feasible_nodes,
    fit_pod_on_node,
    schedule,
    static_codes,
)
from hami.scheduler.state import ClusterState

TYPES = ["NVIDIA-A10", "NVIDIA-A100-SXM4-80GB", "NVIDIA-Tesla-T4"]


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeDevices]:
    nodes = []
    for n in range(draw(st.integers(1, 5))):
        devices = tuple(
            DeviceInfo(
                id=f"n{n}-g{i}",
                count=draw(st.integers(1, 4)),
                devmem=draw(st.sampled_from([8000, 16000, 24000])),
                devcore=100,
                type=draw(st.sampled_from(TYPES)),
                numa=draw(st.integers(0, 1)),
                health=draw(st.sampled_from([True, True, False])),
                index=i,
            )
            for i in range(draw(st.integers(1, 4)))
        )
        cordoned = frozenset(d.id for d in devices if draw(st.integers(0, 9)) == 0)
        nodes.append(NodeDevices(name=f"n{n}", devices=devices, cordoned=cordoned))
    return nodes


@st.composite
def container_requests(draw: st.DrawFn) -> ContainerRequest:
    nums = draw(st.integers(0, 3))
    if draw(st.booleans()):
        return ContainerRequest(
            nums=nums, memreq=draw(st.integers(1, 20000)), coresreq=draw(st.sampled_from([0, 10, 30, 50, 100]))
        )
    return ContainerRequest(
        nums=nums,
        memreq=0,
        mem_percentage=draw(st.sampled_from([0, 10, 50, 100])),
        coresreq=draw(st.sampled_from([0, 25, 100])),
    )


@st.composite
def pods(draw: st.DrawFn, key: str) -> PodRequest:
    init = draw(st.lists(container_requests(), max_size=2))
    app = draw(st.lists(container_requests(), min_size=1, max_size=3))
    annotations: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        annotations["nvidia.com/use-gputype"] = draw(st.sampled_from(["A10", "a100", "T4,A10"]))
    if draw(st.integers(0, 5)) == 0:
        annotations["nvidia.com/nouse-gpuuuid"] = "n0-g0,n1-g1"
    if draw(st.integers(0, 5)) == 0:
        annotations["nvidia.com/numa-bind"] = "true"
    if draw(st.booleans()):
        annotations["hami.io/gpu-scheduler-policy"] = draw(st.sampled_from(["binpack", "spread"]))
    if draw(st.booleans()):
        annotations["hami.io/node-scheduler-policy"] = draw(st.sampled_from(["binpack", "spread"]))
    return PodRequest(key=key, containers=tuple(init + app), init_count=len(init), annotations=annotations)


def check_not_overcommitted(state: ClusterState) -> None:
    assert (state.used <= state.count).all()
    assert (state.usedmem <= state.totalmem).all()
    assert (state.usedcores <= state.totalcore).all()
    assert (state.used >= 0).all() and (state.usedmem >= 0).all() and (state.usedcores >= 0).all()


def check_decision_respects_rules(state: ClusterState, request: PodRequest, decision_node: str, allocation) -> None:  # type: ignore[no-untyped-def]
    ctx = PodContext.of(request, PolicyDefaults())
    node = state.node_pos[decision_node]
    assert len(allocation) == len(request.containers)
    for position, (want, got) in enumerate(zip(request.containers, allocation, strict=True)):
        assert len(got) == want.nums, f"container {position}"
        assert len({d.uuid for d in got}) == len(got)
        numas = set()
        for d in got:
            row = state.row_of[(node, d.uuid)]
            assert state.health[row] and not state.cordoned[row]
            assert ctx.selectors.type_allowed(state.types[row])
            assert ctx.selectors.uuid_allowed(d.uuid)
            assert d.usedcores == want.coresreq
            expected_mem = (
                want.memreq
                if want.memreq
                else (
                    int(state.totalmem[row]) * want.mem_percentage // 100 if want.mem_percentage != NO_PERCENTAGE else 0
                )
            )
            assert d.usedmem == expected_mem
            numas.add(int(state.numa[row]))
        if ctx.selectors.numa_bind and got:
            assert len(numas) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_clusters_never_overcommit_and_feasibility_is_exact(data: st.DataObject) -> None:
    state = ClusterState(data.draw(clusters()))
    for k in range(data.draw(st.integers(1, 12))):
        request = data.draw(pods(f"ns/p{k}"))
        ctx = PodContext.of(request, PolicyDefaults())
        static = static_codes(state, ctx.selectors)
        everyone = np.arange(len(state.nodes), dtype=np.int64)
        feasibility = feasible_nodes(state, ctx, everyone, static)
        for position, node in enumerate(everyone.tolist()):
            exact, reason = fit_pod_on_node(state, node, ctx, static)
            assert (exact is not None) == bool(feasibility.fits[position]), (request, state.nodes[node])
            if exact is None:
                assert feasibility.reasons[node]
        decision = schedule(state, request)
        if decision.node is not None:
            check_decision_respects_rules(state, request, decision.node, decision.allocation)
        commit(state, request, decision)
        check_not_overcommitted(state)
    # Removing every pod returns the cluster to empty.
    for key in list(state.pods):
        state.remove_pod(key)
    assert not state.used.any() and not state.usedmem.any() and not state.usedcores.any()
    assert not state.node_used.any() and not state.node_usedmem.any()
