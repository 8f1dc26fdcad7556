"""The preemption shell's pure helpers (label selectors, disruption budgets as the Eviction API
reads them, pod facts) and kube-scheduler's preempt verb over real HTTP. Evictions, holds and
Events against the real API server are in tests/integration/test_preempt_cluster.py."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hami.annotations.pod_devices import decision_annotations
from hami.config import HamiConfig
from hami.model import ContainerDevice
from hami.scheduler.app import build_app
from hami.scheduler.cache import ClusterCache
from hami.scheduler.extender import Extender
from hami.scheduler.preemption import Preemptor, budget_of, facts_of, selector_matches
from hami.serve import serve
from tests.cluster import wait_for
from tests.unit.test_extender_http import free_port, gpu, node, pod, post


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    (None, {"app": "a"}, False),  # a null selector selects nothing
    ({}, {"app": "a"}, True),  # an empty one everything
    ({"matchLabels": {"app": "a"}}, {"app": "a", "x": "y"}, True),
    ({"matchLabels": {"app": "a"}}, {"app": "b"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gpu", "batch"]}]}, {"tier": "batch"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gpu"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gpu"]}]}, {}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "x"}, False),
])
def test_label_selectors(selector: Any, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_a_budget_allows_nothing_until_its_generation_was_observed() -> None:
    pdb = {"metadata": {"name": "b", "namespace": "t", "generation": 2}, "spec": {"selector": {}},
           "status": {"observedGeneration": 1, "disruptionsAllowed": 3}}
    assert budget_of(pdb).allowed == 0
    pdb["status"]["observedGeneration"] = 2
    assert budget_of(pdb).allowed == 3
    assert budget_of({"metadata": {"name": "new", "generation": 1}, "spec": {}}).allowed == 0


def test_pod_facts() -> None:
    facts = facts_of({"metadata": {"name": "p", "namespace": "t", "uid": "u", "labels": {"a": "b"},
                                   "deletionTimestamp": "2026-01-01T00:00:00Z"},
                      "spec": {"priority": 7}, "status": {"phase": "Running"}})
    assert (facts.key, facts.uid, facts.priority, facts.terminating, facts.budgeted) == ("t/p", "u", 7, True, True)
    assert facts_of({"metadata": {"name": "q"}, "spec": {}, "status": {"phase": "Pending"}}).priority == 0
    # The Eviction API evicts a pod that is not running yet without asking its budget.
    assert not facts_of({"metadata": {"name": "q"}, "status": {"phase": "Pending"}}).budgeted


def running(name: str, mem: int, uuid: str, priority: int) -> dict[str, Any]:
    """A bound pod holding `mem` MiB of one device, as the watch shows it."""
    obj = pod(name, mem)
    obj["spec"]["nodeName"] = "n1"
    obj["spec"]["priority"] = priority
    obj["metadata"]["annotations"] = decision_annotations(
        "n1", ((ContainerDevice(uuid, "NVIDIA", mem, 10),),), datetime(2026, 1, 1))
    return obj


@pytest.fixture
def verb() -> Iterator[tuple[str, Preemptor]]:
    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([node("n1", gpu("g0"), gpu("g1", index=1))])
    extender = Extender(cache, api=None, locker=None)
    preemptor = Preemptor(cache, None, extender.decide_lock, extender.is_leader)
    extender.preemptor = preemptor
    preemptor.replace_hook(cache.replace_pods)([
        running("a", 8000, "g0", 1), running("b", 8000, "g0", 1), running("c", 16000, "g1", 1)])
    app = build_app(extender, CollectorRegistry(), None, ready=lambda: True)
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(app, "127.0.0.1", port, None, None, stop), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), timeout=10, message="the test server")
    yield url, preemptor
    stop.set()
    thread.join(timeout=10)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/healthz", timeout=1)
        return True
    except OSError:
        return False


def urgent(mem: int = 12000) -> dict[str, Any]:
    obj = pod("urgent", mem)
    obj["spec"]["priority"] = 100
    return obj


def test_the_preempt_verb_adds_the_device_victims_and_keeps_one_node(verb: tuple[str, Preemptor]) -> None:
    url, preemptor = verb
    # kube-scheduler proposes a pod without devices (freed for CPU): not enough for 12000 MiB.
    status, result = post(url + "/preempt", {"Pod": urgent(), "NodeNameToMetaVictims": {
        "n1": {"Pods": [{"UID": "uid-cpu-only"}], "NumPDBViolations": 0}}})
    assert status == 200
    victims = result["NodeNameToMetaVictims"]["n1"]
    # Evicting c (16000 on g1) alone frees enough; a and b (8000 each on g0) would be two.
    assert sorted(p["UID"] for p in victims["Pods"]) == ["uid-c", "uid-cpu-only"]
    assert victims["NumPDBViolations"] == 0
    hold = preemptor.holds()["t/urgent"]
    assert hold.node == "n1" and [d.uuid for c in hold.allocation for d in c] == ["g1"]


def test_the_preempt_verb_drops_nodes_where_the_pod_would_not_fit(verb: tuple[str, Preemptor]) -> None:
    url, _ = verb
    status, result = post(url + "/preempt", {"Pod": urgent(30000), "NodeNameToMetaVictims": {
        "n1": {"Pods": [{"UID": "uid-a"}], "NumPDBViolations": 0}}})
    assert status == 200 and result == {"NodeNameToMetaVictims": {}}


def test_the_preempt_verb_leaves_pods_without_devices_to_kube_scheduler(verb: tuple[str, Preemptor]) -> None:
    url, _ = verb
    plain = {"metadata": {"name": "web", "namespace": "t"}, "spec": {"containers": [{"name": "c"}], "priority": 5}}
    proposed = {"n1": {"Pods": [{"UID": "x"}], "NumPDBViolations": 1}}
    status, result = post(url + "/preempt", {"Pod": plain, "NodeNameToMetaVictims": proposed})
    assert status == 200 and result == {"NodeNameToMetaVictims": proposed}


def test_the_preempt_verb_refuses_malformed_arguments(verb: tuple[str, Preemptor]) -> None:
    url, _ = verb
    status, result = post(url + "/preempt", {"NodeNameToMetaVictims": {}})
    assert status == 400 and "no Pod" in result["Error"]
    status, result = post(url + "/preempt", {"Pod": urgent(), "NodeNameToMetaVictims": {"n1": {"Pods": "x"}}})
    assert status == 400 and "Pods is not a list" in result["Error"]
    status, _ = post(url + "/preempt", b"not json")
    assert status == 400


def test_a_replica_that_does_not_lead_proposes_nothing(verb: tuple[str, Preemptor]) -> None:
    url, preemptor = verb
    preemptor.is_leader.clear()
    status, result = post(url + "/preempt", {"Pod": urgent(), "NodeNameToMetaVictims": {
        "n1": {"Pods": [{"UID": "uid-a"}], "NumPDBViolations": 0}}})
    assert status == 200 and result == {"NodeNameToMetaVictims": {}}
    assert preemptor.holds() == {}
