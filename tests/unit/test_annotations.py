"""HAMi wire formats: every codec round-trips, and malformed values give clear errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.handshake import (
    HandshakeState,
    decode_handshake,
    encode_deleted,
    encode_reported,
    encode_requesting,
)
from hami.annotations.node_register import decode_node_devices, encode_node_devices
from hami.annotations.pod_devices import (
    BindPhase,
    bind_annotations,
    decision_annotations,
    decode_bind_phase,
    decode_pod_devices,
    decode_unix_time,
    encode_pod_devices,
    pod_allocation_from_annotations,
)
from hami.annotations.selectors import (
    NODE_POLICIES,
    Policy,
    ScoringWeights,
    decode_policy,
    decode_selectors,
    decode_weights,
    encode_list,
    encode_weights,
    pod_policies,
)
from hami.model import ContainerDevice, DeviceInfo

ids = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_"), min_size=1, max_size=20
)
types = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="- "), min_size=1, max_size=30
)
devices = st.builds(
    DeviceInfo,
    id=ids.map(lambda s: "GPU-" + s),
    count=st.integers(0, 100),
    devmem=st.integers(0, 2**31 - 1),
    devcore=st.integers(0, 1000),
    type=types,
    numa=st.integers(0, 7),
    health=st.booleans(),
    index=st.integers(0, 15),
    mode=st.sampled_from(["hami-core", "mig", "mps"]),
)
container_devices = st.builds(
    ContainerDevice,
    uuid=ids.map(lambda s: "GPU-" + s),
    vendor=st.just("NVIDIA"),
    usedmem=st.integers(0, 2**31 - 1),
    usedcores=st.integers(0, 100),
)
allocations = st.lists(st.lists(container_devices, max_size=4).map(tuple), max_size=5).map(tuple)


@given(st.lists(devices, max_size=8))
def test_node_register_round_trip(devs: list[DeviceInfo]) -> None:
    assert decode_node_devices(encode_node_devices(devs)) == devs


def test_node_register_reads_hami_json_and_legacy_forms() -> None:
    hami = (
        '[{"id":"GPU-a","count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-A100-SXM4-80GB",'
        '"numa":0,"health":true,"index":0,"mode":"hami-core"}]'
    )
    (d,) = decode_node_devices(hami)
    assert (d.id, d.count, d.devmem, d.devcore, d.type, d.health) == (
        "GPU-a",
        10,
        81920,
        100,
        "NVIDIA-A100-SXM4-80GB",
        True,
    )
    # Go's omitempty drops zero values and false: absent index/numa are 0, absent health is false.
    (sparse,) = decode_node_devices('[{"id":"GPU-b","count":4,"devmem":1000,"devcore":100,"type":"T4"}]')
    assert (sparse.index, sparse.numa, sparse.health, sparse.mode) == (0, 0, False, "hami-core")
    legacy = decode_node_devices(
        "GPU-x,10,32768,100,NVIDIA-Tesla V100,0,true:GPU-y,10,32768,100,NVIDIA-Tesla V100,1,false,1,mig:"
    )
    assert [(x.id, x.numa, x.health, x.index, x.mode) for x in legacy] == [
        ("GPU-x", 0, True, 0, "hami-core"),
        ("GPU-y", 1, False, 1, "mig"),
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("not an annotation", "neither a JSON list"),
        ("[{", "invalid JSON"),
        ('{"id": "x"}', "neither"),
        ('[{"count": 1}]', "missing 'id'"),
        ('[{"id": "g", "count": "ten"}]', "'count' must be an integer"),
        ('[{"id": "g", "devmem": -5}]', "'devmem' is negative"),
        ('[{"id": "g", "health": "yes"}]', "'health' must be true or false"),
        ("GPU-x,10,32768:", "expected 7 or 9"),
        ("GPU-x,ten,32768,100,T,0,true:", "must be integers"),
        ("GPU-x,10,32768,100,T,0,maybe:", "health must be true or false"),
    ],
)
def test_node_register_errors(value: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        decode_node_devices(value)


@given(allocations)
def test_pod_devices_round_trip(allocation: tuple[tuple[ContainerDevice, ...], ...]) -> None:
    assert decode_pod_devices(encode_pod_devices(allocation)) == allocation


def test_pod_devices_exact_hami_string() -> None:
    allocation = (
        (ContainerDevice("GPU-a", "NVIDIA", 3000, 30),),
        (ContainerDevice("GPU-a", "NVIDIA", 5000, 0), ContainerDevice("GPU-b", "NVIDIA", 5000, 0)),
    )
    text = "GPU-a,NVIDIA,3000,30:;GPU-a,NVIDIA,5000,0:GPU-b,NVIDIA,5000,0:;"
    assert encode_pod_devices(allocation) == text
    assert decode_pod_devices(text) == allocation
    # The device plugin blanks allocated containers; positions are kept.
    assert decode_pod_devices(";GPU-b,NVIDIA,1,2:;") == ((), (ContainerDevice("GPU-b", "NVIDIA", 1, 2),))
    with pytest.raises(AnnotationError, match="uuid,type,memory,cores"):
        decode_pod_devices("GPU-a,NVIDIA,3000:;")
    with pytest.raises(AnnotationError, match="integers"):
        decode_pod_devices("GPU-a,NVIDIA,lots,1:;")


def test_decision_and_bind_annotations_round_trip() -> None:
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    allocation = ((ContainerDevice("GPU-a", "NVIDIA", 3000, 30),),)
    annos = decision_annotations("node-1", allocation, now)
    assert annos[keys.VGPU_NODE] == "node-1"
    assert decode_unix_time(annos[keys.VGPU_TIME]) == int(now.timestamp())
    assert annos[keys.DEVICES_TO_ALLOCATE] == annos[keys.DEVICES_ALLOCATED] == "GPU-a,NVIDIA,3000,30:;"
    assert pod_allocation_from_annotations(annos) == allocation
    # Once the device plugin blanked to-allocate, allocated still tells what the pod holds.
    assert pod_allocation_from_annotations({**annos, keys.DEVICES_TO_ALLOCATE: ";"}) == allocation
    assert pod_allocation_from_annotations({}) is None
    for phase in BindPhase:
        bind = bind_annotations(phase, now)
        assert decode_bind_phase(bind[keys.BIND_PHASE]) is phase
        assert decode_unix_time(bind[keys.BIND_TIME]) == int(now.timestamp())
    with pytest.raises(AnnotationError):
        decode_bind_phase("binding")
    with pytest.raises(AnnotationError):
        decode_unix_time("yesterday")


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_handshake_round_trip(now: datetime) -> None:
    reported = decode_handshake(encode_reported(now))
    assert reported.state is HandshakeState.REPORTED and reported.at == now
    requesting = decode_handshake(encode_requesting(now))
    assert requesting.state is HandshakeState.REQUESTING and requesting.at == now.replace(microsecond=0)
    assert decode_handshake(encode_deleted(now)).state is HandshakeState.DELETED


def test_handshake_reads_go_time_string() -> None:
    h = decode_handshake("Reported 2024-01-02 15:04:05.123456789 +0800 CST m=+12.5")
    assert h.at is not None and h.at.utcoffset() is not None and h.at.microsecond == 123456
    with pytest.raises(AnnotationError):
        decode_handshake("Requesting_yesterday")
    with pytest.raises(AnnotationError):
        decode_handshake("Hello")


@given(st.lists(ids, max_size=5))
def test_selector_lists_round_trip(items: list[str]) -> None:
    annotations = {
        keys.USE_GPUUUID: encode_list(items),
        keys.NOUSE_GPUUUID: encode_list(items),
        keys.USE_GPUTYPE: encode_list(items),
        keys.NOUSE_GPUTYPE: encode_list(items),
    }
    selectors = decode_selectors(annotations)
    assert list(selectors.use_uuids) == items and list(selectors.nouse_uuids) == items
    assert list(selectors.use_types) == [i.upper() for i in items]


def test_selectors_semantics() -> None:
    s = decode_selectors(
        {
            keys.USE_GPUTYPE: "a100,H100,",
            keys.NOUSE_GPUTYPE: "PCIE",
            keys.VGPU_MODE: "hami-core",
            keys.NUMA_BIND: "true",
        }
    )
    assert s.type_allowed("NVIDIA-A100-SXM4-80GB") and not s.type_allowed("NVIDIA-A100-PCIE-40GB")
    assert not s.type_allowed("NVIDIA-Tesla-T4")  # the trailing empty item does not allow every type
    assert s.mode_allowed("hami-core") and not s.mode_allowed("mig") and s.numa_bind


@given(st.sampled_from(list(NODE_POLICIES)), st.sampled_from(list(Policy)))
def test_policy_annotations(node: Policy, gpu: Policy) -> None:
    annotations = {keys.NODE_SCHEDULER_POLICY: node.value, keys.GPU_SCHEDULER_POLICY: gpu.value}
    assert pod_policies(annotations, Policy.SPREAD, Policy.BINPACK) == (node, gpu)
    assert pod_policies({}, Policy.SPREAD, Policy.BINPACK) == (Policy.SPREAD, Policy.BINPACK)
    assert decode_policy(" BinPack ", "x") is Policy.BINPACK
    with pytest.raises(AnnotationError, match="not one of"):
        decode_policy("topology", "x")


@given(
    st.builds(
        ScoringWeights,
        slot=st.integers(0, 10).map(float),
        core=st.integers(0, 10).map(float),
        memory=st.integers(0, 10).map(float),
    )
)
def test_scoring_weights_round_trip(weights: ScoringWeights) -> None:
    assert decode_weights(encode_weights(weights)) == weights


def test_scoring_weights_defaults_and_errors() -> None:
    assert decode_weights(None) == ScoringWeights()
    assert decode_weights("memory=2") == ScoringWeights(memory=2.0)
    for bad in ("slot", "gpu=1", "core=-1", "memory=lots", "slot=inf"):
        with pytest.raises(AnnotationError):
            decode_weights(bad)
