"""Properties over random mixed clusters (several vendors per node, several vendors per pod):
no device is ever over-committed, every placement keeps its vendor's rules, the vectorised
feasibility agrees with the exact per-node walk, and freeing every pod empties the cluster."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults, commit, feasible_nodes, fit_pod_on_node, schedule
from hami.scheduler.state import ClusterState
from tests.unit.vendor_helpers import VENDORS

# Per vendor: (registered type names, a device's (count, devmem, devcore) choices, request kinds).
DeviceShape = Callable[[st.DrawFn], tuple[int, int, int]]
SHAPES: dict[str, tuple[list[str], DeviceShape]] = {
    "NVIDIA": (["NVIDIA-A10", "NVIDIA-A100"], lambda d: (d(st.integers(1, 4)), d(st.sampled_from([8000, 24000])), 100)),
    "DCU": (["DCU-Z100", "DCU-K100"], lambda d: (d(st.integers(1, 4)), d(st.sampled_from([16384, 32768])), 100)),
    "BI-V150": (["BI-V150"], lambda d: (d(st.integers(1, 3)), 32768, 100)),
    "Biren": (["Biren-110"], lambda d: (d(st.integers(1, 3)), 65536, 100)),
    "GCU": (["GCU"], lambda d: (1, 100, 100)),
}
SIMPLE_VENDORS = sorted(SHAPES)


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeDevices]:
    nodes = []
    for n in range(draw(st.integers(1, 4))):
        devices: list[DeviceInfo] = []
        for vendor in draw(st.lists(st.sampled_from(SIMPLE_VENDORS), min_size=1, max_size=3, unique=True)):
            types, shape = SHAPES[vendor]
            for i in range(draw(st.integers(1, 3))):
                count, mem, cores = shape(draw)
                devices.append(DeviceInfo(
                    id=f"n{n}-{vendor}-{i}", count=count, devmem=mem, devcore=cores, type=draw(st.sampled_from(types)),
                    numa=draw(st.integers(0, 1)), health=draw(st.sampled_from([True, True, False])), index=i,
                    vendor=vendor))
        nodes.append(NodeDevices(name=f"n{n}", devices=tuple(devices)))
    return nodes


@st.composite
def asks(draw: st.DrawFn) -> ContainerRequest:
    vendor = draw(st.sampled_from(SIMPLE_VENDORS))
    nums = draw(st.integers(1, 2))
    if vendor in ("Biren", "GCU"):
        fixed = (0, 100, 0) if vendor == "Biren" else (100, 100, 100)
        return ContainerRequest(nums=nums, memreq=fixed[0], mem_percentage=fixed[1], coresreq=fixed[2], vendor=vendor)
    if draw(st.booleans()):
        return ContainerRequest(nums=nums, memreq=draw(st.integers(1, 20000)),
                                coresreq=draw(st.sampled_from([0, 30, 100])), vendor=vendor)
    return ContainerRequest(nums=nums, mem_percentage=draw(st.sampled_from([10, 50, 100])),
                            coresreq=draw(st.sampled_from([0, 25, 100])), vendor=vendor)


@st.composite
def containers(draw: st.DrawFn) -> ContainerRequest:
    chosen = draw(st.lists(asks(), max_size=2, unique_by=lambda a: a.vendor))
    return ContainerRequest.of(chosen)


@st.composite
def pods(draw: st.DrawFn, key: str) -> PodRequest:
    init = draw(st.lists(containers(), max_size=2))
    app = draw(st.lists(containers(), min_size=1, max_size=3))
    annotations: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        annotations["hygon.com/use-dcutype"] = draw(st.sampled_from(["K100", "z100"]))
    if draw(st.integers(0, 4)) == 0:
        annotations["nvidia.com/use-gputype"] = "A100"
    if draw(st.booleans()):
        annotations["hami.io/gpu-scheduler-policy"] = draw(st.sampled_from(["binpack", "spread", "spread,mutex"]))
    sidecars = frozenset(i for i in range(len(init)) if draw(st.integers(0, 3)) == 0)
    return PodRequest(key=key, containers=tuple(init + app), init_count=len(init), annotations=annotations,
                      sidecars=sidecars)


def check_not_overcommitted(state: ClusterState) -> None:
    assert (state.used <= state.count).all()
    assert (state.usedmem <= state.totalmem).all()
    assert (state.usedcores <= state.totalcore).all()
    assert (state.used >= 0).all() and (state.usedmem >= 0).all() and (state.usedcores >= 0).all()


def check_vendor_rules(state: ClusterState, request: PodRequest, node_name: str, allocation: tuple) -> None:  # type: ignore[type-arg]
    ctx = PodContext.of(request, PolicyDefaults())
    node = state.node_pos[node_name]
    assert len(allocation) == len(request.containers)
    for want, got in zip(request.containers, allocation, strict=True):
        for ask in want.asks:
            mine = [d for d in got if state.devices[state.row_of[(node, d.uuid)]].vendor == ask.vendor]
            assert len(mine) == ask.nums
            assert len({d.uuid for d in mine}) == len(mine)
            selectors = ctx.selectors_for(ask.vendor)
            for d in mine:
                row = state.row_of[(node, d.uuid)]
                assert state.health[row]
                assert selectors.type_allowed(state.types[row])
        assert sum(len(a.asks) and a.nums for a in want.asks) == len(got)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mixed_clusters_never_overcommit_and_feasibility_is_exact(data: st.DataObject) -> None:
    state = ClusterState(data.draw(clusters()), VENDORS)
    for k in range(data.draw(st.integers(1, 10))):
        request = data.draw(pods(f"ns/p{k}"))
        ctx = PodContext.of(request, PolicyDefaults())
        static = ctx.static_codes(state)
        everyone = np.arange(len(state.nodes), dtype=np.int64)
        feasibility = feasible_nodes(state, ctx, everyone, static)
        for position, node in enumerate(everyone.tolist()):
            exact, _ = fit_pod_on_node(state, node, ctx, static)
            assert (exact is not None) == bool(feasibility.fits[position]), (request, state.nodes[node])
            if exact is None:
                assert feasibility.reasons[node]
        decision = schedule(state, request)
        if decision.node is not None:
            check_vendor_rules(state, request, decision.node, decision.allocation)
        commit(state, request, decision)
        check_not_overcommitted(state)
    for key in list(state.pods):
        state.remove_pod(key)
    assert not state.used.any() and not state.usedmem.any() and not state.usedcores.any()
    assert not state.node_used.any() and not state.node_usedmem.any()
