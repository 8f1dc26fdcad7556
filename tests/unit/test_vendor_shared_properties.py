"""Properties over random clusters of the shared-device vendors (Cambricon, Moore Threads, MetaX GPU
and sGPU, Enflame DRS, AMD, Vastai), several per node and per pod: memory and compute are never
over-committed, the vectorised feasibility agrees with the exact per-node walk (with pods'
marks, earlier containers and die grouping in play), every placement keeps its vendor's rules,
and freeing every pod empties the cluster, marks included."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import (
    PodContext,
    PolicyDefaults,
    _independent,
    commit,
    feasible_nodes,
    fit_pod_on_node,
    schedule,
)
from hami.scheduler.state import ClusterState

from .vendor_scenarios import VENDORS

PROFILES = {"1g.6gb": "0", "3g.20gb": "1", "6g.40gb": "2"}
SHARED = ["AMD", "Enflame", "MLU", "Metax-GPU", "Metax-SGPU", "Mthreads", "Vastai"]


def device(draw: st.DrawFn, vendor: str, uuid: str, index: int, die_mode: bool) -> DeviceInfo:
    custom: dict[str, Any] = {}
    if vendor == "MLU":
        shape = (100, draw(st.sampled_from([8192, 16384])), 100, "MLU")
    elif vendor == "Mthreads":
        shape = (100, 49152, 16, "Mthreads")
    elif vendor == "Metax-GPU":
        shape = (1, 65536, 100, "Metax-GPU")
    elif vendor == "Metax-SGPU":
        shape = (draw(st.sampled_from([4, 16])), draw(st.sampled_from([16384, 65536])), 100, "Metax-SGPU")
        custom = {"QosPolicy": draw(st.sampled_from(["", "best-effort", "fixed-share"])), "Model": "C500",
                  "LinkZone": draw(st.integers(0, 2))}
    elif vendor == "Enflame":
        shape = (6, 40960, 100, "Enflame")
        custom = {"minor": str(index), "index": str(index), "profiles": dict(PROFILES), "maxSlice": 6}
    elif vendor == "AMD":
        shape = (draw(st.sampled_from([2, 4])), 65536, draw(st.sampled_from([104, 304])),
                 draw(st.sampled_from(["AMD_Instinct_MI300X", "AMD_Instinct_MI210"])))
    else:
        shape = (draw(st.integers(1, 2)), 16384, 100, "Vastai")
        if die_mode:
            custom = {"DeviceStrategy": "die", "AIC": draw(st.sampled_from(["0", "1"]))}
    count, mem, cores, dtype = shape
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=cores, type=dtype, index=index,
                      health=draw(st.sampled_from([True, True, True, False])), vendor=vendor, custom=custom)


@st.composite
def clusters(draw: st.DrawFn, vendors: list[str]) -> list[NodeDevices]:
    nodes = []
    for n in range(draw(st.integers(1, 3))):
        devices = []
        die_mode = draw(st.booleans())
        for vendor in draw(st.lists(st.sampled_from(vendors), min_size=1, max_size=3, unique=True)):
            devices += [device(draw, vendor, f"n{n}-{vendor}-{i}", i, die_mode) for i in range(draw(st.integers(1, 4)))]
        nodes.append(NodeDevices(name=f"n{n}", devices=tuple(devices)))
    return nodes


@st.composite
def asks(draw: st.DrawFn, vendors: list[str]) -> ContainerRequest:
    vendor = draw(st.sampled_from(vendors))
    nums = draw(st.integers(1, 2))
    if vendor == "Enflame":
        if draw(st.booleans()):
            return ContainerRequest(nums=1, memreq=draw(st.sampled_from([1, 3, 6])), mem_percentage=0,
                                    vendor=vendor, variant="direct")
        return ContainerRequest(nums=1, memreq=draw(st.sampled_from([0, 8, 20480])),
                                coresreq=draw(st.sampled_from([0, 30, 60])), vendor=vendor, variant="spec")
    if vendor == "Metax-GPU":
        return ContainerRequest(nums=nums, mem_percentage=100, coresreq=100, vendor=vendor)
    if vendor == "Vastai":
        return ContainerRequest(nums=draw(st.integers(1, 3)), mem_percentage=100, vendor=vendor)
    if vendor == "AMD":
        return ContainerRequest(nums=nums, memreq=draw(st.sampled_from([0, 4096, 32768])), mem_percentage=0,
                                coresreq=draw(st.sampled_from([1, 50, 100])), vendor=vendor)
    unit = {"MLU": 256, "Mthreads": 512, "Metax-SGPU": 1024}[vendor]
    memory = draw(st.sampled_from([0, 8, 32])) * unit
    cores = draw(st.sampled_from([0, 4, 16] if vendor == "Mthreads" else [0, 30, 100]))
    return ContainerRequest(nums=nums, memreq=memory, mem_percentage=0 if memory else 100, coresreq=cores,
                            vendor=vendor)


@st.composite
def pods(draw: st.DrawFn, key: str, vendors: list[str]) -> PodRequest:
    def container() -> ContainerRequest:
        return ContainerRequest.of(draw(st.lists(asks(vendors), max_size=2, unique_by=lambda a: a.vendor)))

    init = [container() for _ in range(draw(st.integers(0, 1)))]
    app = [container() for _ in range(draw(st.integers(1, 2)))]
    annotations: dict[str, str] = {}
    app_class = draw(st.sampled_from([None, None, "online", "offline"]))
    if app_class:
        annotations["metax-tech.com/sgpu-app-class"] = app_class
    if app_class != "online":
        annotations["metax-tech.com/sgpu-qos-policy"] = draw(st.sampled_from(["best-effort", "fixed-share"]))
    if draw(st.integers(0, 3)) == 0:
        annotations["hami.io/gpu-scheduler-policy"] = draw(st.sampled_from(["binpack", "spread,mutex"]))
    if draw(st.integers(0, 3)) == 0:
        annotations["hami.io/node-scheduler-policy"] = "spread"
    if draw(st.integers(0, 4)) == 0:
        annotations["metax-tech.com/sgpu-topology-aware"] = "true"
    return PodRequest(key=key, containers=tuple(init + app), init_count=len(init), annotations=annotations,
                      names=tuple(f"c{i}" for i in range(len(init) + len(app))))


def check_not_overcommitted(state: ClusterState) -> None:
    assert (state.usedmem <= state.totalmem).all()
    assert (state.usedcores <= state.totalcore).all()
    slots = np.asarray([d.vendor != "Enflame" for d in state.devices], dtype=bool)  # Enflame: slices, HAMi's way
    assert (state.used[slots] <= state.count[slots]).all()
    assert (state.used >= 0).all() and (state.usedmem >= 0).all() and (state.usedcores >= 0).all()


def check_vendor_rules(state: ClusterState, request: PodRequest, node_name: str, allocation: tuple) -> None:  # type: ignore[type-arg]
    node = state.node_pos[node_name]
    for want, got in zip(request.containers, allocation, strict=True):
        for ask in want.asks:
            mine = [d for d in got if state.devices[state.row_of[(node, d.uuid)]].vendor == ask.vendor]
            assert len(mine) == ask.nums and len({d.uuid for d in mine}) == len(mine)
            for d in mine:
                row = state.row_of[(node, d.uuid)]
                assert state.health[row]
                if ask.vendor == "AMD":
                    assert d.vendor == state.types[row]  # the product type on the wire
                    assert 1 <= d.usedcores <= state.totalcore[row]


def check_node_scores(state: ClusterState, ctx: PodContext, fitting: np.ndarray) -> None:
    """A vendor's node scores at once (`node_scores`, for pods whose containers do not compete)
    equal its `score_node` of the pod placed on each node."""
    if not _independent(ctx.pod) or not len(fitting):
        return
    static = ctx.static_codes(state)
    for name in ctx.pod.vendors:
        vendor = state.vendors[name]
        values = vendor.node_scores(ctx, state, fitting) if vendor.scores_nodes else None
        if values is None:
            continue
        for k, node in enumerate(fitting.tolist()):
            allocation, _ = fit_pod_on_node(state, node, ctx, static)
            assert allocation is not None
            part = [[d for d in c if state.devices[state.row_of[(node, d.uuid)]].vendor == name] for c in allocation]
            assert values[k] == np.float32(vendor.score_node(ctx, state, node, part)), (name, ctx.pod)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_shared_vendor_clusters_never_overcommit_and_feasibility_is_exact(data: st.DataObject) -> None:
    # A few vendors per cluster, so that pods often meet the devices (and the pods) they compete for.
    vendors = data.draw(st.lists(st.sampled_from(SHARED), min_size=1, max_size=2, unique=True))
    state = ClusterState(data.draw(clusters(vendors)), VENDORS)
    for k in range(data.draw(st.integers(1, 12))):
        request = data.draw(pods(f"ns/p{k}", vendors))
        ctx = PodContext.of(request, PolicyDefaults())
        static = ctx.static_codes(state)
        everyone = np.arange(len(state.nodes), dtype=np.int64)
        feasibility = feasible_nodes(state, ctx, everyone, static)
        for position, node in enumerate(everyone.tolist()):
            exact, _ = fit_pod_on_node(state, node, ctx, static)
            assert (exact is not None) == bool(feasibility.fits[position]), (request, state.nodes[node])
            if exact is None:
                assert feasibility.reasons[node]
        check_node_scores(state, ctx, everyone[feasibility.fits])
        decision = schedule(state, request)
        if decision.node is not None:
            check_vendor_rules(state, request, decision.node, decision.allocation)
        commit(state, request, decision)
        check_not_overcommitted(state)
    for key in list(state.pods):
        state.remove_pod(key)
    assert not state.used.any() and not state.usedmem.any() and not state.usedcores.any()
    assert not any(counts.any() for counts in state.marks.values())
