"""AWS Neuron: devices from capacity, whole-device and core asks, neighbour runs, core masks.

Cases marked "HAMi:" are ported from HAMi v2.10's pkg/device/awsneuron/device_test.go with the
answers those tests assert, except where noted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model import ContainerDevice, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import Decision, PodContext, PolicyDefaults, commit, fit_pod_on_node, schedule
from hami.scheduler.state import ClusterState
from hami.vendors.awsneuron import neighbours
from hami.vendors.registry import VendorSet, default_vendors
from hami.webhook.mutate import admit_pod, mutate

NOW_NS = 1_700_000_000_123_456_789
NEURON = "aws.amazon.com/neuron"
CORE = "aws.amazon.com/neuroncore"


def aws_node(name: str, devices: int = 16, cores: int | None = None, instance: str = "trn1.32xlarge") -> dict[str, Any]:
    capacity = {NEURON: str(devices), CORE: str(2 * devices if cores is None else cores)}
    return {"metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": instance}},
            "status": {"capacity": capacity}}


def pod_obj(limits: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, name: str = "p",
            requests: dict[str, Any] | None = None, init: dict[str, Any] | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = dict(limits)
    if requests is not None:
        resources["requests"] = dict(requests)
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": resources}]}
    if init is not None:
        spec["initContainers"] = [{"name": "i", "resources": {"limits": dict(init)}}]
    return {"metadata": {"name": name, "namespace": "t", "annotations": dict(annotations or {})}, "spec": spec}


def cluster(*nodes: dict[str, Any]) -> ClusterState:
    vendors = default_vendors()
    registered = []
    for obj in nodes:
        node, warnings = vendors.registered_node(obj)
        assert not warnings and node is not None
        registered.append(node)
    return ClusterState(registered, vendors)


def request(pod: dict[str, Any]) -> PodRequest:
    return default_vendors().pod_request(admit_pod(pod, default_vendors())[0])


def place(state: ClusterState, pod: dict[str, Any], **policies: Any) -> Decision:
    req = request(pod)
    decision = schedule(state, req, PolicyDefaults(**policies))
    commit(state, req, decision)
    return decision


def placed(decision: Decision) -> list[tuple[int, int]]:
    """(device index, core mask) of every device given."""
    return [(int(d.uuid.rsplit("-", 1)[1]), d.usedcores) for c in decision.allocation for d in c]


def occupy(state: ClusterState, node: str, busy: tuple[int, ...] | set[int]) -> None:
    for i in sorted(busy):
        place(state, pod_obj({NEURON: 1}, {"aws.amazon.com/use-neuron-uuid": f"{node}-AWSNeuron-{i}"},
                             name=f"{node}-{i}"))


# ---- webhook and requests ---------------------------------------------------------------


@pytest.mark.parametrize("limits, requests, message", [
    (None, {NEURON: 2147483648}, "aws.amazon.com/neuron must not exceed 2147483647"),
    ({CORE: 3}, None, "aws.amazon.com/neuroncore must be 1 or a multiple of 2, got 3"),
    (None, {CORE: 3}, "aws.amazon.com/neuroncore must be 1 or a multiple of 2, got 3"),
    ({CORE: -1}, None, "aws.amazon.com/neuroncore must be greater than 0"),
    ({CORE: 4294967295}, None, "aws.amazon.com/neuroncore must not exceed 4294967294"),
    ({NEURON: "1500m"}, None, "aws.amazon.com/neuron must be an integer"),
])
def test_webhook_denials_carry_hamis_text(limits: dict[str, Any] | None, requests: dict[str, Any] | None,
                                          message: str) -> None:
    # HAMi: Test_MutateAdmission.
    verdict = mutate(pod_obj(limits, requests=requests), default_vendors())
    assert not verdict.allowed and verdict.message == message


def test_a_count_of_zero_asks_for_nothing() -> None:
    # HAMi denies it ("must be greater than 0"); hami leaves the pod alone, as for every vendor.
    for limits in ({CORE: 0}, {NEURON: 0}):
        assert mutate(pod_obj(limits), default_vendors()).patch == []
        assert not default_vendors().pod_request(pod_obj(limits)).wants_devices
    (ask,) = default_vendors().pod_request(pod_obj({NEURON: 0, CORE: 2})).containers
    assert (ask.variant, ask.nums) == ("neuroncore", 1)


@pytest.mark.parametrize("limits, requests", [({NEURON: 2}, None), (None, {NEURON: 2}), ({CORE: 2}, None)])
def test_webhook_routes_neuron_pods(limits: dict[str, Any] | None, requests: dict[str, Any] | None) -> None:
    verdict = mutate(pod_obj(limits, requests=requests), default_vendors())
    assert verdict.allowed
    assert verdict.patch == [{"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"}]
    assert mutate(pod_obj({"cpu": 1}), default_vendors()).patch == []


@pytest.mark.parametrize("limits, nums, cores, variant", [
    ({NEURON: 1}, 1, 2, "neuron"),  # HAMi: "allocate neuron device"
    ({CORE: 1}, 1, 1, "neuroncore"),  # HAMi: "allocate neuron core"
    ({CORE: 2}, 1, 2, "neuroncore"),  # HAMi: Test_splitCoreRequest "a full device is one device"
    ({CORE: 6}, 3, 2, "neuroncore"),  # HAMi: "whole devices divide evenly"
    ({NEURON: 2, CORE: 3}, 2, 2, "neuron"),  # devices named: the core resource is not read
])
def test_requests(limits: dict[str, Any], nums: int, cores: int, variant: str) -> None:
    (ask,) = default_vendors().pod_request(pod_obj(limits)).containers
    assert (ask.vendor, ask.nums, ask.coresreq, ask.variant, ask.memreq) == ("AWSNeuron", nums, cores, variant, 0)


# ---- registration -----------------------------------------------------------------------


def test_devices_from_capacity() -> None:
    # HAMi: Test_GetNodeDevices.
    node, _ = default_vendors().registered_node(aws_node("test", 1, 2, "inf2"))
    assert node is not None
    (device,) = node.devices
    assert device == DeviceInfo(id="test-AWSNeuron-0", count=2, devmem=0, devcore=3, type="AWSNeuron", index=0,
                                vendor="AWSNeuron", custom={"AWSNodeType": "inf2"})
    assert device.custom == {"AWSNodeType": "inf2"}
    assert default_vendors().registered_node(aws_node("n", 0))[0] is None


def test_cores_per_device_are_per_node() -> None:
    # HAMi computes them once, from the first node it sees, for all nodes.
    state = cluster(aws_node("inf", 12, 24, "inf2.48xlarge"), aws_node("trn2", 16, 128, "trn2.48xlarge"))
    assert {(d.count, d.devcore) for d in state.devices if d.id.startswith("inf")} == {(2, 0b11)}
    assert {(d.count, d.devcore) for d in state.devices if d.id.startswith("trn2")} == {(8, 0xFF)}


# ---- fit --------------------------------------------------------------------------------


@pytest.mark.parametrize("free, count, instance, expected", [
    (set(range(16)), 16, "inf2", list(range(16))),  # HAMi: "full allocate"
    (set(range(16)) - {7, 13}, 8, "trn", []),  # HAMi: "8 allocate fail"
    (set(range(16)) - {7}, 8, "trn", list(range(8, 16))),  # HAMi: "8 allocate success"
    (set(range(16)) - {5, 14}, 8, "inf", list(range(6, 14))),  # HAMi: "8 allocate"
    (set(range(16)), 2, "trn", []),  # Trainium runs are 1, 4, 8 or 16
    ({1, 2, 3, 4}, 4, "trn", []),  # aligned on their size
    ({11, 0}, 2, "inf2", []),  # HAMi's "ring" does not wrap around
])
def test_neighbours(free: set[int], count: int, instance: str, expected: list[int]) -> None:
    assert neighbours(free, count, instance, 16) == expected


def one_device_state(**device: Any) -> ClusterState:
    info = {"id": "dev-0", "count": 2, "devmem": 0, "devcore": 3, "type": "AWSNeuron", "vendor": "AWSNeuron",
            "custom": {"AWSNodeType": "trn"}, **device}
    return ClusterState([NodeDevices(name="n", devices=(DeviceInfo(**info),))], default_vendors())


@pytest.mark.parametrize("device, used, limits, annotations, reason", [
    ({}, 1, {CORE: 2}, {}, "1/1 CardInsufficientCore"),  # HAMi: "fit fail: core not enough"
    ({}, 0, {CORE: 2}, {"aws.amazon.com/use-neuron-uuid": "dev-9"}, "1/1 CardUuidMismatch"),
    ({}, 0, {CORE: 2}, {"aws.amazon.com/nouse-neuron-uuid": "dev-0"}, "1/1 CardUuidMismatch"),
    ({"count": 1}, 1, {CORE: 1}, {}, "1/1 CardTimeSlicingExhausted"),  # HAMi: "fit fail: card overused"
    ({}, 1, {CORE: 1}, {"hami.io/gpu-scheduler-policy": "mutex"}, "1/1 ExclusiveDeviceAllocateConflict"),
    ({"health": False}, 0, {CORE: 2}, {}, "1/1 CardNotHealth"),  # HAMi: "fit fail: CardNotHealth"
    ({}, 0, {CORE: 4}, {}, "1/1 NodeInsufficientDevice"),  # HAMi: "1/1 NumaNotFit" (two devices on one)
])
def test_fit_reasons(device: dict[str, Any], used: int, limits: dict[str, Any], annotations: dict[str, str],
                     reason: str) -> None:
    # HAMi: TestDevices_Fit.
    state = one_device_state(**device)
    if used:
        assert not state.add_pod("t/busy", "n", ((ContainerDevice("dev-0", "AWSNeuron", 0, 0b01),),))
    decision = schedule(state, request(pod_obj(limits, annotations)))
    assert decision.node is None and decision.reasons == {"n": reason}


def test_two_devices_on_trainium_need_a_run_of_four() -> None:
    # HAMi: "fit fail: NumaNotFit with multiple devices" (HAMi counts 1; we count the devices that fit).
    state = cluster(aws_node("n", 2, 4, "trn"))
    assert schedule(state, request(pod_obj({NEURON: 2}))).reasons == {"n": "2/2 NumaNotFit"}


def test_core_masks_on_one_device_never_overlap() -> None:
    state = cluster(aws_node("n", 1, 2, "inf2"))
    assert placed(place(state, pod_obj({CORE: 1}, name="a"))) == [(0, 0b01)]
    assert placed(place(state, pod_obj({CORE: 1}, name="b"))) == [(0, 0b10)]
    assert state.usedcores.tolist() == [0b11] and state.used.tolist() == [2]
    assert place(state, pod_obj({CORE: 1}, name="c")).reasons == {"n": "1/1 CardTimeSlicingExhausted"}
    state.remove_pod("t/a")
    assert placed(place(state, pod_obj({CORE: 1}, name="d"))) == [(0, 0b01)]


def test_whole_device_asks_take_every_core_of_this_node() -> None:
    state = cluster(aws_node("big", 1, 8, "trn2"))
    assert placed(place(state, pod_obj({CORE: 1}, name="a"))) == [(0, 0b1)]
    assert place(state, pod_obj({NEURON: 1}, name="b")).reasons == {"big": "1/1 CardInsufficientCore"}
    assert placed(place(state, pod_obj({CORE: 2}, name="c"))) == [(0, 0b110)]
    state.remove_pod("t/a")
    state.remove_pod("t/c")
    assert placed(place(state, pod_obj({NEURON: 1}, name="d"))) == [(0, 0xFF)]


def test_single_device_goes_to_the_walk_order() -> None:
    # HAMi: "fit success": the device visited first (spread: the least used, ties to the higher index).
    state = cluster(aws_node("n", 2, 4, "trn"))
    assert placed(place(state, pod_obj({CORE: 2}, name="a"))) == [(1, 0b11)]
    assert placed(place(state, pod_obj({CORE: 1}, name="b"))) == [(0, 0b01)]


def test_runs_of_devices_on_inferentia_and_trainium() -> None:
    state = cluster(aws_node("inf", 6, 12, "inf2.24xlarge"), aws_node("trn", 16, 32, "trn1.32xlarge"))
    occupy(state, "inf", (1,))
    occupy(state, "trn", (0, 9))
    four = place(state, pod_obj({CORE: 8}, name="four"))  # 4 devices x 2 cores
    assert (four.node, placed(four)) == ("inf", [(2, 3), (3, 3), (4, 3), (5, 3)])
    eight = place(state, pod_obj({NEURON: 8}, name="eight"))
    assert eight.node is None and eight.reasons == {"inf": "6/6 NodeInsufficientDevice",
                                                    "trn": "2/16 ExclusiveDeviceAllocateConflict, 14/16 NumaNotFit"}
    fourth = place(state, pod_obj({NEURON: 4}, name="trn4"))
    assert (fourth.node, [i for i, _ in placed(fourth)]) == ("trn", [4, 5, 6, 7])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["inf2", "trn1"]), st.sets(st.integers(0, 11), max_size=8)),
                min_size=1, max_size=4), st.integers(1, 8))
def test_vectorised_fit_equals_the_walk(nodes: list[tuple[str, set[int]]], nums: int) -> None:
    """The engine checks runs of devices on every node at once; the per-node walk (forced by a
    second, competing container) must give the same nodes and reasons."""
    state = cluster(*(aws_node(f"n{k}", 12, 24, kind) for k, (kind, _) in enumerate(nodes)))
    for k, (_, busy) in enumerate(nodes):
        occupy(state, f"n{k}", busy)
    req = request(pod_obj({NEURON: nums}, name="x"))
    fast = schedule(state, req)
    ctx = PodContext.of(req, PolicyDefaults())
    for name in state.names:
        allocation, reason = fit_pod_on_node(state, state.node_pos[name], ctx, ctx.static_codes(state))
        assert (allocation is None) == (name in fast.reasons)
        if allocation is None:
            assert fast.reasons[name] == reason
    if fast.node is not None:
        allocation, _ = fit_pod_on_node(state, state.node_pos[fast.node], ctx, ctx.static_codes(state))
        assert allocation == fast.allocation


# ---- annotations and restart ------------------------------------------------------------


def decide(state: ClusterState, pod: dict[str, Any]) -> tuple[Decision, dict[str, str]]:
    req = request(pod)
    decision = schedule(state, req)
    assert decision.node is not None, decision.reasons
    commit(state, req, decision)
    node = state.nodes[state.node_pos[decision.node]]
    return decision, state.vendors.decision_annotations(node, req, decision.allocation, NOW_NS)


def test_annotations_for_whole_devices() -> None:
    # HAMi: Test_PatchAnnotations "neuron device".
    state = cluster(aws_node("n", 2, 4, "inf2"))
    _, annotations = decide(state, pod_obj({NEURON: 2}))
    assert annotations == {
        "hami.io/aws-neuron-devices-allocated": "n-AWSNeuron-0,AWSNeuron,0,3:n-AWSNeuron-1,AWSNeuron,0,3:;",
        "AWS_NEURON_IDS": "0,1",
        "NEURON_ALLOC_TIME": str(NOW_NS),
        "NEURON_ALLOCATED": "false",
        "aws.amazon.com/predicate-node": "n",
    }


def test_annotations_for_cores_name_core_ids() -> None:
    # HAMi: Test_PatchAnnotations "neuroncore device": cores per device x index + core.
    state = cluster(aws_node("n", 2, 4, "inf2"))
    _, whole = decide(state, pod_obj({CORE: 2}, name="a"))
    assert (whole["AWS_NEURON_IDS"], whole["NEURON_RESOURCE_TYPE"]) == ("2,3", CORE)
    _, one = decide(state, pod_obj({CORE: 1}, name="b"))
    assert (one["AWS_NEURON_IDS"], one["NEURON_RESOURCE_TYPE"]) == ("0", CORE)
    big = cluster(aws_node("m", 2, 16, "trn2"))
    decide(big, pod_obj({CORE: 2}, name="c"))
    decide(big, pod_obj({CORE: 2}, name="d"))
    _, third = decide(big, pod_obj({CORE: 1}, name="e"))
    assert third["AWS_NEURON_IDS"] == "10"  # device 1, its third core (HAMi knows only two)


def test_annotations_init_container_and_requests_only() -> None:
    # HAMi: Test_PatchAnnotations "init container neuron device".
    state = cluster(aws_node("n", 2, 4, "inf2"))
    _, annotations = decide(state, pod_obj({"cpu": 1}, init={NEURON: 1}))
    assert annotations["AWS_NEURON_IDS"] == "1" and "NEURON_RESOURCE_TYPE" not in annotations
    # A device count in requests only still names devices (HAMi reads limits and would name cores).
    _, requested = decide(state, pod_obj(requests={NEURON: 1}, name="r"))
    assert requested["AWS_NEURON_IDS"] == "0" and "NEURON_RESOURCE_TYPE" not in requested


def test_restart_rebuilds_usage_from_the_annotations() -> None:
    def fresh() -> ClusterState:
        return cluster(aws_node("a", 4, 8, "inf2"), aws_node("b", 4, 32, "trn2"))

    state = fresh()
    asks = [{CORE: 1}, {CORE: 1}, {NEURON: 2}, {CORE: 8}, {CORE: 1}]
    written = [decide(state, pod_obj(limits, name=f"p{k}")) for k, limits in enumerate(asks)]
    again = fresh()
    for k, (decision, values) in enumerate(written):
        allocation = again.vendors.allocation_from_annotations(values)
        assert allocation is not None and not again.add_pod(f"t/p{k}", str(decision.node), allocation)
    for name in ("used", "usedmem", "usedcores"):
        assert np.array_equal(getattr(again, name), getattr(state, name)), name


def test_config_names_and_errors() -> None:
    vendors = VendorSet.from_config(HamiConfig(sections={"awsneuron": {"resourceCoreName": "example.com/core"}}))
    assert vendors["AWSNeuron"].resources.cores == "example.com/core"
    with pytest.raises(HamiError, match="config: awsneuron.resourceCountName must be a non-empty string"):
        VendorSet.from_config(HamiConfig(sections={"awsneuron": {"resourceCountName": 3}}))


SNAPSHOT = """
apiVersion: v1
kind: Node
metadata:
  name: inf
  labels: {node.kubernetes.io/instance-type: inf2.24xlarge}
