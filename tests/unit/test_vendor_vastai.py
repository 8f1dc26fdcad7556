"""Vastai (and Biren, its table-row twin): HAMi's pkg/device/vastai and biren rules, with the cases of
their device_test.go."""

from __future__ import annotations

from typing import Any

import pytest

from hami.annotations.node_register import encode_node_devices
from hami.annotations.selectors import Policy
from hami.model import ContainerDevice, ContainerRequest, DeviceInfo, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults
from hami.vendors.base import LockKind
from hami.vendors.vastai import fewest_cards

from .vendor_scenarios import (
    VENDORS,
    cluster,
    ctr,
    decision_annotations,
    fit,
    hami_schedule,
    node_obj,
    place,
    pod_obj,
    registered,
    restarted,
    usage_of,
    uuids,
)

VA = VENDORS["Vastai"]
COUNT = "vastaitech.com/va"
REGISTER = "hami.io/node-va-register"


def die(uuid: str, index: int, card: str | None, count: int = 1, strategy: str | None = "die") -> DeviceInfo:
    custom: dict[str, Any] = {}
    if strategy is not None:
        custom["DeviceStrategy"] = strategy
    if card is not None:
        custom["AIC"] = card
    return DeviceInfo(id=uuid, count=count, devmem=16384, devcore=100, type="Vastai", index=index, vendor="Vastai",
                      custom=custom)


def va_node(name: str, *devices: DeviceInfo) -> dict[str, Any]:
    return node_obj(name, annotations={REGISTER: encode_node_devices(devices)})


# ---- registration, webhook, requests ------------------------------------------------------------


def test_registration_as_hami_test_cores_forced_to_100() -> None:
    text = '[{"id":"7-0","count":1,"devmem":32768,"type":"Vastai","health":true,"devicepairscore":{}}]'
    [node] = registered(VENDORS, node_obj("n", annotations={REGISTER: text}))
    assert node.devices == (DeviceInfo(id="7-0", count=1, devmem=32768, devcore=100, type="Vastai", index=0,
                                       vendor="Vastai"),)


def test_registration_round_trip_with_die_grouping() -> None:
    devices = (die("d0", 0, "card-a"), die("d1", 1, "card-a"), die("d2", 2, "card-b"))
    [node] = registered(VENDORS, va_node("n", *devices))
    assert node.devices == devices


def test_registration_without_devices_or_malformed() -> None:
    assert registered(VENDORS, node_obj("n", annotations={REGISTER: "[]"})) == []
    devices, warnings = VENDORS.registered_node(node_obj("n", annotations={REGISTER: ""}))
    assert devices is None and len(warnings) == 1 and REGISTER in warnings[0]


def test_webhook_request_and_keys() -> None:
    assert VA.admit(ctr(limits={COUNT: "1"}), {}) is True
    assert VA.admit(ctr(requests={COUNT: "1"}), {}) is False
    assert VA.admit(ctr(limits={COUNT: "0"}), {}) is False
    assert VA.ask(ctr(requests={COUNT: "2"})) == ContainerRequest(nums=2, memreq=0, mem_percentage=100, coresreq=0,
                                                                  vendor="Vastai")
    assert VA.ask(ctr(limits={"cpu": "1"})) is None
    assert (VA.lock, VA.keys.handshake) == (LockKind.SHARED, "hami.io/node-handshake-va")
    assert VA.managed_resources() == (COUNT,)


# ---- fit (HAMi's TestDevices_Fit) ---------------------------------------------------------------


def dev(uuid: str, index: int, count: int = 1, health: bool = True) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=0, devcore=0, type="Vastai", index=index, health=health,
                      vendor="Vastai")


def ask(nums: int = 1) -> ContainerRequest:
    return ContainerRequest(nums=nums, memreq=0, mem_percentage=100, coresreq=0, vendor="Vastai")


@pytest.mark.parametrize(("devices", "usage", "request_", "annotations", "want", "reason"), [
    pytest.param([dev("dev-0", 0), dev("dev-1", 1)], {}, ask(), {}, ["dev-1"], "", id="fit success"),
    pytest.param([dev("dev-1", 0)], {}, ask(), {"vastaitech.com/use-gpuuuid": "dev-0"}, None, "1/1 CardUuidMismatch",
                 id="use uuid mismatch"),
    pytest.param([dev("dev-0", 0)], {}, ask(), {"vastaitech.com/nouse-gpuuuid": "dev-0"}, None,
                 "1/1 CardUuidMismatch", id="nouse uuid match"),
    pytest.param([dev("dev-0", 0)], {"dev-0": (1, 0, 0)}, ask(), {}, None, "1/1 CardTimeSlicingExhausted",
                 id="card overused"),
    pytest.param([dev("dev-0", 0, count=2)], {"dev-0": (1, 0, 0)}, ask(), {"hami.io/gpu-scheduler-policy": "mutex"},
                 None, "1/1 ExclusiveDeviceAllocateConflict", id="mutex policy rejects used device"),
    pytest.param([dev("dev-0", 0, count=100), dev("dev-1", 1, count=100), dev("dev-2", 2)], {"dev-2": (1, 0, 0)},
                 ask(3), {}, None, "1/3 CardTimeSlicingExhausted, 2/3 AllocatedCardsInsufficientRequest",
                 id="partial allocation"),
    pytest.param([dev("dev-0", 0, health=False)], {}, ask(), {}, None, "1/1 CardNotHealth", id="card not healthy"),
    pytest.param([dev("dev-0", 0, count=4)], {"dev-0": (3, 0, 0)}, ask(), {}, ["dev-0"], "",
                 id="only slots count: no memory or core checks"),
])
def test_fit_as_hami(devices: list[DeviceInfo], usage: dict, request_: ContainerRequest, annotations: dict,
                     want: list[str] | None, reason: str) -> None:
    decision = fit(VENDORS, devices, request_, usage, annotations)
    if want is None:
        assert decision.node is None and decision.reasons == {"n": reason}
    else:
        assert uuids(decision) == [want]
        assert all((d.usedmem, d.usedcores) == (0, 0) for d in decision.allocation[0])  # HAMi writes 0,0


