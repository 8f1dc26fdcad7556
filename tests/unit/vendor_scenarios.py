"""Builders for vendor tests: Node and Pod objects as the API server holds them, a cluster state
registered from them through the vendors, and the devices-with-usage tables HAMi's Fit tests use."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import yaml

from hami.config import HamiConfig
from hami.model import ContainerRequest, DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import Decision, PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.vendors.registry import VendorSet
from hami.webhook.mutate import admit_pod


def vendor_set(**sections: Any) -> VendorSet:
    """Every vendor, with these device-config sections (the others at HAMi's chart defaults)."""
    return VendorSet.from_config(HamiConfig(sections=dict(sections)))


VENDORS = vendor_set()


def node_obj(name: str, annotations: dict[str, str] | None = None,
             capacity: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": annotations or {}},
            "status": {"capacity": capacity or {}}}


def ctr(name: str = "c", limits: dict[str, Any] | None = None,
        requests: dict[str, Any] | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = dict(limits)
    if requests is not None:
        resources["requests"] = dict(requests)
    return {"name": name, "resources": resources}


def pod_obj(name: str, *containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (),
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "t", "annotations": dict(annotations or {})},
            "spec": {"initContainers": list(init), "containers": list(containers)}}


def registered(vendors: VendorSet, *nodes: dict[str, Any]) -> list[NodeDevices]:
    """The devices the nodes offer; fails the test on a registration warning."""
    found = []
    for node in nodes:
        devices, warnings = vendors.registered_node(node)
        assert not warnings, warnings
        if devices is not None:
            found.append(devices)
    return found


def cluster(vendors: VendorSet, *nodes: dict[str, Any]) -> ClusterState:
    return ClusterState(registered(vendors, *nodes), vendors)


def admitted(vendors: VendorSet, pod: dict[str, Any]) -> dict[str, Any]:
    """The pod after the webhook's changes (raises HamiError where the webhook denies it)."""
    return admit_pod(pod, vendors)[0]


def request(vendors: VendorSet, pod: dict[str, Any]) -> PodRequest:
    """The pod as the scheduler sees it: admitted first, as in a cluster."""
    return vendors.pod_request(admitted(vendors, pod))


def place(state: ClusterState, vendors: VendorSet, pod: dict[str, Any], **defaults: Any) -> Decision:
    """Schedule one pod and count it in the state (as the extender and `hami schedule` do)."""
    req = request(vendors, pod)
    decision = schedule(state, req, PolicyDefaults(**defaults))
    commit(state, req, decision)
    return decision


def decision_annotations(vendors: VendorSet, state: ClusterState, pod: dict[str, Any], decision: Decision,
                         now_ns: int = 1_700_000_000_123_456_789) -> dict[str, str]:
    assert decision.node is not None
    node = state.nodes[state.node_pos[decision.node]]
    return vendors.decision_annotations(node, request(vendors, pod), decision.allocation, now_ns)


def uuids(decision: Decision) -> list[list[str]]:
    return [[d.uuid for d in c] for c in decision.allocation]


# ---- HAMi's Fit tables: devices with usage, one container ask --------------------------------


def with_usage(state: ClusterState, usage: dict[str, tuple[int, int, int]]) -> ClusterState:
    """Set devices' (used, usedmem, usedcores) directly, as HAMi's tests build DeviceUsage."""
    for uuid, (used, mem, cores) in usage.items():
        for row in state.uuid_rows[uuid]:
            node = int(state.dev_node[row])
            state.used[row], state.usedmem[row], state.usedcores[row] = used, mem, cores
            state.node_used[node] += used
            state.node_usedmem[node] += mem
            state.node_usedcores[node] += cores
    return state


def set_marks(state: ClusterState, uuid: str, tally: dict[str, int]) -> None:
    """What the pods on a device left there (HAMi's DeviceUsage.PodInfos), set directly."""
    for mark, count in tally.items():
        counts = state.marks.setdefault(mark, np.zeros(len(state.devices), dtype=np.int64))
        counts[state.uuid_rows[uuid][0]] = count


def marks_of(state: ClusterState, uuid: str) -> dict[str, int]:
    row = state.uuid_rows[uuid][0]
    return {mark: int(counts[row]) for mark, counts in state.marks.items() if counts[row]}


def fit(vendors: VendorSet, devices: list[DeviceInfo], ask: ContainerRequest,
        usage: dict[str, tuple[int, int, int]] | None = None, annotations: dict[str, str] | None = None,
        marks: dict[str, dict[str, int]] | None = None, **defaults: Any) -> Decision:
    """One container's ask on one node holding `devices` (node "n"): HAMi's Fit(devices, request).
    `marks` are what the pods on a device left there (HAMi's DeviceUsage.PodInfos)."""
    state = with_usage(ClusterState([NodeDevices("n", tuple(devices))], vendors), usage or {})
    for uuid, tally in (marks or {}).items():
        set_marks(state, uuid, tally)
    pod = PodRequest(key="t/p", containers=(ask,), names=("c",), annotations=dict(annotations or {}))
    return schedule(state, pod, PolicyDefaults(**defaults))


def restarted(vendors: VendorSet, nodes: list[dict[str, Any]],
              placed: list[tuple[dict[str, Any], Decision]]) -> ClusterState:
    """A fresh state that learns the placed pods only from the annotations their decisions wrote
    (a scheduler restart), read back the way the extender's cache reads a watched pod."""
    from hami.annotations import keys
    from hami.snapshot import pod_decision

    state = cluster(vendors, *nodes)
    for pod, decision in placed:
        written = decision_annotations(vendors, state, pod, decision)
        on_api = admitted(vendors, pod)
        on_api["metadata"]["annotations"].update({keys.VGPU_NODE: str(decision.node), **written})
        found = pod_decision(on_api, vendors)
        assert found is not None
        req = vendors.pod_request(on_api)
        state.add_pod(req.key, found[0], found[1], req.init_count, sidecars=req.sidecars,
                      annotations=dict(vendors.usage_annotations(on_api["metadata"]["annotations"])))
    return state


def usage_of(state: ClusterState) -> dict[str, tuple[int, int, int]]:
    return {uuid: (int(state.used[r]), int(state.usedmem[r]), int(state.usedcores[r]))
            for r, uuid in enumerate(state.uuids)}


def run_hami_schedule(tmp_path: Any, objects: list[dict[str, Any]], *args: str) -> subprocess.CompletedProcess[str]:
    """`hami schedule --snapshot` on these objects, through the real entry point."""
    path = tmp_path / "snapshot.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    return subprocess.run([sys.executable, "-m", "hami", "schedule", "--snapshot", str(path), "-o", "json", *args],
                          capture_output=True, text=True, timeout=120)


def hami_schedule(tmp_path: Any, objects: list[dict[str, Any]], *args: str) -> dict[str, Any]:
    """`hami schedule`'s JSON answer for these objects, keyed by pod."""
    result = run_hami_schedule(tmp_path, objects, *args)
    assert result.returncode == 0, result.stderr
    return {d["pod"]: d for d in json.loads(result.stdout)["decisions"]}