status: {capacity: {aws.amazon.com/neuron: "6", aws.amazon.com/neuroncore: "12"}}
---
apiVersion: v1
kind: Node
metadata:
  name: trn
  labels: {node.kubernetes.io/instance-type: trn1.32xlarge}
status: {capacity: {aws.amazon.com/neuron: "16", aws.amazon.com/neuroncore: "32"}}
---
apiVersion: v1
kind: Pod
metadata: {name: serve, namespace: ml}
spec:
  containers:
  - name: c
    resources: {limits: {aws.amazon.com/neuroncore: 1}}
---
apiVersion: v1
kind: Pod
metadata: {name: train, namespace: ml}
spec:
  containers:
  - name: c
    resources: {limits: {aws.amazon.com/neuron: 8}}
"""


def test_hami_schedule_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "snap.yaml"
    path.write_text(SNAPSHOT)
    result = subprocess.run([sys.executable, "-m", "hami", "schedule", "--snapshot", str(path), "-o", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    serve, train = json.loads(result.stdout)["decisions"]
    assert serve["containers"][0][0]["cores"] == 1 and serve["containers"][0][0]["type"] == "AWSNeuron"
    assert train["node"] == "trn" and [d["uuid"] for d in train["containers"][0]] == [
        f"trn-AWSNeuron-{i}" for i in range(8)]
    assert train["reasons"] == {"inf": "6/6 NodeInsufficientDevice"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([{CORE: 1}, {CORE: 2}, {CORE: 4}, {CORE: 8}, {NEURON: 1}, {NEURON: 2},
                                 {NEURON: 4}]), min_size=1, max_size=16))
def test_random_pods_keep_masks_disjoint_and_runs_contiguous(pods: list[dict[str, Any]]) -> None:
    state = cluster(aws_node("inf", 6, 12, "inf2.24xlarge"), aws_node("trn", 8, 16, "trn1.32xlarge"),
                    aws_node("big", 2, 16, "trn2.48xlarge"))
    masks: dict[str, int] = {}
    for k, limits in enumerate(pods):
        decision = place(state, pod_obj(limits, name=f"p{k}"))
        devices = [d for c in decision.allocation for d in c]
        for d in devices:
            assert masks.get(d.uuid, 0) & d.usedcores == 0  # cores given once
            masks[d.uuid] = masks.get(d.uuid, 0) | d.usedcores
        run = [i for i, _ in placed(decision)]
        if len(run) > 1:
            assert run == list(range(run[0], run[0] + len(run)))
            assert decision.node == "inf" or run[0] % len(run) == 0
    usage = {state.uuids[r]: int(state.usedcores[r]) for r in range(len(state.uuids))}
    assert all(usage[uuid] == mask for uuid, mask in masks.items())
    assert (state.used <= state.count).all()
    assert (state.usedcores & ~state.totalcore == 0).all()