@pytest.mark.parametrize(("cards", "usage", "want", "reason"), [
    # the idle die on a busy card is refused, the free card's is taken
    (["1", "1", "2"], {"dev-0": (1, 0, 0)}, ["dev-2"], ""),
    (["1", "1"], {"dev-0": (1, 0, 0)}, None, "2/2 ExclusiveDeviceAllocateConflict"),
    (["1", "1", "2"], {"dev-0": (1, 0, 0), "dev-2": (1, 0, 0)}, None,
     "1/3 CardTimeSlicingExhausted, 2/3 ExclusiveDeviceAllocateConflict"),
])
def test_mutex_in_die_mode_keeps_a_busy_card_whole_as_hami(cards: list[str], usage: dict, want: list[str] | None,
                                                           reason: str) -> None:
    devices = [die(f"dev-{i}", i, card, count=2 if i == 0 else 1) for i, card in enumerate(cards)]
    decision = fit(VENDORS, devices, ask(), usage, {"hami.io/gpu-scheduler-policy": "mutex"})
    if want is None:
        assert decision.node is None and decision.reasons == {"n": reason}
    else:
        assert uuids(decision) == [want]


def test_busy_cards_are_per_node() -> None:
    # The same card name on another node is another card.
    state = cluster(VENDORS, va_node("a", die("a0", 0, "1", count=2), die("a1", 1, "1")),
                    va_node("b", die("b0", 0, "1"), die("b1", 1, "1")))
    pod = pod_obj("p", ctr(limits={COUNT: "1"}))
    assert place(state, VENDORS, pod).node == "a"
    decision = place(state, VENDORS, pod_obj("q", ctr(limits={COUNT: "1"}),
                                             annotations={"hami.io/gpu-scheduler-policy": "mutex"}))
    assert decision.node == "b"
    assert decision.reasons == {"a": "2/2 ExclusiveDeviceAllocateConflict"}


@pytest.mark.parametrize(("cards", "wanted", "want"), [
    (["1", "1", "1"], 2, [0, 1]),  # single card, enough dies
    (["1", "1", "1", "2", "2", "3"], 3, [0, 1, 2]),  # the card with most dies first
    (["1", "1", "1", "2", "2", "3"], 4, [0, 1, 2, 3]),  # then the next card
    (["1", "1", "2"], 5, [0, 1, 2]),  # fewer than wanted: all there are
    (["2", "1", "1", "2", "3"], 4, [0, 3, 1, 2]),  # equal cards keep the candidates' order
    (["1", None, "2", "2"], 3, [2, 3, 0]),  # a die without a card comes last
])
def test_fewest_cards_as_hamis_compute_best_combination(cards: list[str | None], wanted: int,
                                                        want: list[int]) -> None:
    assert fewest_cards(cards, wanted) == want


def test_die_mode_takes_dies_from_one_card() -> None:
    devices = [die("d0", 0, "a"), die("d1", 1, "b"), die("d2", 2, "a"), die("d3", 3, "b"), die("d4", 4, "b")]
    state = cluster(VENDORS, va_node("n", *devices))
    decision = place(state, VENDORS, pod_obj("p", ctr(limits={COUNT: "3"})))
    assert sorted(uuids(decision)[0]) == ["d1", "d3", "d4"]  # card b holds all three


def test_whole_device_mode_takes_the_first_that_fit() -> None:
    devices = [die(f"d{i}", i, "a" if i % 2 else "b", strategy=None) for i in range(4)]
    decision = place(cluster(VENDORS, va_node("n", *devices)), VENDORS, pod_obj("p", ctr(limits={COUNT: "2"})))
    assert uuids(decision) == [["d3", "d2"]]  # the walk's order, no card grouping


# ---- node score ----------------------------------------------------------------------------------


def context() -> PodContext:
    return PodContext.of(PodRequest(key="t/p", containers=()), PolicyDefaults())


@pytest.mark.parametrize(("devices", "allocation", "want"), [
    ([die("d0", 0, "a"), die("d1", 1, "a")], [["d0", "d1"]], 1.0),
    ([die("d0", 0, "a"), die("d1", 1, "b"), die("d2", 2, "b")], [["d0", "d1", "d2"]], 2 / 3),
    ([die("d0", 0, "a"), die("d1", 1, "b")], [["d0"], [], ["d1"]], 2.0),  # per container
    ([die("d0", 0, "a", strategy="card")], [["d0"]], 0.0),  # not die mode
    ([die("d0", 0, None)], [["d0"]], 0.0),  # no card
    ([die("d0", 0, "a", strategy=None), die("d1", 1, "a", strategy=None)], [["d0", "d1"]], 1.0),
    ([die("d0", 0, None, strategy=None)], [["d0"]], 0.0),  # no custominfo at all
])
def test_score_node_as_hami(devices: list[DeviceInfo], allocation: list[list[str]], want: float) -> None:
    state = cluster(VENDORS, va_node("n", *devices))
    placed = [[ContainerDevice(u, "Vastai", 0, 0) for u in c] for c in allocation]
    assert VA.score_node(context(), state, 0, placed) == pytest.approx(want)


def test_binpack_prefers_the_node_where_dies_share_a_card() -> None:
    split = va_node("a-split", die("s0", 0, "x"), die("s1", 1, "y"))
    paired = va_node("b-paired", die("p0", 0, "x"), die("p1", 1, "x"))
    decision = place(cluster(VENDORS, split, paired), VENDORS, pod_obj("p", ctr(limits={COUNT: "2"})))
    assert decision.node == "b-paired"  # score 1 against 0.5, added to the node score
    assert decision.score == pytest.approx(1.0)


def test_spread_also_prefers_dies_on_one_card() -> None:
    # HAMi adds the score raw, so under spread (lowest total wins) it would pick the split node;
    # the score's sign is turned under spread here.
    split = va_node("a-split", die("s0", 0, "x"), die("s1", 1, "y"))
    paired = va_node("b-paired", die("p0", 0, "x"), die("p1", 1, "x"))
    decision = place(cluster(VENDORS, split, paired), VENDORS, pod_obj("p", ctr(limits={COUNT: "2"})),
                     node_policy=Policy.SPREAD)
    assert decision.node == "b-paired" and decision.score == pytest.approx(-1.0)


# ---- annotations, restart, hami schedule ---------------------------------------------------------


def test_decision_annotations_as_hami() -> None:
    state = cluster(VENDORS, va_node("n", die("test1", 1, "a")))
    pod = pod_obj("p", ctr(limits={COUNT: "1"}))
    decision = place(state, VENDORS, pod)
    assert decision_annotations(VENDORS, state, pod, decision) == {
        "hami.io/Vastai-devices-to-allocate": "test1,Vastai,0,0:;",
        "hami.io/Vastai-devices-allocated": "test1,Vastai,0,0:;",
    }


def test_restart_rebuilds_usage() -> None:
    nodes = [va_node("a", die("d0", 0, "x", count=2), die("d1", 1, "x", count=2))]
    state = cluster(VENDORS, *nodes)
    pods = [pod_obj(f"p{i}", ctr(limits={COUNT: "1"})) for i in range(3)]
    placed = [(p, place(state, VENDORS, p)) for p in pods]
    assert usage_of(restarted(VENDORS, nodes, placed)) == usage_of(state)


def test_hami_schedule_snapshot(tmp_path: object) -> None:
    objects = [va_node("n", die("d0", 0, "x"), die("d1", 1, "y"), die("d2", 2, "y")),
               pod_obj("two", ctr(limits={COUNT: "2"})), pod_obj("one", ctr(limits={COUNT: "1"})),
               pod_obj("more", ctr(limits={COUNT: "1"}))]
    decisions = hami_schedule(tmp_path, objects)
    assert sorted(d["uuid"] for d in decisions["t/two"]["containers"][0]) == ["d1", "d2"]
    assert decisions["t/one"]["containers"] == [[{"uuid": "d0", "type": "Vastai", "memory": 0, "cores": 0}]]
    assert decisions["t/more"]["reasons"] == {"n": "3/3 CardTimeSlicingExhausted"}


# ---- Biren: the same rules as a table row ----------------------------------------------------------


def test_biren_allocation_gives_no_memory_or_cores_as_hami() -> None:
    text = encode_node_devices([DeviceInfo(id="br-0", count=2, devmem=65536, devcore=40, type="Biren-106C",
                                           vendor="Biren")])
    state = cluster(VENDORS, node_obj("n", annotations={"hami.io/node-biren-register": text}))
    pod = pod_obj("p", ctr(limits={"birentech.com/gpu": "1"}))
    decision = place(state, VENDORS, pod)
    assert decision.allocation == ((ContainerDevice("br-0", "Biren", 0, 0),),)
    assert state.totalcore.tolist() == [100]  # HAMi forces 100 ("only for calscore use")
    assert decision_annotations(VENDORS, state, pod, decision)["hami.io/Biren-devices-allocated"] == "br-0,Biren,0,0:;"
